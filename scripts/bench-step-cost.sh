#!/usr/bin/env bash
# End-to-end cost of a step, measured with the release binary, next to references timed in the
# same run on the same trees:
#
#   * engine cost per writing step: `secureclaw run` of an N-step chain of `write` steps minus
#     a 1-step chain, divided by N-1 (the process start, vault open and first scan cancel out);
#   * shell step: the same for `shell: "true"` on the native sandbox, next to a bare
#     `bwrap --unshare-all --ro-bind / / true`;
#   * capture: a 1-step `write` run on a 10k- and a 100k-file workspace minus the same run on
#     an empty workspace (the stat cache is warm: each tree was run once before timing), next
#     to `git status --porcelain` on the same tree; and the same for a 1-step `shell: "true"`
#     run, which also pays the sandbox's write-budget walks.
#
# Usage: scripts/bench-step-cost.sh [REPS]   (default 7; medians are reported)
# Env:   BENCH_DIR (default /tmp/secureclaw-bench), STEPS (default 21), SKIP_BUILD=1,
#        SIZES (default "10000 100000"), BIN (default target/release/secureclaw),
#        STATE_SUFFIX (appended to each tree's state dir, to compare two binaries).
# The first run on a tree stores every file in the vault (minutes for 100k files); it is not
# timed.
set -euo pipefail

REPS=${1:-7}
STEPS=${STEPS:-21}
SIZES=${SIZES:-"10000 100000"}
BENCH_DIR=${BENCH_DIR:-/tmp/secureclaw-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/secureclaw}

if [[ -z "${SKIP_BUILD:-}" ]]; then
    (cd "$ROOT" && cargo build --release -p secureclaw >&2)
fi
command -v bwrap >/dev/null || { echo "bwrap missing (apt-get install -y bubblewrap)" >&2; exit 1; }

export SECURECLAW_PASSPHRASE="bench passphrase"
export ARGON2_MEMORY_KB=256 ARGON2_ITERATIONS=1
unset SECURECLAW_STATE_DIR

mkdir -p "$BENCH_DIR"

# A workspace of N files of 1-4 KiB in directories of 100, committed to git.
make_tree() {
    local n=$1 dir=$BENCH_DIR/ws-$1
    if [[ ! -f $dir/.ready ]]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        python3 - "$dir" "$n" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // 10000), "e%03d" % ((i // 100) % 100))
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d.txt" % i), "wb") as f:
        f.write((("file %d\n" % i) * (128 + i % 384)).encode())
EOF
        if ((n > 0)); then
            (cd "$dir" && git init -q && git add -A && git -c user.name=b -c user.email=b@b commit -qm tree)
        fi
        touch "$dir/.ready"
    fi
    echo "$dir"
}

# A chain of `n` steps of one kind.
make_wf() {
    local kind=$1 n=$2 f=$BENCH_DIR/wf-$1-$2.yaml
    {
        echo "version: 1"
        echo "name: bench-$kind-$n"
        echo "steps:"
        for ((i = 0; i < n; i++)); do
            echo "  - id: s$i"
            ((i > 0)) && echo "    needs: [s$((i - 1))]"
            if [[ $kind == write ]]; then
                echo "    write: { path: out/bench.txt, content: \"step $i\\n\" }"
            else
                echo "    shell: \"true\""
            fi
        done
    } >"$f"
    echo "$f"
}

now_ns() { date +%s%N; }

# Milliseconds taken by one command.
time_ms() {
    local t0 t1
    t0=$(now_ns)
    "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; return 1; }
    t1=$(now_ns)
    echo $(((t1 - t0) / 1000))
}

median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m/1000}'; }

run_wf() { # workspace wf sandbox
    "$BIN" run "$2" --workspace "$1" --state-dir "$1.state${STATE_SUFFIX:-}" --sandbox "$3" --yes
}

EMPTY=$(make_tree 0)
declare -A TREES
for n in $SIZES; do TREES[$n]=$(make_tree "$n"); done

W1=$(make_wf write 1)
WN=$(make_wf write "$STEPS")
S1=$(make_wf shell 1)
SN=$(make_wf shell "$STEPS")

# Warm: the vault exists and holds each tree's stat cache before anything is timed.
for ws in "$EMPTY" "${TREES[@]}"; do run_wf "$ws" "$W1" native >/dev/null 2>&1 || run_wf "$ws" "$W1" native; done

declare -A T
for ((r = 0; r < REPS; r++)); do
    T[w1]+="$(time_ms run_wf "$EMPTY" "$W1" native) "
    T[wn]+="$(time_ms run_wf "$EMPTY" "$WN" native) "
    T[s1]+="$(time_ms run_wf "$EMPTY" "$S1" native) "
    T[sn]+="$(time_ms run_wf "$EMPTY" "$SN" native) "
    T[bwrap]+="$(time_ms bwrap --unshare-all --ro-bind / / true) "
    T[fsync]+="$(python3 -c 'import os,time
f=os.open("'"$BENCH_DIR"'/fsync-probe",os.O_WRONLY|os.O_CREAT)
t=time.perf_counter_ns(); os.pwrite(f,b"x"*4096,0); os.fdatasync(f); print((time.perf_counter_ns()-t)//1000)') "
    for n in $SIZES; do
        T[ws$n]+="$(time_ms run_wf "${TREES[$n]}" "$W1" native) "
        T[ss$n]+="$(time_ms run_wf "${TREES[$n]}" "$S1" native) "
        T[git$n]+="$(time_ms git -C "${TREES[$n]}" status --porcelain) "
    done
done

med() { tr ' ' '\n' <<<"${T[$1]}" | grep . | median; }
per_step() { # N-step median minus 1-step median, over N-1
    awk -v a="$(med "$1")" -v b="$(med "$2")" -v n="$STEPS" 'BEGIN {printf "%.2f", (a-b)/(n-1)}'
}

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); reps: $REPS; chain length: $STEPS"
echo "1-step write run, empty workspace:  $(med w1) ms"
echo "$STEPS-step write run, empty workspace: $(med wn) ms"
echo "engine cost per write step:          $(per_step wn w1) ms"
echo "1-step shell run (native):           $(med s1) ms"
echo "$STEPS-step shell run (native):          $(med sn) ms"
echo "shell step end to end:               $(per_step sn s1) ms"
echo "bwrap --unshare-all true:            $(med bwrap) ms"
echo "one 4 KiB write + fdatasync:         $(med fsync) ms"
for n in $SIZES; do
    extra=$(awk -v a="$(med ws$n)" -v b="$(med w1)" 'BEGIN {printf "%.2f", a-b}')
    echo "1-step write run, $n files: $(med ws$n) ms (+$extra ms over empty); git status: $(med git$n) ms"
    extra=$(awk -v a="$(med ss$n)" -v b="$(med s1)" 'BEGIN {printf "%.2f", a-b}')
    echo "1-step shell run, $n files: $(med ss$n) ms (+$extra ms over empty)"
done
