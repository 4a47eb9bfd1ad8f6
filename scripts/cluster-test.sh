#!/usr/bin/env bash
# A secureclaw cluster on this machine, under faults. PostgreSQL (secureclaw-postgres), two API
# replicas (`serve --store postgres://... --workers`) and three workers (`worker --lease 5s`),
# each in its own container with its own /data volume and the server's hardening from
# docker-compose.yml, on a private Docker network. Runs of a two-step workflow (a shell step
# writes out.txt and sleeps 2 s, a second reads it) are submitted through both replicas while
# worker w1 is killed (SIGKILL), worker w2 is cut off from the network for 30 s and replica s2
# restarts. w1 then comes back on the same volume. Checked:
#
#   - every run submitted reaches a final state (no run lost, none stuck), most succeed, and
#     each that did not says why (interrupted: "node ... lost its lease"; cancelled, failed);
#   - each interrupted run of w1 has exactly one completed revert once w1 is back (none when it
#     was interrupted before its start was stored: no step ran), and every run that did not
#     succeed left nothing in the workspace of the worker that held it;
#   - the queue: one job per run, each claimed once, none left queued or running;
#   - the shared ledger verifies (`ledger verify --store`) and its export shows, for every
#     (run, step), no step started again before it ended, one `run_started` per run, and no
#     run finished by two workers (the ledger's actor is `worker` for every worker, so which
#     worker held a run comes from the workers' logs and the runs' messages);
#   - a revert of a run of w3 asked of replica s2 is performed by w3, on its disk;
#   - a schedule (every 3 s) in a git source both replicas read fires each time once, while s1
#     restarts: one `schedule_fired` and one task per time, every scheduled run succeeded;
#   - throughput: runs per second from the first submit to the last run's end, and the p50 and
#     p99 from the POST that starts a run to its first step's start.
#
# With --scaling it then submits bursts of one-step runs (60 by default, --scaling-runs) with 1,
# 2 and 3 workers and no faults (the others paused), printing runs/s and the p50/p99 for each.
# Everything the test made carries its project label and is removed at the end, which is
# checked. Prints how long each stage took.
#
#   scripts/cluster-test.sh                                  # builds target/release/secureclaw
#   SECURECLAW_BIN=target/debug/secureclaw scripts/cluster-test.sh [--runs 200] [--scaling]
#
# The images are built for the run (tag cluster-test-PID) and removed after it;
# SECURECLAW_CLUSTER_REUSE_IMAGES=1 keeps secureclaw:cluster-test and
# secureclaw-postgres:cluster-test between runs and does not build them again when they exist.
# SECURECLAW_CLUSTER_WAIT bounds the wait for every run to end (seconds, default 600).
# SECURECLAW_CLUSTER_KEEP=1 leaves the cluster up when the test fails, to look into it.
# Without a Docker daemon it prints one SKIPPED line and exits 0. Needs curl, jq, and the
# packages scripts/build-images.sh and scripts/build-postgres-image.sh need.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=200
SCALING=0
SCALING_RUNS=60
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --scaling) SCALING=1; shift ;;
    --scaling-runs) SCALING_RUNS="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "cluster-test.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$RUNS$SCALING_RUNS" in *[!0-9]*) echo "cluster-test.sh: --runs and --scaling-runs take numbers" >&2; exit 2 ;; esac
[ "$RUNS" -ge 20 ] || { echo "cluster-test.sh: --runs must be at least 20 (the faults need runs in flight)" >&2; exit 2; }

if ! docker info >/dev/null 2>&1; then
  echo "== cluster test SKIPPED: no Docker daemon on this machine"
  exit 0
fi
for tool in curl jq; do
  command -v "$tool" >/dev/null 2>&1 || { echo "cluster-test.sh: needs $tool" >&2; exit 1; }
done

REUSE="${SECURECLAW_CLUSTER_REUSE_IMAGES:-0}"
# Images of this run's own, unless they are kept between runs: two runs at once must not
# replace or remove each other's.
TAG="cluster-test"
[ "$REUSE" = 1 ] || TAG="cluster-test-$$"
IMAGE="secureclaw:$TAG"
PG_IMAGE="secureclaw-postgres:$TAG"
WAIT_FINAL="${SECURECLAW_CLUSTER_WAIT:-600}"
PROJECT="secureclaw-cluster-test-$$"
LABEL="secureclaw.test.project=$PROJECT"
NET="$PROJECT-net"
DB="$PROJECT-db"
NODES="s1 s2 w1 w2 w3"
LEASE=5s
PARTITION_SECONDS=30
WORK=$(mktemp -d)
chmod 0755 "$WORK"
# The store URL every node uses. The password is not in it (a command line is visible to every
# local user): nodes read it from a pgpass file (PGPASSFILE), which libpq and sqlx honour.
STORE="postgres://secureclaw@db:5432/secureclaw"
PASSPHRASE=/run/secrets/secureclaw_passphrase

# Stage timings: each stage's wall time is printed when the next one starts, and all at the end.
now_ms() { date +%s%3N; }
secs() { printf '%d.%d s' $(($1 / 1000)) $(($1 % 1000 / 100)); }
T0=$(now_ms)
STAGE=""
STAGE_START=0
TIMINGS=()
end_stage() {
  [ -n "$STAGE" ] || return 0
  local ms=$(($(now_ms) - STAGE_START))
  echo "   ($(secs "$ms"))"
  TIMINGS+=("$(printf '%9s  %s' "$(secs "$ms")" "$STAGE")")
  STAGE=""
}
stage() {
  end_stage
  STAGE="$*"
  STAGE_START=$(now_ms)
  echo "== [$(secs $((STAGE_START - T0)))] $*"
}
fail() { echo "!! cluster test FAILED: $*" >&2; exit 1; }
# A property of the product that does not hold: reported at once, and the test goes on with its
# other checks before it fails.
PROBLEMS=()
problem() { echo "   !!  $*"; PROBLEMS+=("$*"); }
verdict() { # verdict BAD OK_MESSAGE PROBLEM: ok when BAD is empty, else a problem naming BAD
  if [ -z "$1" ]; then ok "$2"; else problem "$3: $1"; fi
}
ok() { echo "   ok  $*"; }
note() { echo "   ..  $*"; }
cname() { echo "$PROJECT-$1"; }
# Here-strings rather than `... | grep -q`: grep -q quits at the first match, and under pipefail
# the writer's SIGPIPE would turn a match into a failure.
log_of() { docker logs "$(cname "$1")" 2>&1 || true; }

