#!/usr/bin/env bash
# The compose stack, end to end, on this machine: builds the server image offline, brings
# docker-compose.yml up under a project name of its own, waits for /health and the container's
# health check, checks the container's hardening as docs/docker-hardening.md lists it, registers
# a user, submits a workflow with a shell step, sees it succeed inside the sandbox (uid 1000,
# its own hostname, no network, the server's data dir out of sight), reverts it, and brings the
# stack down, checking that no container, volume or network of the project is left.
#
#   scripts/compose-test.sh                                  # builds target/release/secureclaw
#   SECURECLAW_BIN=target/debug/secureclaw scripts/compose-test.sh
#
# Without a Docker daemon or docker-compose it prints one SKIPPED line and exits 0.
# Needs curl and jq.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! docker info >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1; then
  echo "== compose test SKIPPED: no Docker daemon or no docker-compose on this machine"
  exit 0
fi
for tool in curl jq; do
  command -v "$tool" >/dev/null 2>&1 || { echo "compose-test.sh: needs $tool" >&2; exit 1; }
done

T0=$SECONDS
step() { echo "== [$((SECONDS - T0)) s] $*"; }
fail() { echo "!! compose test FAILED: $*" >&2; exit 1; }

TAG="compose-test"
PROJECT="secureclaw-compose-test-$$"
WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export SECURECLAW_TAG="$TAG" SECURECLAW_PORT="$PORT" SECURECLAW_PASSPHRASE_FILE="$WORK/passphrase"
COMPOSE=(docker-compose -p "$PROJECT" -f docker-compose.yml)

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    echo "== server log (last 40 lines):"
    "${COMPOSE[@]}" logs --no-color --tail 40 secureclaw 2>&1 || true
  fi
  "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

step "building the server image offline (scripts/build-images.sh --tag $TAG)"
build_args=(--tag "$TAG" --no-sandbox)
if [ -n "${SECURECLAW_BIN:-}" ]; then build_args+=(--bin "$SECURECLAW_BIN"); fi
scripts/build-images.sh "${build_args[@]}"

# The secret: readable by the server's uid only, as docker-compose.yml asks.
head -c 24 /dev/urandom | base64 >"$SECURECLAW_PASSPHRASE_FILE"
chown 10001:10001 "$SECURECLAW_PASSPHRASE_FILE" 2>/dev/null || chmod 0444 "$SECURECLAW_PASSPHRASE_FILE"
chmod go-rwx "$SECURECLAW_PASSPHRASE_FILE" 2>/dev/null || true
[ "$(id -u)" = 0 ] || chmod 0444 "$SECURECLAW_PASSPHRASE_FILE"

step "docker-compose up (project $PROJECT, port $PORT)"
"${COMPOSE[@]}" up -d
CID=$("${COMPOSE[@]}" ps -q secureclaw)
[ -n "$CID" ] || fail "no secureclaw container"
URL="http://127.0.0.1:$PORT"
API="$URL/api/v1"

step "waiting for /health and the container's health check"
for _ in $(seq 1 90); do
  health=$(docker inspect -f '{{.State.Health.Status}}' "$CID" 2>/dev/null || echo none)
  if [ "$health" = healthy ] && curl -fsS "$URL/health" >/dev/null 2>&1; then break; fi
  [ "$(docker inspect -f '{{.State.Running}}' "$CID")" = true ] || fail "the server container exited"
  sleep 1
done
[ "$health" = healthy ] || fail "container health is '$health' after 90 s"
curl -fsS "$URL/health" | jq -e '.status == "ok"' >/dev/null || fail "/health: $(curl -sS "$URL/health")"

step "hardening of the live container (docs/docker-hardening.md)"
expect() { # expect WHAT ACTUAL WANTED
  [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
  echo "   ok  $1 = $3"
}
expect "user" "$(docker inspect -f '{{.Config.User}}' "$CID")" "10001:10001"
expect "read-only root" "$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$CID")" "true"
expect "dropped capabilities" "$(docker inspect -f '{{json .HostConfig.CapDrop}}' "$CID")" '["ALL"]'
expect "added capabilities" "$(docker inspect -f '{{json .HostConfig.CapAdd}}' "$CID")" "null"
expect "privileged" "$(docker inspect -f '{{.HostConfig.Privileged}}' "$CID")" "false"
expect "no-new-privileges" "$(docker inspect -f '{{json .HostConfig.SecurityOpt}}' "$CID" | jq -r 'map(select(startswith("no-new-privileges"))) | length')" "1"
expect "seccomp default action" "$(docker inspect -f '{{json .HostConfig.SecurityOpt}}' "$CID" | jq -r '.[] | select(startswith("seccomp=")) | sub("^seccomp="; "") | fromjson | .defaultAction')" "SCMP_ACT_ERRNO"
expect "pids limit" "$(docker inspect -f '{{.HostConfig.PidsLimit}}' "$CID")" "512"
expect "passphrase not in the environment" "$(docker inspect -f '{{json .Config.Env}}' "$CID" | jq -r 'map(select(test("PASSPHRASE=")) ) | length')" "0"
expect "the process runs as" "$(docker exec "$CID" /bin/id -u)" "10001"
expect "memory limit" "$(docker inspect -f '{{.HostConfig.Memory}}' "$CID")" "2147483648"
expect "published on" "$(docker port "$CID" 8080 | head -1)" "127.0.0.1:$PORT"
expect "Docker socket mounts" "$(docker inspect -f '{{json .Mounts}}' "$CID" | grep -c docker.sock || true)" "0"
expect "health" "$(docker inspect -f '{{.State.Health.Status}}' "$CID")" "healthy"
# From inside: every native layer in force but the two the operator accepted.
check=$(docker exec "$CID" secureclaw sandbox check --json) || fail "sandbox check failed: $check"
expect "native layers missing and not accepted" \
  "$(jq -r '[.[] | select(.backend == "native") | .missing[] | select(endswith("(accepted by SECURECLAW_SANDBOX_ACCEPT_MISSING)") | not)] | length' <<<"$check")" "0"
