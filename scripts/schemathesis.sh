#!/usr/bin/env bash
# Property-based API tests: Schemathesis (from PyPI) generates requests from the server's own
# OpenAPI document and checks that no answer is a server error and that every answer matches
# what the document promises (status code, content type, body schema).
#
#   scripts/schemathesis.sh [PATH_TO_SECURECLAW_BINARY]     (default: target/debug/secureclaw)
#
# SCHEMATHESIS_MAX_EXAMPLES (default 25) bounds the cases per operation.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/debug/secureclaw}
VENV=${SCHEMATHESIS_VENV:-target/schemathesis-venv}
VERSION=4.32.5

if [ ! -x "$VENV/bin/schemathesis" ] || ! "$VENV/bin/schemathesis" --version | grep -q "$VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$VERSION"
fi

WORK=$(mktemp -d)
SERVER_PID=""
FAKE_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [ -n "$FAKE_PID" ]; then kill "$FAKE_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# The planner talks to a stand-in provider on loopback, so instruction tasks are planned too.
python3 scripts/fake-anthropic.py >"$WORK/llm" &
FAKE_PID=$!
for _ in $(seq 1 50); do [ -s "$WORK/llm" ] && break; sleep 0.1; done
LLM_URL=$(head -1 "$WORK/llm")

# Cheap Argon2id so registration is not the bottleneck; a fresh data dir every time.
SECURECLAW_PASSPHRASE=schemathesis ARGON2_MEMORY_KB=8192 ARGON2_ITERATIONS=1 \
  ANTHROPIC_BASE_URL="$LLM_URL" ANTHROPIC_API_KEY=fuzz LLM_PROVIDER=claude LLM_FALLBACK_ORDER=claude \
  "$BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" >"$WORK/url" 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 1 100); do [ -s "$WORK/url" ] && break; sleep 0.1; done
URL=$(head -1 "$WORK/url")
[ -n "$URL" ] || { cat "$WORK/server.log" >&2; echo "the server did not start" >&2; exit 1; }

TOKEN=$(curl -sf "$URL/api/v1/auth/register" -H 'content-type: application/json' \
  -d '{"username":"schemathesis","password":"correct horse battery staple"}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')

# Logout and revoking a session (the stateful phase finds our own session's id in the list)
# would end the token the other operations use; both are covered by the server tests.
"$VENV/bin/schemathesis" run "$URL/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-25}" \
  --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
  --exclude-path /api/v1/auth/logout \
  --exclude-path '/api/v1/auth/sessions/{id}' \
  --seed 1