left_behind() {
  local c v n
  c=$(docker ps -aq --filter "label=$LABEL")
  v=$(docker volume ls -q --filter "label=$LABEL")
  n=$(docker network ls -q --filter "label=$LABEL")
  [ -z "$c$v$n" ] && return 1
  echo "containers [${c//$'\n'/ }] volumes [${v//$'\n'/ }] networks [${n//$'\n'/ }]"
}
down() {
  docker ps -q --filter "label=$LABEL" --filter status=paused | xargs -r docker unpause >/dev/null 2>&1 || true
  # -v: also any anonymous volume a container made (the images declare VOLUMEs).
  docker ps -aq --filter "label=$LABEL" | xargs -r docker rm -fv >/dev/null 2>&1 || true
  docker network rm "$NET" >/dev/null 2>&1 || true
  docker volume ls -q --filter "label=$LABEL" | xargs -r docker volume rm >/dev/null 2>&1 || true
}
cleanup() {
  local rc=$?
  set +e
  # The submitters stop by themselves once $WORK is gone.
  [ -n "${SUBMITTER:-}" ] && kill "$SUBMITTER" 2>/dev/null
  if [ "$rc" != 0 ]; then
    for node in db $NODES; do
      docker inspect "$(cname "$node")" >/dev/null 2>&1 || continue
      echo "== $node log (last 30 lines):"
      docker logs --tail 30 "$(cname "$node")" 2>&1 | sed 's/^/   /'
    done
  fi
  if [ "$rc" != 0 ] && [ "${SECURECLAW_CLUSTER_KEEP:-0}" = 1 ]; then
    echo "== SECURECLAW_CLUSTER_KEEP=1: the cluster is left up for inspection (secrets in $WORK); remove it with"
    echo "   docker ps -aq --filter label=$LABEL | xargs -r docker rm -fv; docker network rm $NET; docker volume ls -q --filter label=$LABEL | xargs -r docker volume rm"
    exit "$rc"
  fi
  down
  if what=$(left_behind); then
    echo "!! cluster test FAILED: left behind after cleanup: $what" >&2
    rc=1
  fi
  if [ "$REUSE" != 1 ]; then docker image rm "$IMAGE" "$PG_IMAGE" >/dev/null 2>&1; fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
stage "images, built offline (tag $TAG)"
if [ "$REUSE" = 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  ok "$IMAGE exists, kept (SECURECLAW_CLUSTER_REUSE_IMAGES=1)"
else
  build_args=(--tag "$TAG" --no-sandbox)
  if [ -n "${SECURECLAW_BIN:-}" ]; then build_args+=(--bin "$SECURECLAW_BIN"); fi
  scripts/build-images.sh "${build_args[@]}"
fi
if [ "$REUSE" = 1 ] && docker image inspect "$PG_IMAGE" >/dev/null 2>&1; then
  ok "$PG_IMAGE exists, kept (SECURECLAW_CLUSTER_REUSE_IMAGES=1)"
else
  scripts/build-postgres-image.sh --tag "$TAG"
fi
docker image inspect "$IMAGE" "$PG_IMAGE" >/dev/null || fail "an image is missing after the build"

# ---------------------------------------------------------------------------------------------
stage "network, volumes and secrets (project $PROJECT)"
# A subnet of our own, so that a container disconnected from the network gets its address back
# when it is reconnected, as after a real partition (its TCP connections can then resume).
for _ in $(seq 1 10); do
  subnet="10.$((RANDOM % 200 + 20)).$((RANDOM % 256)).0/24"
  docker network create --label "$LABEL" --subnet "$subnet" "$NET" >/dev/null 2>&1 && break
  subnet=""
done
[ -n "$subnet" ] || fail "could not create a network with a free /24 subnet"
ok "network $NET ($subnet)"
docker volume create --label "$LABEL" "$PROJECT-db" >/dev/null
for node in $NODES; do docker volume create --label "$LABEL" "$(cname "$node")" >/dev/null; done
ok "volumes: db $NODES (one /data per node)"

# Secrets: the database password (uid 70), the vault passphrase and the pgpass file (uid 10001).
# pgpass must be mode 0600 for its reader, which needs root to hand it to uid 10001; without
# root, the password goes into the URL instead.
PGPW=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
printf '%s\n' "$PGPW" >"$WORK/postgres_password"
head -c 24 /dev/urandom | base64 >"$WORK/passphrase"
printf '*:*:*:secureclaw:%s\n' "$PGPW" >"$WORK/pgpass"
if [ "$(id -u)" = 0 ]; then
  chown 70:70 "$WORK/postgres_password" && chmod 0400 "$WORK/postgres_password"
  chown 10001:10001 "$WORK/passphrase" "$WORK/pgpass"
  chmod 0400 "$WORK/passphrase"
  chmod 0600 "$WORK/pgpass"
else
  chmod 0444 "$WORK/postgres_password" "$WORK/passphrase"
  STORE="postgres://secureclaw:$PGPW@db:5432/secureclaw"
fi
ok "secrets in $WORK (password ${STORE/$PGPW/****})"

# A workflow source both replicas read: a git repository with a schedule, mounted read-only.
# It must belong to uid 10001 (git refuses a repository another user owns), which needs root.
FLOWS="$WORK/flows"
mkdir -p "$FLOWS/flows"
cat >"$FLOWS/flows/tick.yaml" <<'YAML'
version: 1
name: cluster-tick
on:
  schedule: { cron: "*/3 * * * * *", overlap: true }
steps:
  - id: mark
    write: { path: tick.txt, content: "tick\n" }
YAML
git -C "$FLOWS" init -q -b main
git -C "$FLOWS" add -A
git -C "$FLOWS" -c user.name=cluster-test -c user.email=cluster-test@localhost commit -q -m tick
SCHEDULES=0
if [ "$(id -u)" = 0 ]; then
  chown -R 10001:10001 "$FLOWS"
  SCHEDULES=1
  ok "a git source for the replicas in $FLOWS (a schedule every 3 s)"
fi

# ---------------------------------------------------------------------------------------------
stage "PostgreSQL"
docker run -d --name "$DB" --label "$LABEL" --network "$NET" --network-alias db \
  -v "$PROJECT-db:/var/lib/postgresql/data" \
  -v "$WORK/postgres_password:/run/secrets/postgres_password:ro" \
  "$PG_IMAGE" >/dev/null
health=none
for _ in $(seq 1 120); do
  health=$(docker inspect -f '{{.State.Health.Status}}' "$DB" 2>/dev/null || echo none)
  [ "$health" = healthy ] && break
  [ "$(docker inspect -f '{{.State.Running}}' "$DB")" = true ] || fail "the PostgreSQL container exited"
  sleep 0.5
done
[ "$health" = healthy ] || fail "PostgreSQL health is '$health' after 60 s"
ok "healthy"
sql() { # sql QUERY: one query as the secureclaw user, unaligned rows
  docker exec "$DB" sh -c \
    'PGPASSWORD=$(cat /run/secrets/postgres_password) exec psql -h 127.0.0.1 -U secureclaw -d secureclaw -X -q -tA -F " " -v ON_ERROR_STOP=1 -c "$0"' "$1"
}

# A node: the server image with docker-compose.yml's hardening (no capabilities, no new
# privileges, the server's seccomp profile, read-only root, tmpfs /tmp) and its own /data.
# DNS gives up after one second: cut off from the network, a name lookup must fail fast.
# Argon2id is cheapened for the test's vault (every node and CLI call unlocks it).
start_node() { # start_node NAME ARGS...
  local name=$1
  shift
  docker run -d --name "$(cname "$name")" --hostname "$name" --label "$LABEL" \
    --label "secureclaw.test.node=$name" --network "$NET" \
    --dns-option timeout:1 --dns-option attempts:1 \
    --user 10001:10001 --read-only --tmpfs /tmp:size=256m,mode=1777,noexec,nosuid,nodev \
    --cap-drop ALL --security-opt no-new-privileges:true \
    --security-opt "seccomp=$PWD/docker/seccomp-server.json" \
    --memory 1g --memory-swap 1g --pids-limit 512 \
    -e SECURECLAW_SANDBOX_ACCEPT_MISSING=cgroups,proc \
    -e PGPASSFILE=/run/secrets/pgpass -e ARGON2_MEMORY_KB=8192 -e ARGON2_ITERATIONS=1 \
    -v "$WORK/passphrase:$PASSPHRASE:ro" -v "$WORK/pgpass:/run/secrets/pgpass:ro" \
    -v "$(cname "$name"):/data" "$@" >/dev/null
}
start_replica() { # start_replica NAME
  start_node "$1" -p 127.0.0.1::8080 -v "$FLOWS:/flows:ro" "$IMAGE" serve --store "$STORE" --workers \
    --listen 0.0.0.0:8080 --data-dir /data --passphrase-file "$PASSPHRASE"
}
start_worker() { # start_worker NAME
  start_node "$1" --no-healthcheck "$IMAGE" worker --store "$STORE" --data-dir /data \
    --lease "$LEASE" --poll 1s --passphrase-file "$PASSPHRASE"
}
# The replica's base URL, written where the submitters read it (its port changes at a restart).
wait_replica() { # wait_replica NAME
  local name=$1 c published url
  c=$(cname "$name")
  for _ in $(seq 1 120); do
    [ "$(docker inspect -f '{{.State.Running}}' "$c")" = true ] || fail "replica $name exited"
    published=$(docker port "$c" 8080/tcp 2>/dev/null | head -1 || true)
    if [ -n "$published" ]; then
      url="http://$published"
      if curl -fsS --max-time 2 "$url/health" 2>/dev/null | jq -e '.status == "ok"' >/dev/null 2>&1; then
        case "$published" in 127.0.0.1:*) ;; *) fail "$name publishes 8080 beyond loopback: $published" ;; esac
        printf '%s\n' "$url" >"$WORK/url-$name.tmp" && mv "$WORK/url-$name.tmp" "$WORK/url-$name"
        return 0
      fi
    fi
    sleep 0.5
  done
  fail "replica $name: no /health after 60 s"
}
# The worker's node id, from its start line; waits for the COUNT-th start (after restarts).
wait_worker() { # wait_worker NAME [COUNT]
  local name=$1 count=${2:-1} logs
  for _ in $(seq 1 120); do
    [ "$(docker inspect -f '{{.State.Running}}' "$(cname "$name")")" = true ] || fail "worker $name exited: $(log_of "$name" | tail -3)"
    logs=$(log_of "$name")
    if [ "$(grep -c '^worker node-[0-9a-f]* on ' <<<"$logs" || true)" -ge "$count" ]; then
      grep '^worker node-[0-9a-f]* on ' <<<"$logs" | tail -1 | awk '{print $2}'
      return 0
    fi
    sleep 0.5
  done
  fail "worker $name did not start within 60 s: $(log_of "$name" | tail -3)"
}