for layer in namespaces seccomp landlock no-new-privs capabilities readonly-root network; do
  expect "native layer $layer" \
    "$(jq -r --arg l "$layer" '.[] | select(.backend == "native") | .layers[] | select(.name == $l) | .active' <<<"$check")" "true"
done

step "register, submit a workflow with a shell step, run it"
PASSWORD="compose-test-$(head -c 9 /dev/urandom | base64 | tr -d '/+=')"
TOKEN=$(curl -fsS "$API/auth/register" -H 'content-type: application/json' \
  -d "{\"username\": \"ops\", \"password\": \"$PASSWORD\"}" | jq -r .access_token)
[ -n "$TOKEN" ] && [ "$TOKEN" != null ] || fail "no token from register"
AUTH="authorization: Bearer $TOKEN"
WORKFLOW=$(cat <<'YAML'
version: 1
name: compose-isolation
steps:
  - id: probe
    shell: |
      echo isolated > proof.txt
      echo "uid=$(id -u)"
      echo "host=$(hostname)"
      if ls /data >/dev/null 2>&1; then echo "datadir=visible"; else echo "datadir=hidden"; fi
      if wget -q -T 2 -O /dev/null http://127.0.0.1:8080/health 2>/dev/null; then echo "net=open"; else echo "net=closed"; fi
      echo "proc=$(ls /proc | wc -l)"
YAML
)
TASK=$(jq -n --arg wf "$WORKFLOW" '{workflow: $wf}' |
  curl -fsS "$API/tasks" -H "$AUTH" -H 'content-type: application/json' -d @- | jq -r .id)
[ -n "$TASK" ] && [ "$TASK" != null ] || fail "task not created"
curl -fsS -X POST "$API/tasks/$TASK/run" -H "$AUTH" >/dev/null
wait_run() {
  state=""
  for _ in $(seq 1 60); do
    task=$(curl -fsS "$API/tasks/$TASK" -H "$AUTH")
    state=$(jq -r '.run.state // empty' <<<"$task")
    case "$state" in succeeded|failed|cancelled|interrupted|awaiting_approval) return ;; esac
    sleep 1
  done
}
wait_run
# The step tries to reach the network (to show it cannot): the risk gate parks it first.
expect "gate on the network attempt" "$state" "awaiting_approval"
HASH=$(curl -fsS "$API/tasks/$TASK/approvals" -H "$AUTH" | jq -r '.gates[] | select(.step == "probe") | .request_hash')
curl -fsS "$API/tasks/$TASK/steps/probe/approve" -H "$AUTH" -H 'content-type: application/json' \
  -d "{\"request_hash\": \"$HASH\", \"reason\": \"compose test\"}" | jq -e '.resumed == true' >/dev/null ||
  fail "approval did not resume the run"
wait_run
[ "$state" = succeeded ] || fail "run ended '$state': $(jq -c '.run.steps' <<<"$task")"
out=$(jq -r '.run.steps[0].stdout // .run.steps[0].output // ""' <<<"$task")
echo "$out" | sed 's/^/   step: /'
expect "backend" "$(jq -r .run.backend <<<"$task")" "native"
expect "uid inside the sandbox" "$(grep -o 'uid=[0-9]*' <<<"$out")" "uid=1000"
expect "hostname inside the sandbox" "$(grep -o 'host=.*' <<<"$out")" "host=secureclaw"
expect "the server's data dir" "$(grep -o 'datadir=.*' <<<"$out")" "datadir=hidden"
expect "network" "$(grep -o 'net=.*' <<<"$out")" "net=closed"
expect "entries in /proc" "$(grep -o 'proc=.*' <<<"$out" | tr -d ' ')" "proc=0"
expect "file written in the task's workspace" \
  "$(docker exec "$CID" /bin/cat "/data/workspaces/$TASK/proof.txt")" "isolated"

step "revert the run"
curl -fsS -X POST "$API/tasks/$TASK/revert" -H "$AUTH" | jq -e '.outcome == "applied"' >/dev/null ||
  fail "revert not applied"
if docker exec "$CID" /bin/ls "/data/workspaces/$TASK/proof.txt" >/dev/null 2>&1; then
  fail "proof.txt is still there after the revert"
fi
echo "   ok  proof.txt is gone"

step "docker-compose down -v"
"${COMPOSE[@]}" down -v --remove-orphans
left_c=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
left_v=$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
left_n=$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")
[ -z "$left_c$left_v$left_n" ] || fail "left behind: containers [$left_c] volumes [$left_v] networks [$left_n]"
docker image rm "secureclaw:$TAG" >/dev/null
step "compose test passed"
