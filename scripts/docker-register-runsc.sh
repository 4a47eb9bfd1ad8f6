#!/usr/bin/env bash
# Register gVisor's runsc with the local Docker daemon as the runtime `runsc`, so that the docker
# backend can run step containers under it (DOCKER_RUNTIME=runsc). Merges into
# /etc/docker/daemon.json (keeping everything else) and reloads the daemon with SIGHUP, which
# re-reads `runtimes` without stopping running containers. Needs root.
#
#   scripts/docker-register-runsc.sh            # platform ptrace (works in VMs)
#   SECURECLAW_GVISOR_PLATFORM=systrap scripts/docker-register-runsc.sh
#
# `--network=none`: step containers have no network of their own (Docker's mode `none`), and
# runsc refuses to start one in the host's network namespace otherwise. `--oci-seccomp`: the
# container's seccomp profile (the backend's default-deny policy) is applied inside gVisor too.
set -euo pipefail

conf="${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}"
platform="${SECURECLAW_GVISOR_PLATFORM:-ptrace}"
runsc="$(command -v runsc)" || { echo "docker-register-runsc: runsc is not installed (apt-get install runsc)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "docker-register-runsc: needs python3" >&2; exit 1; }

mkdir -p "$(dirname "$conf")"
python3 - "$conf" "$runsc" "$platform" <<'PY'
import json, os, sys
path, runsc, platform = sys.argv[1:4]
conf = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
conf.setdefault("runtimes", {})["runsc"] = {
    "path": runsc,
    "runtimeArgs": [f"--platform={platform}", "--network=none", "--oci-seccomp"],
}
tmp = path + ".secureclaw-tmp"
with open(tmp, "w") as f:
    json.dump(conf, f, indent=2)
os.replace(tmp, path)
PY

pid="$(pidof dockerd || true)"
if [ -z "$pid" ]; then
  echo "docker-register-runsc: $conf updated; dockerd is not running (it reads the runtime when it starts)"
  exit 0
fi
kill -HUP $pid
for _ in $(seq 1 20); do
  runtimes="$(docker info --format '{{json .Runtimes}}' 2>/dev/null || true)"
  if [[ "$runtimes" == *'"runsc"'* ]]; then
    echo "docker-register-runsc: the daemon runs step containers under runsc --platform=$platform with DOCKER_RUNTIME=runsc"
    exit 0
  fi
  sleep 0.5
done
echo "docker-register-runsc: the daemon did not pick up the runtime (see its log)" >&2
exit 1