# A worker is ready once it listens for work (after rolling back its own interrupted runs):
# its LISTEN connection shows in pg_stat_activity, from its address on the network.
wait_listening() { # wait_listening NAME
  local ip
  for _ in $(seq 1 240); do
    ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$(cname "$1")" 2>/dev/null || true)
    if [ -n "$ip" ] && [ "$(sql "select count(*) from pg_stat_activity where client_addr = '$ip' and query like 'LISTEN %'")" -ge 1 ]; then
      return 0
    fi
    sleep 0.5
  done
  fail "worker $1 is not listening for work 120 s after its start: $(log_of "$1" | tail -3)"
}

# ---------------------------------------------------------------------------------------------
stage "replicas s1 (publishes the vault header), then s2; workers w1 w2 w3 (lease $LEASE)"
start_replica s1
wait_replica s1
ok "s1 healthy on $(cat "$WORK/url-s1")"
header=$(sql "select count(*) from sc_vault")
[ "$header" = 1 ] || fail "sc_vault holds $header headers after s1 started"
ok "the vault header is in PostgreSQL"
start_replica s2
wait_replica s2
ok "s2 healthy on $(cat "$WORK/url-s2")"
declare -A NODE_ID WORKER_OF
for w in w1 w2 w3; do start_worker "$w"; done
for w in w1 w2 w3; do
  NODE_ID[$w]=$(wait_worker "$w")
  WORKER_OF[${NODE_ID[$w]}]=$w
  wait_listening "$w"
  ok "$w is ${NODE_ID[$w]}, listening for work"
done
[ "${#WORKER_OF[@]}" = 3 ] || fail "the workers' node ids are not distinct"
for node in $NODES; do
  c=$(cname "$node")
  [ "$(docker inspect -f '{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.CapDrop}}' "$c")" = '10001:10001 true ["ALL"]' ] ||
    fail "$node is not hardened like docker-compose.yml's server"
done
ok "every node: uid 10001, read-only root, no capabilities, seccomp-server.json"

# ---------------------------------------------------------------------------------------------
stage "accounts shared: register on s1, sign in on s2"
USERNAME=ops
PASSWORD="cluster-test-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')"
creds=$(jq -n --arg u "$USERNAME" --arg p "$PASSWORD" '{username: $u, password: $p}')
curl -fsS "$(cat "$WORK/url-s1")/api/v1/auth/register" -H 'content-type: application/json' -d "$creds" |
  jq -r .access_token >"$WORK/token-s1"
if ! grep -q . "$WORK/token-s1" || grep -qx null "$WORK/token-s1"; then fail "no token from register on s1"; fi
ok "registered $USERNAME on s1"

# Submitters run in parallel (xargs), so the helpers they need are exported.
export WORK USERNAME PASSWORD
login() { # login REPLICA: a new token for REPLICA (sessions are per replica and end at its restart)
  local replica=$1 out code
  out=$(mktemp -p "$WORK")
  code=$(curl -sS -o "$out" -w '%{http_code}' --max-time 20 "$(cat "$WORK/url-$replica")/api/v1/auth/login" \
    -H 'content-type: application/json' \
    -d "$(jq -n --arg u "$USERNAME" --arg p "$PASSWORD" '{username: $u, password: $p}')" 2>/dev/null) || true
  if [ "$code" = 200 ]; then jq -r .access_token "$out" >"$out.t" && mv "$out.t" "$WORK/token-$replica"; fi
  rm -f "$out" "$out.t"
  [ "$code" = 200 ]
}
call() { # call OUT REPLICA METHOD PATH [JSON]: prints the HTTP status (000: no answer)
  local out=$1 replica=$2 method=$3 path=$4 body=${5:-} url token
  url=$(cat "$WORK/url-$replica")
  token=$(cat "$WORK/token-$replica" 2>/dev/null || true)
  local args=(-sS -o "$out" -w '%{http_code}' --max-time 20 -X "$method" -H "authorization: Bearer $token")
  [ -z "$body" ] || args+=(-H 'content-type: application/json' --data-binary "$body")
  curl "${args[@]}" "$url/api/v1$path" 2>/dev/null || true
}
# submit_one DIR I WORKFLOW_FILE START_MS PACE_MS: creates a task and starts its run on s1 (odd I)
# or s2 (even I), at START_MS + I * PACE_MS, retrying through a replica's restart; writes
# "I REPLICA TASK RUN SUBMIT_MS ACCEPTED_MS TRIES RUN_POSTED_MS" to DIR/I (RUN_POSTED_MS: when
# the POST /run that got the 202 was sent).
submit_one() {
  local dir=$1 i=$2 wf=$3 start=$4 pace=$5 replica=s2 task="" run="" code t0 tries=0 body out posted=0
  [ $((i % 2)) = 1 ] && replica=s1
  local due=$((start + i * pace)) now
  now=$(date +%s%3N)
  if [ "$due" -gt "$now" ]; then sleep "$(printf '%d.%03d' $(((due - now) / 1000)) $(((due - now) % 1000)))"; fi
  t0=$(date +%s%3N)
  body=$(jq -n --rawfile wf "$wf" '{workflow: $wf}')
  out="$dir/$i.body"
  while [ "$tries" -lt 240 ] && [ -d "$dir" ]; do
    tries=$((tries + 1))
    if [ -z "$task" ]; then
      code=$(call "$out" "$replica" POST /tasks "$body")
      case "$code" in
        2??) task=$(jq -r '.id // empty' "$out") ;;
        401) login "$replica" || sleep 0.5; continue ;;
        *) sleep 0.5; continue ;;
      esac
      [ -n "$task" ] || { sleep 0.5; continue; }
    fi
    posted=$(date +%s%3N)
    code=$(call "$out" "$replica" POST "/tasks/$task/run")
    case "$code" in
      202) run=$(jq -r '.run_id // empty' "$out"); [ -n "$run" ] && break ;;
      401) login "$replica" || sleep 0.5 ;;
      409)
        # Started by an earlier try whose answer was lost: the task names its run.
        code=$(call "$out" "$replica" GET "/tasks/$task")
        if [ "$code" = 200 ]; then
          run=$(jq -r '.run.run_id // empty' "$out")
          [ -n "$run" ] && break
        fi
        sleep 0.5 ;;
      *) sleep 0.5 ;;
    esac
  done
  rm -f "$out"
  if [ -z "$run" ]; then
    echo "$i $replica ${task:-none} none $t0 0 $tries" >"$dir/$i.failed"
    return 1
  fi
  echo "$i $replica $task $run $t0 $(date +%s%3N) $tries $posted" >"$dir/$i"
}
export -f login call submit_one

login s2 || fail "signing in on s2 with the account made on s1 failed"
ok "signed in on s2 with the account made on s1"

