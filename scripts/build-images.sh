#!/usr/bin/env bash
# Builds every secureclaw image with no registry: nothing is pulled, nothing is downloaded.
#
#   secureclaw:VERSION           the server and CLI (docker/Dockerfile.backend): FROM scratch with
#                                the secureclaw binary, the shared libraries `ldd` names for it,
#                                Debian's static busybox (the shell and tools steps run with) and
#                                the CA bundle; user 10001, no setuid file, labels with the version
#                                and the source commit
#   secureclaw-sandbox:VERSION   the docker backend's step image (`secureclaw sandbox build-image`)
#
#   scripts/build-images.sh                        # builds target/release/secureclaw first
#   scripts/build-images.sh --bin target/debug/secureclaw --tag dev
#   scripts/build-images.sh --no-sandbox           # the server image only
#
# SECURECLAW_BIN names the binary like --bin. Needs: a Docker daemon, busybox-static and
# ca-certificates (Debian packages), ldd, and objcopy (binutils) to drop debug sections.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${SECURECLAW_BIN:-}"
TAG=""
SANDBOX=1
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    --no-sandbox) SANDBOX=0; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-images.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
TAG="${TAG:-$VERSION}"
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then REVISION="$REVISION-dirty"; fi

if [ -z "$BIN" ]; then
  echo "== cargo build --release --locked"
  cargo build --release --locked
  BIN=target/release/secureclaw
fi
[ -x "$BIN" ] || { echo "build-images.sh: $BIN is not an executable (build it or pass --bin)" >&2; exit 1; }
BUSYBOX=/bin/busybox
# `ldd` fails on a static program: the image has no libc of its own for busybox to load.
if [ ! -x "$BUSYBOX" ] || ldd "$BUSYBOX" >/dev/null 2>&1; then
  echo "build-images.sh: $BUSYBOX must be Debian's static busybox (apt-get install busybox-static)" >&2
  exit 1
fi
CA=/etc/ssl/certs/ca-certificates.crt
[ -f "$CA" ] || { echo "build-images.sh: no CA bundle at $CA (apt-get install ca-certificates)" >&2; exit 1; }

CONTEXT=$(mktemp -d)
trap 'rm -rf "$CONTEXT"' EXIT
ROOT="$CONTEXT/rootfs"
mkdir -p "$ROOT"/{bin,usr/bin,usr/local/bin,etc/ssl/certs,tmp} "$CONTEXT/data"
chmod 1777 "$ROOT/tmp"

# The binary without its debug sections (a debug build is ~190 MB with them).
if command -v objcopy >/dev/null 2>&1; then
  objcopy --strip-debug "$BIN" "$ROOT/usr/local/bin/secureclaw"
else
  cp "$BIN" "$ROOT/usr/local/bin/secureclaw"
fi
chmod 0755 "$ROOT/usr/local/bin/secureclaw"

# Its library closure, each at the path the loader looks for it.
ldd "$BIN" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }' | while read -r lib; do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
done
# On merged-/usr hosts `ldd` names /lib/...; the loader path must also exist as named in the ELF.
interp=$(readelf -l "$BIN" 2>/dev/null | sed -n 's/.*interpreter: \(.*\)]/\1/p')
if [ -n "$interp" ] && [ ! -e "$ROOT$interp" ]; then
  mkdir -p "$ROOT$(dirname "$interp")"
  cp -L "$interp" "$ROOT$interp"
fi

# The shell and tools a step runs with (the native sandbox shows steps this image's /bin, /usr).
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] && continue
  ln -sf busybox "$ROOT/bin/$applet"
done
# No setuid or setgid file in the image (busybox is installed without modes; symlinks have none).
cp "$CA" "$ROOT/etc/ssl/certs/ca-certificates.crt"
cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/nonexistent:/sbin/nologin
secureclaw:x:10001:10001:secureclaw:/data:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
secureclaw:x:10001:
nogroup:x:65534:
EOF
echo "hosts: files dns" >"$ROOT/etc/nsswitch.conf"
cp docker/Dockerfile.backend "$CONTEXT/Dockerfile"

echo "== docker build secureclaw:$TAG (no network, FROM scratch)"
start=$SECONDS
docker build --network none --pull=false -q \
  --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" \
  -t "secureclaw:$TAG" "$CONTEXT"
echo "== secureclaw:$TAG built in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "secureclaw:$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"

if [ "$SANDBOX" = 1 ]; then
  echo "== secureclaw sandbox build-image"
  start=$SECONDS
  "$BIN" sandbox build-image
  echo "== sandbox image built in $((SECONDS - start)) s"
fi
