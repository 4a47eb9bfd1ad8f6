#!/usr/bin/env bash
# Wall-clock cost of a reading command with and without the unlock agent, and while another
# process holds the vault (reads through its read socket). Default Argon2id parameters.
#
# Usage: scripts/bench-vault-access.sh [BINARY] [RUNS]
#   BINARY  default target/release/secureclaw (cargo build --release -p secureclaw)
#   RUNS    timed runs per case (default 30); prints min / median / p90 in ms
set -euo pipefail

BIN="$(realpath "${1:-target/release/secureclaw}")"
RUNS="${2:-30}"
WORK="$(mktemp -d)"
GATE_PID=""
cleanup() {
    XDG_RUNTIME_DIR="$WORK/xdg" "$BIN" lock >/dev/null 2>&1 || true
    [ -n "$GATE_PID" ] && kill "$GATE_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -m 700 "$WORK/xdg"
export XDG_RUNTIME_DIR="$WORK/xdg"
unset SECURECLAW_STATE_DIR ARGON2_MEMORY_KB ARGON2_ITERATIONS ARGON2_PARALLELISM
export SECURECLAW_PASSPHRASE="bench passphrase"
WS="$WORK/ws"
STATE="$WS/.secureclaw"
mkdir "$WS"

# A state dir with one recorded run.
printf 'version: 1\nname: bench\nsteps:\n  - { id: a, write: { path: a.txt, content: x } }\n' >"$WS/one.yaml"
"$BIN" run "$WS/one.yaml" --workspace "$WS" --sandbox host >/dev/null 2>&1

# time_case LABEL CMD...: RUNS timed runs (after one warm-up), min / median / p90 in ms.
time_case() {
    local label="$1"
    shift
    "$@" >/dev/null 2>&1 </dev/null || { echo "$label: command failed: $*" >&2; exit 1; }
    local t=()
    for _ in $(seq "$RUNS"); do
        local s e
        s=$(date +%s%N)
        "$@" >/dev/null 2>&1 </dev/null
        e=$(date +%s%N)
        t+=($(( (e - s) / 1000 )))
    done
    printf '%s\n' "${t[@]}" | sort -n | awk -v label="$label" '
        { v[NR] = $1 }
        END { printf "%-58s min %6.1f  median %6.1f  p90 %6.1f ms\n", label,
              v[1] / 1000, v[int((NR + 1) / 2)] / 1000, v[int(NR * 0.9 + 0.5)] / 1000 }'
}

time_case "show last, passphrase (agent off)" \
    env SECURECLAW_AGENT=off "$BIN" show last --state-dir "$STATE"
"$BIN" unlock --state-dir "$STATE" --timeout 15m >/dev/null 2>&1
time_case "show last, unlocked agent, no passphrase" \
    env -u SECURECLAW_PASSPHRASE "$BIN" show last --state-dir "$STATE"
time_case "runs, unlocked agent, no passphrase" \
    env -u SECURECLAW_PASSPHRASE "$BIN" runs --state-dir "$STATE"

# A run that holds the vault writable: its shell step waits on a fifo.
mkfifo "$WS/gate"
printf 'version: 1\nname: held\nsteps:\n  - { id: a, write: { path: b.txt, content: y } }\n  - { id: wait, needs: [a], shell: "cat gate > got.txt" }\n' >"$WS/held.yaml"
"$BIN" run "$WS/held.yaml" --workspace "$WS" --sandbox host >/dev/null 2>&1 &
GATE_PID=$!
for _ in $(seq 200); do
    [ -S "$STATE/vault.sock" ] && "$BIN" runs --state-dir "$STATE" 2>/dev/null | grep -q running && break
    sleep 0.05
done
echo "database size: $(stat -c %s "$STATE/vault.redb") bytes"
time_case "show last during a run (read socket), agent" \
    env -u SECURECLAW_PASSPHRASE "$BIN" show last --state-dir "$STATE"
time_case "show last during a run (read socket), passphrase" \
    env SECURECLAW_AGENT=off "$BIN" show last --state-dir "$STATE"
echo go >"$WS/gate"
wait "$GATE_PID"
GATE_PID=""