# jq: RFC 3339 with nanoseconds to epoch milliseconds.
JQ_TS='def ms: capture("^(?<s>[^.Z]+)(\\.(?<f>[0-9]+))?Z$") | ((.s + "Z" | fromdateiso8601) * 1000 + (("0." + (.f // "0")) | tonumber * 1000)) | floor;'
# Counts of a batch's tasks by state, polled through the replica given (a page at a time).
# Writes ID STATE lines to OUT; prints "STATE=N ..." for the batch's ids.
poll_states() { # poll_states REPLICA IDS_FILE OUT
  local replica=$1 ids=$2 out=$3 offset=0 total=1 page code
  page=$(mktemp -p "$WORK")
  : >"$out.tmp"
  while [ "$offset" -lt "$total" ]; do
    code=$(call "$page" "$replica" GET "/tasks?limit=200&offset=$offset")
    if [ "$code" = 401 ]; then login "$replica" || true; code=$(call "$page" "$replica" GET "/tasks?limit=200&offset=$offset"); fi
    [ "$code" = 200 ] || { rm -f "$page" "$out.tmp"; return 1; }
    jq -r '.tasks[] | "\(.id) \(.state)"' "$page" >>"$out.tmp"
    total=$(jq -r .total "$page")
    offset=$((offset + 200))
  done
  rm -f "$page"
  awk 'NR == FNR { want[$1] = 1; next } ($1 in want) { print }' "$ids" "$out.tmp" >"$out"
  rm -f "$out.tmp"
}
count_states() { # count_states FILE: "state=N ..." sorted
  awk '{ n[$2]++ } END { for (s in n) printf "%s=%d\n", s, n[s] }' "$1" | sort | tr '\n' ' '
}
# Waits until every task of IDS_FILE is final, polling s1 and s2 in turn. Sets FINAL_MS.
wait_final() { # wait_final IDS_FILE LIMIT_SECONDS
  local ids=$1 limit=$2 want deadline replica=s1 last_print=0 states="$WORK/states" n_final idle_since=""
  want=$(wc -l <"$ids")
  deadline=$(($(now_ms) + limit * 1000))
  while :; do
    if poll_states "$replica" "$ids" "$states"; then
      n_final=$(awk '$2 ~ /^(succeeded|failed|cancelled|interrupted)$/' "$states" | wc -l)
      if [ "$n_final" = "$want" ] && [ "$(wc -l <"$states")" = "$want" ]; then
        FINAL_MS=$(now_ms)
        note "all $want final (via $replica): $(count_states "$states")"
        return 0
      fi
      # Every job done or interrupted, yet runs not final: nothing will move them any more.
      if [ "$(sql "select count(*) from sc_jobs where state in ('queued', 'running')")" = 0 ]; then
        idle_since=${idle_since:-$(now_ms)}
        if [ $(($(now_ms) - idle_since)) -ge 30000 ]; then
          echo "   !!  not final although no job has been queued or running for 30 s:"
          awk '$2 !~ /^(succeeded|failed|cancelled|interrupted)$/ { print $1 }' "$states" | head -20 | while read -r id; do
            call "$WORK/stuck.json" s1 GET "/tasks/$id" >/dev/null
            echo "       task $id: $(jq -c '{state, run_id, run}' "$WORK/stuck.json" 2>/dev/null)"
          done
          echo "       interrupted jobs (worker, claimed, marked interrupted):"
          sql "select owner, to_char(claimed_at, 'HH24:MI:SS.MS'), to_char(finished_at, 'HH24:MI:SS.MS') from sc_jobs where state = 'interrupted' order by claimed_at" |
            while read -r owner claimed marked; do echo "         ${WORKER_OF[$owner]:-$owner} claimed $claimed, interrupted $marked"; done
          [ -z "${KILL_MS:-}" ] || echo "       w1 killed at $(date -u -d "@$((KILL_MS / 1000))" +%T).$(printf '%03d' $((KILL_MS % 1000))), w2 cut off at $(date -u -d "@$((CUT_MS / 1000))" +%T).$(printf '%03d' $((CUT_MS % 1000)))"
          fail "$((want - n_final)) runs will never be final ($(count_states "$states")); jobs: $(sql "select state || '=' || count(*) from sc_jobs group by state" | tr '\n' ' ')"
        fi
      else
        idle_since=""
      fi
      if [ $(($(now_ms) - last_print)) -ge 10000 ]; then
        last_print=$(now_ms)
        note "[$(secs $((last_print - T0)))] $n_final/$want final: $(count_states "$states")| jobs: $(sql "select state || '=' || count(*) from sc_jobs group by state order by state" | tr '\n' ' ')"
      fi
    fi
    [ "$(now_ms)" -lt "$deadline" ] || {
      poll_states s1 "$ids" "$states" || true
      fail "not every run is final after $limit s: $(count_states "$states")(seen $(wc -l <"$states") of $want); jobs: $(sql "select state || '=' || count(*) from sc_jobs group by state" | tr '\n' ' ')"
    }
    if [ "$replica" = s1 ]; then replica=s2; else replica=s1; fi
    sleep 1
  done
}
# Fetches every task of IDS_FILE into DIR/ID.json (in parallel), through s1.
fetch_tasks() { # fetch_tasks IDS_FILE DIR
  mkdir -p "$2"
  export -f fetch_one
  # shellcheck disable=SC2016 # expanded by the inner bash
  xargs -P 8 -n 1 bash -c 'fetch_one "$0" s1 "$1"' "$2" <"$1" 2>/dev/null || true
  # shellcheck disable=SC2016
  xargs -n 1 bash -c '[ -s "$0/$1.json" ] || fetch_one "$0" s2 "$1"' "$2" <"$1" 2>/dev/null || true
}
fetch_one() { # fetch_one DIR REPLICA ID
  local dir=$1 replica=$2 id=$3 code
  for _ in 1 2 3; do
    code=$(call "$dir/$id.part" "$replica" GET "/tasks/$id")
    if [ "$code" = 200 ]; then mv "$dir/$id.part" "$dir/$id.json"; return 0; fi
    [ "$code" = 401 ] && login "$replica" >/dev/null 2>&1
    sleep 0.3
  done
  rm -f "$dir/$id.part"
  return 1
}
export -f fetch_one

# ---------------------------------------------------------------------------------------------
cat >"$WORK/workflow.yaml" <<'YAML'
version: 1
name: cluster-two-steps
steps:
  - id: write
    shell: echo $RANDOM > out.txt && sleep 2
  - id: read
    needs: [write]
    shell: cat out.txt
YAML
PACE_MS=100
stage "submitting $RUNS runs (every ${PACE_MS} ms, alternating s1 and s2, 8 at once) while: kill w1, cut w2 off for ${PARTITION_SECONDS} s, restart s2"
SUB="$WORK/sub"
mkdir -p "$SUB"
FIRST_SUBMIT=$(($(now_ms) + 200))
# shellcheck disable=SC2016 # expanded by the inner bash; xargs appends the run's number as $5
seq 1 "$RUNS" | xargs -P 8 -n 1 bash -c 'submit_one "$1" "$5" "$2" "$3" "$4"' \
  _ "$SUB" "$WORK/workflow.yaml" "$FIRST_SUBMIT" "$PACE_MS" >"$WORK/submit.log" 2>&1 &
SUBMITTER=$!

running_of() { sql "select count(*) from sc_jobs where state = 'running' and owner = '$1'"; }
# The fault strikes when the worker holds a run in flight whose start is stored: its workspace
# has out.txt (the write step began, which it does only after the run's first save) and the run
# is not final yet (the write step sleeps 2 s). The rollback of a step in flight is then
# exercised; the worker's other slot may hold a run just claimed, lost before its start is stored.
wait_running() { # wait_running WORKER
  local mine
  for _ in $(seq 1 60); do
    # shellcheck disable=SC2016 # expanded by the container's shell
    mine=$(docker exec "$(cname "$1")" /bin/sh -c 'for d in /data/workspaces/*; do [ -e "$d/out.txt" ] && echo "${d##*/}"; done' 2>/dev/null || true)
    if [ -n "$mine" ] && poll_states s1 <(printf '%s\n' "$mine") "$WORK/inflight-$1" 2>/dev/null &&
      [ -n "$(awk '$2 == "running"' "$WORK/inflight-$1")" ]; then
      return 0
    fi
    sleep 0.3
  done
  fail "$1 held no run in its first step within about 30 s"
}
wait_running w1
held=$(running_of "${NODE_ID[w1]}")
docker kill "$(cname w1)" >/dev/null
KILL_MS=$(now_ms)
ok "[$(secs $((KILL_MS - T0)))] docker kill w1 (SIGKILL) with $held run(s) in flight"

wait_running w2
held=$(running_of "${NODE_ID[w2]}")
W2_IP=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$(cname w2)")
docker network disconnect "$NET" "$(cname w2)"
CUT_MS=$(now_ms)
ok "[$(secs $((CUT_MS - T0)))] docker network disconnect w2 ($W2_IP) with $held run(s) in flight"

t=$(now_ms)
docker restart "$(cname s2)" >/dev/null
wait_replica s2
ok "[$(secs $(($(now_ms) - T0)))] docker restart s2: healthy again after $(secs $(($(now_ms) - t))), now on $(cat "$WORK/url-s2")"

# w1 comes back once the other nodes have marked its runs interrupted (its lease lapsed): it
# then finds them at its start and rolls them back.
for _ in $(seq 1 150); do
  [ "$(running_of "${NODE_ID[w1]}")" = 0 ] && break
  sleep 0.2
