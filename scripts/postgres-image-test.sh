#!/usr/bin/env bash
# The PostgreSQL image, end to end, on this machine: builds secureclaw-postgres offline
# (scripts/build-postgres-image.sh), starts it on a private Docker network of its own with the
# password in a read-only file and the port published on 127.0.0.1 only, waits for its health
# check, connects from the host with psql over loopback (and sees a wrong password refused),
# writes a table, stops the container (fast, clean shutdown), starts it again and reads the
# table back. A second container from the same image reaches the server by name over the private
# network; disconnected from that network it no longer can, reconnected it can again: the
# partition primitive a cluster test builds on. Everything the test made carries its project
# label and is removed at the end, which is checked. Prints how long each step took.
#
#   scripts/postgres-image-test.sh
#
# Without a Docker daemon it prints one SKIPPED line and exits 0. Needs psql on the host (the
# Debian postgresql package, which the image build needs anyway).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! docker info >/dev/null 2>&1; then
  echo "== postgres image test SKIPPED: no Docker daemon on this machine"
  exit 0
fi
command -v psql >/dev/null 2>&1 || { echo "postgres-image-test.sh: needs psql (apt-get install postgresql-client)" >&2; exit 1; }

PROJECT="secureclaw-pg-test-$$"
LABEL="secureclaw.test.project=$PROJECT"
TAG="test-$$"
IMAGE="secureclaw-postgres:$TAG"
NET="$PROJECT-net"
VOLUME="$PROJECT-data"
DB="$PROJECT-db"          # the server; other containers on $NET reach it by this name
CLIENT="$PROJECT-client"  # the same image, used for its psql
WORK=$(mktemp -d)
PWFILE="$WORK/postgres_password"
SECRET=/run/secrets/postgres_password

# Step timings: each step's wall time is printed when the next one starts, and all at the end.
now_ms() { date +%s%3N; }
secs() { printf '%d.%d s' $(($1 / 1000)) $(($1 % 1000 / 100)); }
T0=$(now_ms)
STEP=""
STEP_START=0
TIMINGS=()
end_step() {
  [ -n "$STEP" ] || return 0
  local ms=$(($(now_ms) - STEP_START))
  echo "   ($(secs "$ms"))"
  TIMINGS+=("$(printf '%9s  %s' "$(secs "$ms")" "$STEP")")
  STEP=""
}
step() {
  end_step
  STEP="$*"
  STEP_START=$(now_ms)
  echo "== $*"
}
fail() { echo "!! postgres image test FAILED: $*" >&2; exit 1; }
# Here-strings rather than `... | grep -q`: grep -q quits at the first match, and under pipefail
# the writer's SIGPIPE would turn a match into a failure.
log_has() { local logs; logs=$(docker logs --tail "${2:-all}" "$DB" 2>&1); grep -q -- "$1" <<<"$logs"; }
ok() { echo "   ok  $*"; }

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    echo "== server log (last 40 lines):"
    docker logs --tail 40 "$DB" 2>&1 || true
  fi
  docker rm -fv "$DB" "$CLIENT" >/dev/null 2>&1 || true
  docker network rm "$NET" >/dev/null 2>&1 || true
  docker volume rm "$VOLUME" >/dev/null 2>&1 || true
  docker image rm "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

step "building the image offline (scripts/build-postgres-image.sh --tag $TAG)"
scripts/build-postgres-image.sh --tag "$TAG"
docker image inspect "$IMAGE" >/dev/null 2>&1 || fail "no image $IMAGE after the build"
ok "user $(docker image inspect -f '{{.Config.User}}' "$IMAGE"), $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

step "private network, volume and password file (project $PROJECT)"
docker network create --label "$LABEL" "$NET" >/dev/null
docker volume create --label "$LABEL" "$VOLUME" >/dev/null
# The password: a file readable by the server's uid 70 only (or by all, when not run as root).
head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$PWFILE"
if [ "$(id -u)" = 0 ]; then
  chown 70:70 "$PWFILE"
  chmod 0400 "$PWFILE"
else
  chmod 0444 "$PWFILE"
fi
PASSWORD=$(cat "$PWFILE")

