#!/usr/bin/env bash
# HTTP server figures with the release binary (docs/performance.md, "Server"):
#
#   * API latency at a fixed 500 requests/s (open loop; latency counted from when each request
#     was due): GET /health, GET /api/v1/auth/me, GET /api/v1/tasks;
#   * 1,000 SSE clients on one task's stream: server RSS before and after they connect (from
#     /proc), and how far apart the streams receive each event;
#   * POST tasks/{id}/run to the first step starting: the server's own histogram
#     (secureclaw_run_to_first_step_seconds) over RUNS sequential runs.
#
# Usage: scripts/bench-server.sh            Env: RPS (500), SECONDS_EACH (10), CLIENTS (1000),
#        RUNS (20), SKIP_BUILD=1, BIN (target/release/secureclaw)
# The task figures need the tasks API; without it those stages say so and are skipped.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=${BIN:-$ROOT/target/release/secureclaw}
RPS=${RPS:-500}
SECONDS_EACH=${SECONDS_EACH:-10}
CLIENTS=${CLIENTS:-1000}
RUNS=${RUNS:-20}

if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release -p secureclaw >&2
  cargo bench -p secureclaw-server --bench load --no-run >&2
fi
LOAD() { cargo bench -q -p secureclaw-server --bench load -- "$@"; }
ulimit -n 65536 2>/dev/null || ulimit -n 8192 2>/dev/null || true

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]]; then kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

SECURECLAW_PASSPHRASE=bench "$BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" \
  >"$WORK/url" 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 1 300); do [[ -s "$WORK/url" ]] && break; sleep 0.1; done
URL=$(head -1 "$WORK/url")
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$SERVER_PID/status"; }
echo "server $URL (pid $SERVER_PID), RSS $(rss)"

TOKEN=$(curl -sf "$URL/api/v1/auth/register" -H 'content-type: application/json' \
  -d '{"username":"bench","password":"correct horse battery staple"}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')

echo "== API latency at $RPS requests/s for $SECONDS_EACH s each"
LOAD rate "$URL" /health "$RPS" "$SECONDS_EACH"
LOAD rate "$URL" /api/v1/auth/me "$RPS" "$SECONDS_EACH" "$TOKEN"
if curl -sf -o /dev/null "$URL/api/v1/tasks" -H "authorization: Bearer $TOKEN"; then
  LOAD rate "$URL" /api/v1/tasks "$RPS" "$SECONDS_EACH" "$TOKEN"
else
  echo "GET /api/v1/tasks: not served by this build; skipped"
  exit 0
fi
echo "server RSS after the latency runs: $(rss)"

echo "== run to first step ($RUNS runs, one at a time)"
cat >"$WORK/first.yaml" <<'YAML'
version: 1
name: first-step
steps:
  - id: note
    write: { path: note.txt, content: "x\n" }
YAML
LOAD first-step "$URL" "$WORK/first.yaml" "$RUNS" "$TOKEN"

echo "== $CLIENTS SSE clients on one running task"
# A first step that sleeps leaves time to connect every stream before the events that count.
cat >"$WORK/slow.yaml" <<'YAML'
version: 1
name: fan-out
steps:
  - id: wait
    shell: sleep 8
  - id: a
    needs: [wait]
    write: { path: a.txt, content: "a\n" }
  - id: b
    needs: [a]
    write: { path: b.txt, content: "b\n" }
  - id: c
    needs: [b]
    write: { path: c.txt, content: "c\n" }
YAML
TASK=$(python3 -c 'import json,sys; print(json.dumps({"workflow": open(sys.argv[1]).read()}))' "$WORK/slow.yaml" |
  curl -sf "$URL/api/v1/tasks" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d @- |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
echo "RSS before the streams: $(rss)"
curl -sf -X POST "$URL/api/v1/tasks/$TASK/run" -H "authorization: Bearer $TOKEN" >/dev/null
LOAD sse "$URL" "$TASK" "$CLIENTS" 20 "$TOKEN" >"$WORK/sse.out" &
LOAD_PID=$!
for _ in $(seq 1 600); do grep -q "streams connected" "$WORK/sse.out" && break; sleep 0.1; done
echo "RSS with $CLIENTS streams open: $(rss)"
wait "$LOAD_PID"
echo "RSS after the run's events went out: $(rss)"
cat "$WORK/sse.out"