done
[ "$(running_of "${NODE_ID[w1]}")" = 0 ] || fail "w1's runs were not marked interrupted within 30 s of its death"
ok "[$(secs $(($(now_ms) - T0)))] w1's leases lapsed: $(sql "select count(*) from sc_jobs where state = 'interrupted' and owner = '${NODE_ID[w1]}'") job(s) interrupted, $(secs $(($(now_ms) - KILL_MS))) after the kill"
docker start "$(cname w1)" >/dev/null
t=$(now_ms)
again=$(wait_worker w1 2)
[ "$again" = "${NODE_ID[w1]}" ] || fail "w1 came back as $again, not ${NODE_ID[w1]}: its state directory was not kept"
wait_listening w1
ok "[$(secs $(($(now_ms) - T0)))] docker start w1: back as ${NODE_ID[w1]} (same volume), listening for work after $(secs $(($(now_ms) - t)))"

left=$((CUT_MS + PARTITION_SECONDS * 1000 - $(now_ms)))
[ "$left" -le 0 ] || sleep "$(printf '%d.%03d' $((left / 1000)) $((left % 1000)))"
docker network connect --ip "$W2_IP" "$NET" "$(cname w2)"
ok "[$(secs $(($(now_ms) - T0)))] docker network connect w2 ($W2_IP) after $(secs $(($(now_ms) - CUT_MS)))"

wait "$SUBMITTER" || true
SUBMITTER=""
failed_subs=$(cat "$SUB"/*.failed 2>/dev/null || true)
[ -z "$failed_subs" ] || fail "submissions that never got a 202: $failed_subs ($(tail -5 "$WORK/submit.log"))"
cat "$SUB"/[0-9]* | sort -n >"$WORK/submitted"
[ "$(wc -l <"$WORK/submitted")" = "$RUNS" ] || fail "$(wc -l <"$WORK/submitted") of $RUNS submissions recorded"
awk '{print $3}' "$WORK/submitted" >"$WORK/ids"
[ "$(sort -u "$WORK/ids" | wc -l)" = "$RUNS" ] || fail "task ids are not distinct"
retried=$(awk '$7 > 2 { n++ } END { print n + 0 }' "$WORK/submitted")
ok "$RUNS runs accepted (202): $(awk '$2 == "s1"' "$WORK/submitted" | wc -l) on s1, $(awk '$2 == "s2"' "$WORK/submitted" | wc -l) on s2; $retried needed retries (s2's restart)"
LAST_SUBMIT=$(awk '{ print $6 }' "$WORK/submitted" | sort -n | tail -1)

# ---------------------------------------------------------------------------------------------
stage "waiting until every run is final (at most $WAIT_FINAL s)"
wait_final "$WORK/ids" "$WAIT_FINAL"
ALL_FINAL_MS=$FINAL_MS

# ---------------------------------------------------------------------------------------------
stage "every run: its state, and why it did not succeed"
# Which worker ran which run, from the workers' own lines ("run RUN STATE", "run RUN: error");
# not "run RUN of NODE interrupted", which a worker says of another's run.
for w in w1 w2 w3; do
  log_of "$w" | sed -n -e 's/^worker run \([0-9a-f-]*\) [a-z_]*$/\1/p' -e 's/^worker run \([0-9a-f-]*\): .*/\1/p' |
    sort -u | sed "s/\$/ $w/"
done | sort >"$WORK/ran-by"
twice=$(awk '{ n[$1]++ } END { for (r in n) if (n[r] > 1) print r }' "$WORK/ran-by" | tr '\n' ' ')
verdict "$twice" "no run was reported ended by two workers ($(wc -l <"$WORK/ran-by") reports: $(awk '{ n[$2]++ } END { for (w in n) printf "%s=%d ", w, n[w] }' "$WORK/ran-by"))" \
  "runs reported ended by two workers"

TASKS="$WORK/tasks"
fetch_tasks "$WORK/ids" "$TASKS"
while read -r id; do [ -s "$TASKS/$id.json" ] || fail "could not read task $id"; done <"$WORK/ids"
jq -s -c '.[] | {task: .id, run: .run.run_id, state: .run.state, message: .run.message,
              reverts: .run.reverts, steps: [.run.steps[] | {id, state, attempts, started_at, reason}],
              created, started_at: .run.started_at, finished_at: .run.finished_at}' "$TASKS"/*.json >"$WORK/runs.jsonl"
jq -r '.state' "$WORK/runs.jsonl" | sort | uniq -c | sed 's/^/   /'
verdict "$(jq -r 'select(.state | test("^(succeeded|failed|cancelled|interrupted)$") | not) | "\(.task)=\(.state)"' "$WORK/runs.jsonl" | tr '\n' ' ')" \
  "every run final" "runs not final"
n_ok=$(jq -r 'select(.state == "succeeded") | .run' "$WORK/runs.jsonl" | wc -l)
verdict "$([ $((n_ok * 100)) -ge $((RUNS * 85)) ] || echo "$n_ok")" "$n_ok of $RUNS succeeded (at least 85 % wanted)" \
  "fewer than 85 % of $RUNS runs succeeded"
# Succeeded: both steps succeeded, each at its first attempt.
verdict "$(jq -r 'select(.state == "succeeded") | select([.steps[] | select(.state == "succeeded" and .attempts == 1)] | length != 2) | .run' "$WORK/runs.jsonl" | tr '\n' ' ')" \
  "every succeeded run: both steps succeeded, one attempt each" "succeeded runs whose steps did not each succeed once"
# Interrupted: a lost lease, naming one of the workers.
jq -r 'select(.state == "interrupted") | "\(.run) \(.task) \(.message // "")"' "$WORK/runs.jsonl" >"$WORK/interrupted"
: >"$WORK/interrupted-by"
bad=""
while read -r run task message; do
  node=$(sed -n 's/^node \(node-[0-9a-f]*\) lost its lease on this run.*/\1/p' <<<"$message")
  w=${WORKER_OF[${node:-none}]:-}
  if [ -z "$w" ]; then bad="$bad $run: '$message';"; continue; fi
  echo "$run $task $w" >>"$WORK/interrupted-by"
done <"$WORK/interrupted"
verdict "$bad" "$(wc -l <"$WORK/interrupted") interrupted, each 'node ... lost its lease on this run' naming a worker: $(awk '{ n[$3]++ } END { for (w in n) printf "%s=%d ", w, n[w] }' "$WORK/interrupted-by")" \
  "interrupted runs whose message does not name a worker that lost its lease"
# Which windows the faults hit: a run whose start was stored (its steps are in the record) has
# something to roll back; one lost before that has none.
while read -r run task w; do
  echo "$w $(jq -r --arg r "$run" 'select(.run == $r) | if (.steps | length) > 0 then "after-start" else "before-start" end' "$WORK/runs.jsonl")"
done <"$WORK/interrupted-by" | sort | uniq -c | awk '{ printf "%s %s=%s  ", $2, $3, $1 } END { print "" }' >"$WORK/windows"
note "interrupted, by worker and window: $(cat "$WORK/windows")"
verdict "$(awk '$3 == "w3" { printf "%s ", $1 }' "$WORK/interrupted-by")" "no run of w3 (no fault) interrupted" \
  "runs of w3, which no fault touched, were interrupted"
# Cancelled or failed: a message or a step's reason says why.
jq -r 'select(.state == "cancelled" or .state == "failed") | "   \(.state) \(.run): \(.message // ([.steps[] | select(.reason != null) | "\(.id): \(.reason)"] | join("; ")))"' "$WORK/runs.jsonl"
verdict "$(jq -r 'select(.state == "cancelled" or .state == "failed") | select((.message // "") == "" and ([.steps[] | select((.reason // "") != "")] | length) == 0) | .run' "$WORK/runs.jsonl" | tr '\n' ' ')" \
  "every cancelled or failed run says why ($(jq -r 'select(.state == "cancelled" or .state == "failed") | .run' "$WORK/runs.jsonl" | wc -l))" \
  "cancelled or failed runs that do not say why"