# Host-side psql over loopback; psql exits 2 when it cannot connect.
host_psql() { PGPASSWORD="$PASSWORD" PGCONNECT_TIMEOUT=5 psql -h 127.0.0.1 -p "$PORT" -U secureclaw -d secureclaw -X -q -tA -v ON_ERROR_STOP=1 "$@"; }
wait_healthy() {
  local health=none
  for _ in $(seq 1 120); do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$DB" 2>/dev/null || echo none)
    [ "$health" = healthy ] && return 0
    [ "$(docker inspect -f '{{.State.Running}}' "$DB")" = true ] || fail "the server container exited"
    sleep 0.5
  done
  fail "container health is '$health' after 60 s"
}
# The published port: Docker picks a free one, on 127.0.0.1 only. It can change at each start.
read_port() {
  local published
  published=$(docker port "$DB" 5432/tcp)
  [ "$(grep -cv '^127\.0\.0\.1:' <<<"$published")" = 0 ] || fail "port 5432 published beyond loopback: $published"
  PORT=${published##*:}
}

step "starting the server (first start: initdb)"
docker run -d --name "$DB" --label "$LABEL" --network "$NET" \
  -v "$VOLUME:/var/lib/postgresql/data" \
  -v "$PWFILE:$SECRET:ro" -e "POSTGRES_PASSWORD_FILE=$SECRET" \
  -p 127.0.0.1::5432 "$IMAGE" >/dev/null
wait_healthy
read_port
ok "healthy, published on 127.0.0.1:$PORT only"
log_has 'creating the cluster' || fail "the first start did not create the cluster"
ok "initdb ran on the empty volume"

step "host psql over loopback"
version=$(host_psql -c 'select version()') || fail "psql could not connect with the password"
ok "$version"
[ "$(host_psql -c 'select current_user, current_database()')" = "secureclaw|secureclaw" ] || fail "not user/database secureclaw"
ok "user secureclaw, database secureclaw"
methods=$(host_psql -c "select string_agg(distinct auth_method, ',') from pg_hba_file_rules")
[ "$methods" = scram-sha-256 ] || fail "pg_hba methods: $methods"
ok "pg_hba: scram-sha-256 only"
if err=$(PGPASSWORD="not-$PASSWORD" PGCONNECT_TIMEOUT=5 psql -h 127.0.0.1 -p "$PORT" -U secureclaw -d secureclaw -X -tAc 'select 1' 2>&1); then
  fail "a wrong password was accepted"
fi
grep -q 'password authentication failed' <<<"$err" || fail "wrong password: $err"
ok "a wrong password is refused"
if grep -qF -- "$PASSWORD" <<<"$(docker inspect -f '{{json .Config.Env}}' "$DB")"; then fail "the password is in the container's environment"; fi
ok "the password is not in the container's environment"
[ "$(docker exec "$DB" id -u)" = 70 ] || fail "the server does not run as uid 70"
ok "the server runs as uid 70"

step "create table, insert, select"
host_psql -c 'create table survival (id int primary key, note text not null)' \
  -c "insert into survival values (1, 'written before the restart'), (2, 'ünïcode')"
[ "$(host_psql -c 'select count(*) from survival')" = 2 ] || fail "select after insert"
ok "2 rows in survival"

step "a second container reaches the server by name on the private network"
# Its data volume is a tmpfs (the image's VOLUME would otherwise leave an anonymous volume).
# libpq's connect_timeout does not cover the name lookup: cut off from the network, the lookup
# waits for the resolver (5 s x 2 tries by default), hence the one-second, one-try options.
docker run -d --name "$CLIENT" --label "$LABEL" --network "$NET" --no-healthcheck \
  --dns-option timeout:1 --dns-option attempts:1 \
  --tmpfs /var/lib/postgresql/data -v "$PWFILE:$SECRET:ro" \
  --entrypoint /bin/sleep "$IMAGE" 3600 >/dev/null
client_psql() { # client_psql [HOST]: the server by name, or HOST
  docker exec -e PGCONNECT_TIMEOUT=3 "$CLIENT" sh -c \
    'PGPASSWORD=$(cat "$0") exec psql -h "$1" -U secureclaw -d secureclaw -X -tA -c "select count(*) from survival"' \
    "$SECRET" "${1:-$DB}" 2>&1
}
out=$(client_psql) || fail "psql -h $DB from $CLIENT: $out"
[ "$out" = 2 ] || fail "psql -h $DB from $CLIENT read '$out'"
ok "psql -h $DB from $CLIENT: 2 rows"
DB_IP=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$DB")
out=$(client_psql "$DB_IP") || fail "psql -h $DB_IP from $CLIENT: $out"
ok "psql -h $DB_IP (its address) from $CLIENT: $out rows"

step "partition: docker network disconnect, then the connection fails"
docker network disconnect "$NET" "$CLIENT"
t=$(now_ms)
if out=$(client_psql); then fail "psql -h $DB still works after the disconnect: $out"; fi
ok "by name: fails after $(secs $(($(now_ms) - t))): $(head -1 <<<"$out")"
t=$(now_ms)
if out=$(client_psql "$DB_IP"); then fail "psql -h $DB_IP still works after the disconnect: $out"; fi
ok "by address: fails after $(secs $(($(now_ms) - t))): $(head -1 <<<"$out")"

step "heal: docker network connect, then the connection works again"
docker network connect "$NET" "$CLIENT"
out=$(client_psql) || fail "psql -h $DB after reconnecting: $out"
[ "$out" = 2 ] || fail "psql -h $DB after reconnecting read '$out'"
ok "psql -h $DB from $CLIENT: 2 rows again"

step "docker stop with a session open (fast shutdown)"
# A pool keeps sessions open; a smart shutdown (SIGTERM) would wait for them until Docker kills.
docker exec -d "$CLIENT" sh -c \
  'PGPASSWORD=$(cat "$0") exec psql -h "$1" -U secureclaw -d secureclaw -X -c "select pg_sleep(600)"' "$SECRET" "$DB"
for _ in $(seq 1 50); do
  open=$(host_psql -c "select count(*) from pg_stat_activity where query like 'select pg_sleep(600)%'")
  [ "$open" = 1 ] && break
  sleep 0.1
done
[ "$open" = 1 ] || fail "the client's session did not show up in pg_stat_activity"
ok "a session from $CLIENT is open"
t=$(now_ms)
docker stop "$DB" >/dev/null
stop_ms=$(($(now_ms) - t))
code=$(docker inspect -f '{{.State.ExitCode}}' "$DB")
[ "$code" = 0 ] || fail "the server exited with $code"
[ "$stop_ms" -lt 10000 ] || fail "docker stop took $(secs "$stop_ms") (Docker kills after 10 s)"
log_has 'database system is shut down' 5 || fail "no 'database system is shut down' in the log"
ok "stopped in $(secs "$stop_ms"), exit code 0, 'database system is shut down'"

step "docker start: the data survived"
docker start "$DB" >/dev/null
wait_healthy
read_port
log_has 'existing cluster' 20 || fail "the second start did not find the existing cluster"
ok "existing cluster, no second initdb"
[ "$(host_psql -c 'select note from survival where id = 1')" = "written before the restart" ] ||
  fail "the row is not there after the restart"
[ "$(host_psql -c 'select note from survival where id = 2')" = "ünïcode" ] || fail "UTF-8 text did not survive"
ok "both rows read back after the restart (127.0.0.1:$PORT)"

step "removing containers, network and volume"
docker rm -fv "$DB" "$CLIENT" >/dev/null
docker network rm "$NET" >/dev/null
docker volume rm "$VOLUME" >/dev/null
left_c=$(docker ps -aq --filter "label=$LABEL")
left_v=$(docker volume ls -q --filter "label=$LABEL")
left_n=$(docker network ls -q --filter "label=$LABEL")
[ -z "$left_c$left_v$left_n" ] || fail "left behind: containers [$left_c] volumes [$left_v] networks [$left_n]"
ok "no container, volume or network labelled $LABEL"
docker image rm "$IMAGE" >/dev/null
end_step

echo "== postgres image test passed in $(secs $(($(now_ms) - T0)))"
printf '%s\n' "${TIMINGS[@]}"
