#!/bin/sh
# Build the tiny offline image the sandbox benchmark compares against:
# FROM scratch + Debian's statically linked busybox. No registry is contacted.
set -eu
IMAGE="${1:-secureclaw-bench-busybox:latest}"
if ! command -v docker >/dev/null 2>&1; then
    echo "docker not installed; skipping image build" >&2
    exit 0
fi
BUSYBOX="$(command -v busybox || true)"
if [ -z "$BUSYBOX" ] || ! file "$BUSYBOX" 2>/dev/null | grep -q static; then
    if [ -x /bin/busybox ] && ldd /bin/busybox 2>&1 | grep -q "not a dynamic"; then
        BUSYBOX=/bin/busybox
    else
        echo "installing busybox-static (Debian package)" >&2
        apt-get install -y -qq busybox-static >/dev/null
        BUSYBOX=/bin/busybox
    fi
fi
CTX="$(mktemp -d)"
trap 'rm -rf "$CTX"' EXIT
mkdir -p "$CTX/bin" "$CTX/workspace" "$CTX/tmp"
cp "$BUSYBOX" "$CTX/bin/busybox"
for applet in sh true echo cat; do ln -s busybox "$CTX/bin/$applet"; done
cat > "$CTX/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY bin/ /bin/
COPY workspace/ /workspace/
COPY tmp/ /tmp/
USER 1000:1000
DOCKERFILE
docker build -q -t "$IMAGE" "$CTX" >/dev/null
echo "$IMAGE"