# ---------------------------------------------------------------------------------------------
stage "rollback: w1's interrupted runs reverted once; nothing left by runs that did not succeed"
w1_runs=$(awk '$3 == "w1" { print $1 }' "$WORK/interrupted-by")
for run in $w1_runs; do
  task=$(awk -v r="$run" '$1 == r { print $2 }' "$WORK/interrupted-by")
  # Killed between its claim and storing the run's start: no step ran, nothing to roll back.
  fetch_one "$TASKS" s1 "$task" || true
  if jq -e '(.run.steps | length) == 0 and ((.run.message // "") | test("before it started"))' \
    "$TASKS/$task.json" >/dev/null; then
    verdict "$(jq -r '.run.reverts | length | select(. != 0)' "$TASKS/$task.json")" \
      "$run (w1): interrupted before it started (no step ran), no revert needed" \
      "a run that never started has reverts"
    continue
  fi
  reverts=""
  # w1 rolls its runs back as it starts; give it a minute.
  for _ in $(seq 1 60); do
    fetch_one "$TASKS" s1 "$task" || true
    reverts=$(jq -c '[.run.reverts[] | {state, reverted}]' "$TASKS/$task.json")
    [ "$(jq -r 'length' <<<"$reverts")" -ge 1 ] && break
    sleep 1
  done
  bad=""
  [ "$(jq -r 'if length == 1 then .[0].state else "reverts: \(length)" end' <<<"$reverts")" = completed ] ||
    bad="reverts $reverts, want exactly one completed;"
  grep -q "^worker rolled back run $run " <<<"$(log_of w1)" || bad="$bad w1's log does not say it rolled it back"
  verdict "$bad" "$run (w1): one completed revert of $(jq -c '.[0].reverted' <<<"$reverts"), and w1 says it rolled it back" \
    "interrupted run $run of w1"
done
[ -n "$w1_runs" ] || note "no run of w1 was interrupted (it held none when killed?)"
# Every run that did not succeed: the workspace the worker that held it made for its task is
# empty again (out.txt rolled back, or never written). A run no worker reports holding (the
# interrupted ones are named by their message) is not checked.
awk '{ print $1, $3 }' "$WORK/interrupted-by" >"$WORK/held-by"
jq -r 'select(.state == "cancelled" or .state == "failed") | .run' "$WORK/runs.jsonl" | while read -r run; do
  w=$(awk -v r="$run" '$1 == r { print $2 }' "$WORK/ran-by")
  [ -z "$w" ] || echo "$run $w"
done >>"$WORK/held-by"
while read -r run w; do
  task=$(jq -r --arg r "$run" 'select(.run == $r) | .task' "$WORK/runs.jsonl")
  # A worker back from a partition rolls its runs back at its next recovery pass (every 5 s).
  for _ in $(seq 1 30); do
    files=$(docker exec "$(cname "$w")" /bin/ls -A "/data/workspaces/$task" 2>/dev/null | tr '\n' ' ' || true)
    [ -z "$files" ] && break
    sleep 0.5
  done
  state=$(jq -r --arg r "$run" 'select(.run == $r) | "\(.state); steps \([.steps[] | "\(.id)=\(.state)"] | join(" ")); \(.reverts | length) revert(s)"' "$WORK/runs.jsonl")
  verdict "${files:+its workspace still holds $files}" "$run on $w ($state): workspace empty" \
    "$run on $w ($state)"
done <"$WORK/held-by"

# ---------------------------------------------------------------------------------------------
stage "the queue in PostgreSQL"
sql "select state, coalesce(owner, '-'), attempts, count(*) from sc_jobs group by 1, 2, 3 order by 1, 2" |
  while read -r state owner attempts n; do echo "   $state ${WORKER_OF[$owner]:-$owner} attempts=$attempts: $n"; done
jobs=$(sql "select count(*) from sc_jobs")
verdict "$([ "$jobs" = "$RUNS" ] || echo "$jobs jobs")" "$jobs jobs for $RUNS runs: none lost, none doubled" "sc_jobs for $RUNS runs"
open=$(sql "select count(*) from sc_jobs where state in ('queued', 'running')")
verdict "$([ "$open" = 0 ] || echo "$open")" "none queued or running" "jobs still queued or running"
multi=$(sql "select count(*) from sc_jobs where attempts <> 1")
verdict "$([ "$multi" = 0 ] || echo "$multi")" "each job claimed exactly once" "jobs claimed more than once"
n_int_jobs=$(sql "select count(*) from sc_jobs where state = 'interrupted'")
n_int=$(wc -l <"$WORK/interrupted")
verdict "$([ "$n_int_jobs" = "$n_int" ] || echo "$n_int_jobs jobs, $n_int runs")" "$n_int_jobs interrupted jobs, as many as interrupted runs" \
  "interrupted jobs and runs differ"

# ---------------------------------------------------------------------------------------------
stage "the shared ledger: verify, export, check"
# A state directory of its own: /data/state is s1's, held open by the running server (a node
# with an empty state directory copies the vault header from PostgreSQL).
ledger_cli() { docker exec "$(cname s1)" secureclaw ledger "$@" --store "$STORE" --state-dir /tmp/ledger-audit --passphrase-file "$PASSPHRASE"; }
verify=$(ledger_cli verify 2>&1) || true
verdict "$(grep -q '^ledger OK: .* chain intact' <<<"$verify" || echo "$verify")" "$verify" "ledger verify"
ledger_cli export --head-out /tmp/ledger.head.json >"$WORK/ledger.jsonl" 2>"$WORK/ledger.err" ||
  fail "ledger export: $(cat "$WORK/ledger.err")"
