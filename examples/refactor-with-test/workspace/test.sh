. ./lib.sh
got=$(add 2 3)
[ "$got" = 5 ] || { echo "expected 5, got $got" >&2; exit 1; }
echo "ok: 2 + 3 = $got"