entries=$(wc -l <"$WORK/ledger.jsonl")
n_verified=$(sed -n 's/^ledger OK: \([0-9]*\) entries.*/\1/p' <<<"$verify")
verdict "$([ "$entries" -ge "${n_verified:-0}" ] || echo "$entries exported, $n_verified verified")" "exported $entries entries" "the export"
echo "   kinds (entries):"
jq -r '.entry.kind' "$WORK/ledger.jsonl" | sort | uniq -c | sort -rn | sed 's/^/     /'
echo "   actors of the entries of runs:"
jq -r 'select(.entry.run != null) | .entry.actor' "$WORK/ledger.jsonl" | sort | uniq -c | sed 's/^/     /'
# Every (run, step): started and ended in turn, in seq order; a step in flight when its run was
# interrupted ends with the `step_failed` the interruption recorded. (An entry's time is when it
# was committed: a worker commits each step's start before the step runs, but its end with a
# later save, so overlap in time is read from the order, not the times.)
overlaps=$(jq -r 'select(.entry.step != null and (.entry.kind | test("^step_(started|finished|failed)$"))) | [.entry.run, .entry.step, .entry.seq, .entry.kind] | @tsv' "$WORK/ledger.jsonl" |
  sort -k1,1 -k2,2 -k3,3n |
  awk -F'\t' '{ k = $1 " " $2; if ($4 == "step_started") { if (open[k]) printf "%s started again at seq %s before it ended; ", k, $3; open[k] = 1 } else { if (!open[k]) printf "%s ended at seq %s without a start; ", k, $3; open[k] = 0 } }
              END { for (k in open) if (open[k]) printf "%s started, never ended; ", k }')
pairs=$(jq -r 'select(.entry.kind == "step_started") | "\(.entry.run) \(.entry.step)"' "$WORK/ledger.jsonl" | sort -u | wc -l)
verdict "$overlaps" "$pairs (run, step) pairs with step_started: each ended (step_finished/step_failed) before any new start" \
  "steps whose ledger entries overlap"
verdict "$(jq -r 'select(.entry.kind == "run_started") | .entry.run' "$WORK/ledger.jsonl" | sort | uniq -d | tr '\n' ' ')" \
  "no run_started twice for a run" "runs started more than once"
jq -r 'select(.entry.kind == "run_finished") | "\(.entry.run) \(.entry.result.state) \(.entry.result.lease_lost_by // "-")"' "$WORK/ledger.jsonl" | sort >"$WORK/finished"
jq -r 'select(.entry.kind == "run_started") | .entry.run' "$WORK/ledger.jsonl" | sort -u >"$WORK/started"
# The ledger's account of each succeeded run: run_started, write and read each started and
# finished once, one run_finished "succeeded".
bad=$(jq -r 'select(.state == "succeeded") | .run' "$WORK/runs.jsonl" | while read -r run; do
  grep -qx "$run" "$WORK/started" || { echo "$run: no run_started;"; continue; }
  n=$(grep -c "^$run " "$WORK/finished" || true)
  [ "$n" = 1 ] && grep -q "^$run succeeded " "$WORK/finished" || echo "$run: $n run_finished;"
done)
bad2=$(jq -r --slurpfile ok <(jq -s '[.[] | select(.state == "succeeded") | .run]' "$WORK/runs.jsonl") '
  select(.entry.step != null and (.entry.run as $r | $ok[0] | index($r))) | "\(.entry.run) \(.entry.step) \(.entry.kind)"' "$WORK/ledger.jsonl" |
  sort | awk '{ k = $1; s[k] = s[k] $2 ":" $3 "," } END { for (k in s) if (s[k] != "read:step_finished,read:step_started,write:step_finished,write:step_started,") printf "%s [%s]; ", k, s[k] }')
verdict "$bad$bad2" "every succeeded run: run_started, each step started and finished once, one run_finished succeeded" \
  "succeeded runs whose ledger entries are not that"
bad=""
while read -r run task w; do
  grep -q "^$run interrupted ${NODE_ID[$w]}\$" "$WORK/finished" || bad="$bad $run: [$(grep "^$run " "$WORK/finished" | tr '\n' ' ')];"
done <"$WORK/interrupted-by"
verdict "$bad" "every interrupted run: run_finished 'interrupted' with lease_lost_by its worker's node" \
  "interrupted runs without their run_finished 'interrupted'"
# What the ledger says of the runs that did not succeed, entry by entry.
jq -r 'select(.state != "succeeded") | .run' "$WORK/runs.jsonl" | while read -r run; do
  echo "   $run: $(jq -r --arg r "$run" 'select(.entry.run == $r) | "\(.entry.kind)\(if .entry.step then "(" + .entry.step + ")" else "" end)"' "$WORK/ledger.jsonl" | tr '\n' ' ')"
done
# How long a run's record took to reach the store: from the record's start (the worker began
# the run) to its run_started entry, which is committed with the first save of the record.
# Until then a run has no record, and a worker lost in that window leaves nothing to mark.
jq -rn --slurpfile r "$WORK/runs.jsonl" --slurpfile l <(jq -c 'select(.entry.kind == "run_started") | {run: .entry.run, time: .entry.time}' "$WORK/ledger.jsonl") "$JQ_TS"'
  ($l | map({key: .run, value: (.time | ms)}) | from_entries) as $saved
  | [$r[] | select($saved[.run] != null and .started_at != null) | $saved[.run] - (.started_at | ms)] | sort as $d
  | "   ..  run started on its worker → its first save committed (run_started entry): p50 \($d[(($d | length) * 0.5 | ceil) - 1]) ms, p99 \($d[(($d | length) * 0.99 | ceil) - 1]) ms, max \($d[-1]) ms"'
note "not checkable from the ledger: which worker wrote an entry (the actor of every worker is 'worker'); the workers' logs stand in for it above"

# ---------------------------------------------------------------------------------------------
stage "a revert asked of s2 runs on the worker that ran the run (w3)"
# Only w3's disk holds its runs' pre-images: the replica routes the revert there and answers
# with w3's reply.
routed=$(awk '$2 == "w3" { print $1 }' "$WORK/ran-by" | head -1)
if [ -z "$routed" ]; then
  problem "w3 reported no run to revert"
else
  task=$(jq -r --arg r "$routed" 'select(.run == $r) | .task' "$WORK/runs.jsonl")
  on_w3() { docker exec "$(cname w3)" /bin/ls -A "/data/workspaces/$task" 2>/dev/null | tr '\n' ' ' || true; }
  before=$(on_w3)
  code=$(call "$WORK/revert.json" s2 POST "/tasks/$task/revert" '{}')
  after=$(on_w3)
  bad=""
  [ "$code" = 200 ] || bad="HTTP $code: $(head -c 300 "$WORK/revert.json");"
  [ "$(jq -r '.outcome + "/" + .detail.summary.state' "$WORK/revert.json" 2>/dev/null)" = applied/completed ] ||
    bad="$bad answer $(head -c 300 "$WORK/revert.json");"
  [ -n "$before" ] || bad="$bad its workspace on w3 was already empty;"
  [ -z "$after" ] || bad="$bad its workspace on w3 still holds $after;"
  grep -q "^worker revert of run $routed: applied" <<<"$(log_of w3)" || bad="$bad w3's log does not say it reverted it"
  verdict "$bad" "$routed reverted through s2 by w3: its workspace there held ${before}and is empty" "routed revert of $routed"
fi

# ---------------------------------------------------------------------------------------------
if [ "$SCHEDULES" = 1 ]; then
  stage "schedules: one source on both replicas, each time started once while s1 restarts"
  scheduled_tasks() { # scheduled_tasks OUT: "ID STATE" of every task a schedule started
    local page code
    page=$(mktemp -p "$WORK")
    code=$(call "$page" s2 GET "/tasks?limit=200")
    if [ "$code" = 401 ]; then login s2 || true; code=$(call "$page" s2 GET "/tasks?limit=200"); fi
    [ "$code" = 200 ] && jq -r '.tasks[] | select(.origin == "schedule") | "\(.id) \(.state)"' "$page" >"$1"
    rm -f "$page"
  }
  code=$(call "$WORK/source.json" s1 POST /sources '{"name": "flows", "location": "/flows", "dir": "flows"}')
  [ "$code" = 201 ] || fail "registering the source on s1: HTTP $code $(head -c 300 "$WORK/source.json")"
  for replica in s1 s2; do
    listed=0
    for _ in $(seq 1 60); do
      code=$(call "$WORK/schedules.json" "$replica" GET /schedules)
      [ "$code" = 401 ] && login "$replica"
      if [ "$code" = 200 ] && [ "$(jq '.schedules | length' "$WORK/schedules.json")" = 1 ]; then listed=1; break; fi
      sleep 0.5
    done
    [ "$listed" = 1 ] || fail "$replica does not list the source's schedule 30 s after it was registered on s1"
  done
  ok "registered on s1; both replicas list its schedule"
  sleep 10
  t=$(now_ms)
  docker restart "$(cname s1)" >/dev/null
  wait_replica s1
  login s1 || fail "signing in on s1 after its restart"
  ok "docker restart s1 while the schedule fires: healthy again after $(secs $(($(now_ms) - t)))"
  sleep 10
  code=$(call "$WORK/source.json" s1 DELETE /sources/flows)
  [ "$code" = 204 ] || [ "$code" = 200 ] || fail "removing the source: HTTP $code $(head -c 300 "$WORK/source.json")"
  # s2 reads the sources again every 10 s: it may start one more time meanwhile. Settled once
  # the tasks listed, the ledger's fire times and its scheduled task_created agree and every
  # scheduled run is final (or a minute passed: the checks below then say what differs).
  sleep 12
  for _ in $(seq 1 60); do
    scheduled_tasks "$WORK/scheduled" || true
    ledger_cli export --head-out /tmp/ledger2.head.json >"$WORK/ledger2.jsonl" 2>"$WORK/ledger2.err" ||
      fail "ledger export: $(cat "$WORK/ledger2.err")"
    fired=$(jq -r 'select(.entry.kind == "schedule_fired") | .entry.result.due' "$WORK/ledger2.jsonl" | sort)
    n_fired=$(grep -c . <<<"$fired" || true)
    created=$(jq -r 'select(.entry.kind == "task_created" and .entry.result.origin == "schedule") | .entry.result.task' "$WORK/ledger2.jsonl" | sort -u | wc -l)
    n_tasks=$(wc -l <"$WORK/scheduled")
    if [ "$n_tasks" = "$n_fired" ] && [ "$created" = "$n_fired" ] &&
      [ -z "$(awk '$2 !~ /^(succeeded|failed|cancelled|interrupted)$/' "$WORK/scheduled")" ]; then
      break
    fi
    sleep 1
  done
  ok "source removed; scheduled runs: $(count_states "$WORK/scheduled")"
  verdict "$(uniq -d <<<"$fired" | tr '\n' ' ')" "$n_fired times fired, each once (one schedule_fired per due time)" \
    "times fired more than once"
  verdict "$([ "$n_fired" -ge 4 ] || echo "$n_fired")" "at least 4 times fired in about 20 s of a 3 s schedule" \
    "too few times fired"
  verdict "$([ "$created" = "$n_fired" ] && [ "$n_tasks" = "$n_fired" ] || echo "$created task_created, $n_tasks tasks listed")" \
    "one task per time fired ($n_tasks)" "scheduled tasks and fire times differ ($n_fired fired)"
  verdict "$(awk '$2 != "succeeded" { printf "%s=%s ", $1, $2 }' "$WORK/scheduled")" "every scheduled run succeeded" \
    "scheduled runs that did not succeed"
  note "schedule_skipped entries (catch-ups after s1's restart): $(jq -r 'select(.entry.kind == "schedule_skipped") | .entry.seq' "$WORK/ledger2.jsonl" | wc -l)"
fi

# ---------------------------------------------------------------------------------------------
stage "throughput and latency under faults"
report_latency() { # report_latency SUBMITTED RUNS_JSONL LABEL FIRST_MS FINAL_MS
  local submitted=$1 runs=$2 label=$3 first=$4 final=$5 n last
  n=$(wc -l <"$submitted")
  jq -rn --slurpfile r "$runs" --rawfile s "$submitted" "$JQ_TS"'
    ($s | split("\n") | map(select(. != "") | split(" ") | {key: .[3], value: (.[7] | tonumber)}) | from_entries) as $posted
    | [$r[] | select(.state == "succeeded" and .steps[0].started_at != null)
        | (.steps[0].started_at | ms) - $posted[.run]] | sort as $d
    | [$r[] | select(.state == "succeeded") | (.started_at | ms) - (.created | ms)] | sort as $c
    | def pct(a; p): if (a | length) == 0 then null else a[((a | length) * p | ceil) - 1] end;
      "   POST /run sent → first step started: p50 \(pct($d; 0.5)) ms, p99 \(pct($d; 0.99)) ms, max \($d[-1]) ms (\($d | length) runs)",
      "   task created → run started (record): p50 \(pct($c; 0.5)) ms, p99 \(pct($c; 0.99)) ms"'
  last=$(jq -rn --slurpfile r "$runs" "$JQ_TS"'[$r[] | select(.finished_at != null) | .finished_at | ms] | max // 0')
  [ "$last" -gt "$first" ] || last=$final
  awk -v n="$n" -v ms=$((last - first)) -v seen=$((final - first)) -v l="$label" 'BEGIN {
    printf "   %s: %d runs, first submit to last run finished %.1f s: %.2f runs/s (all seen final by polling after %.1f s)\n", l, n, ms / 1000, n / (ms / 1000), seen / 1000 }'
}
FAULT_REPORT=$(report_latency "$WORK/submitted" "$WORK/runs.jsonl" "under faults" "$FIRST_SUBMIT" "$ALL_FINAL_MS")
echo "$FAULT_REPORT"
note "the submissions spanned $(secs $((LAST_SUBMIT - FIRST_SUBMIT))) (paced at one per ${PACE_MS} ms, through the faults), so the queue, not the submitters, set the pace"

# ---------------------------------------------------------------------------------------------
if [ "$SCALING" = 1 ]; then
  cat >"$WORK/one-step.yaml" <<'YAML'
version: 1
name: cluster-one-step
steps:
  - id: write
    shell: echo $RANDOM > out.txt
YAML
  stage "scaling: $SCALING_RUNS one-step runs each with 1, 2 and 3 workers, no faults"
  # Idle workers are paused (frozen, holding no run) rather than stopped: a worker's start reads
  # every run in the store, which would make each round mostly a measure of start-up. Two
  # bursts per size: "live", submitted to running workers (latency from the POST that starts a
  # run to its first step; runs/s is then bounded by the submitters), and "drain", submitted
  # while the workers are paused and then released (runs/s is the workers' own).
  docker pause "$(cname w1)" "$(cname w2)" "$(cname w3)" >/dev/null
  SCALE_REPORT=()
  burst() { # burst K MODE: submits $SCALING_RUNS runs, waits until all are final; sets BURST_DIR, BURST_FIRST
    local k=$1 mode=$2 dir="$WORK/scale-$1-$2"
    mkdir -p "$dir"
    BURST_DIR=$dir
    BURST_FIRST=$(($(now_ms) + 200))
    # shellcheck disable=SC2016 # expanded by the inner bash; xargs appends the run's number as $4
    seq 1 "$SCALING_RUNS" | xargs -P 8 -n 1 bash -c 'submit_one "$1" "$4" "$2" "$3" 0' \
      _ "$dir" "$WORK/one-step.yaml" "$BURST_FIRST" >"$dir.log" 2>&1 || fail "scaling ($k worker(s), $mode): submissions failed ($(tail -3 "$dir.log"))"
    cat "$dir"/[0-9]* | sort -n >"$dir.submitted"
    awk '{ print $3 }' "$dir.submitted" >"$dir.ids"
  }
  collect() { # collect K MODE: the burst's runs, checked
    local k=$1 mode=$2 dir=$BURST_DIR
    fetch_tasks "$dir.ids" "$dir/tasks"
    jq -s -c '.[] | {task: .id, run: .run.run_id, state: .run.state, steps: [.run.steps[] | {id, state, started_at}], created, started_at: .run.started_at, finished_at: .run.finished_at}' "$dir"/tasks/*.json >"$dir.runs"
    verdict "$(jq -r 'select(.state != "succeeded") | "\(.run)=\(.state)"' "$dir.runs" | tr '\n' ' ')" \
      "$k worker(s), $mode: all $SCALING_RUNS succeeded" "scaling with $k worker(s) ($mode), no faults: runs that did not succeed"
  }
  for k in 1 2 3; do
    workers=()
    for i in $(seq 1 "$k"); do workers+=("$(cname "w$i")"); done
    docker unpause "$(cname "w$k")" >/dev/null
    # live
    burst "$k" live
    wait_final "$BURST_DIR.ids" "$WAIT_FINAL"
    collect "$k" live
    per=$(sql "select string_agg(n::text, '/') from (select count(*) n from sc_jobs where claimed_at >= to_timestamp($BURST_FIRST / 1000.0) group by owner order by 1 desc) c")
    line="$(report_latency "$BURST_DIR.submitted" "$BURST_DIR.runs" "$k worker(s), live" "$BURST_FIRST" "$FINAL_MS" | sed '2d') [runs per worker: $per]"
    echo "$line"
    SCALE_REPORT+=("$line")
    # drain
    docker pause "${workers[@]}" >/dev/null
    burst "$k" drain
    [ "$(sql "select count(*) from sc_jobs where state = 'queued'")" = "$SCALING_RUNS" ] || fail "scaling: the drain burst is not all queued"
    released=$(now_ms)
    docker unpause "${workers[@]}" >/dev/null
    wait_final "$BURST_DIR.ids" "$WAIT_FINAL"
    collect "$k" drain
    per=$(sql "select string_agg(n::text, '/') from (select count(*) n from sc_jobs where claimed_at >= to_timestamp($BURST_FIRST / 1000.0) group by owner order by 1 desc) c")
    read -r first_start last dur <<<"$(jq -rn --slurpfile r "$BURST_DIR.runs" "$JQ_TS"'
      [$r[] | {s: (.started_at | ms), f: (.finished_at | ms)}] as $x
      | ($x | map(.f - .s) | sort) as $d
      | "\($x | map(.s) | min) \($x | map(.f) | max) \($d[($d | length) / 2 | floor])"')"
    verdict "$([ "$first_start" -ge "$released" ] || echo "a run started $((released - first_start)) ms before the workers were released")" \
      "$k worker(s), drain: no run started before the workers were released" "scaling with $k worker(s) (drain)"
    line=$(awk -v n="$SCALING_RUNS" -v ms=$((last - released)) -v k="$k" -v per="$per" -v dur="$dur" 'BEGIN {
      printf "   %d worker(s), drain: %d queued runs done %.1f s after the workers were released: %.2f runs/s (a run: p50 %d ms) [runs per worker: %s]", k, n, ms / 1000, n / (ms / 1000), dur, per }')
    echo "$line"
    SCALE_REPORT+=("$line")
  done
fi

summary() {
  printf '%s\n' "${TIMINGS[@]}"
  echo "   runs by state: $(jq -r '.state' "$WORK/runs.jsonl" | sort | uniq -c | awk '{ printf "%s=%s ", $2, $1 }')"
  echo "$FAULT_REPORT"
  if [ "$SCALING" = 1 ]; then printf '%s\n' "${SCALE_REPORT[@]}"; fi
}
if [ "${#PROBLEMS[@]}" -gt 0 ]; then
  end_stage
  summary
  echo "!! what did not hold:" >&2
  for p in "${PROBLEMS[@]}"; do echo "   - $p" >&2; done
  fail "${#PROBLEMS[@]} check(s) did not hold"
fi

# ---------------------------------------------------------------------------------------------
stage "down: remove every container, network and volume of $PROJECT"
down
if what=$(left_behind); then fail "left behind: $what"; fi
ok "no container, volume or network labelled $LABEL"
end_stage

echo "== cluster test passed in $(secs $(($(now_ms) - T0)))"
summary
