#!/usr/bin/env bash
# Builds secureclaw-postgres:TAG, a PostgreSQL 15 server image, with no registry: nothing is
# pulled, nothing is downloaded. The image is FROM scratch (docker/Dockerfile.postgres) and holds
# the host's PostgreSQL 15 programs (postgres, initdb, pg_ctl, pg_isready, psql), its modules and
# share files, the system time zone data, the shared libraries `ldd` names for all of them,
# Debian's static busybox (the shell the entrypoint and popen() need) and an entrypoint that
# creates the cluster on the first start. It runs as uid 70 (postgres), keeps its data in the
# volume /var/lib/postgresql/data and listens on 0.0.0.0:5432.
#
#   scripts/build-postgres-image.sh                # secureclaw-postgres:15
#   scripts/build-postgres-image.sh --tag test
#
# Without a Docker daemon it prints one SKIPPED line and exits 0. Needs the Debian packages
# postgresql (version 15) and busybox-static, and ldd.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=15
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) TAG="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "build-postgres-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if ! docker info >/dev/null 2>&1; then
  echo "== secureclaw-postgres image SKIPPED: no Docker daemon on this machine"
  exit 0
fi

PGBIN=/usr/lib/postgresql/15/bin
PGLIB=/usr/lib/postgresql/15/lib
PGSHARE=/usr/share/postgresql/15
ZONEINFO=/usr/share/zoneinfo
PROGRAMS="postgres initdb pg_ctl pg_isready psql"
for program in $PROGRAMS; do
  [ -x "$PGBIN/$program" ] || {
    echo "build-postgres-image.sh: no $PGBIN/$program (apt-get install postgresql, version 15)" >&2
    exit 1
  }
done
[ -f "$PGSHARE/postgres.bki" ] || { echo "build-postgres-image.sh: no $PGSHARE (apt-get install postgresql)" >&2; exit 1; }
[ -f "$ZONEINFO/UTC" ] || { echo "build-postgres-image.sh: no time zone data at $ZONEINFO (apt-get install tzdata)" >&2; exit 1; }
BUSYBOX=/bin/busybox
# `ldd` fails on a static program: the image's libc is there for PostgreSQL, not for busybox.
if [ ! -x "$BUSYBOX" ] || ldd "$BUSYBOX" >/dev/null 2>&1; then
  echo "build-postgres-image.sh: $BUSYBOX must be Debian's static busybox (apt-get install busybox-static)" >&2
  exit 1
fi
PG_VERSION=$("$PGBIN/postgres" -V | awk '{print $3}')
case "$PG_VERSION" in 15.*) ;; *) echo "build-postgres-image.sh: $PGBIN/postgres is version $PG_VERSION, not 15" >&2; exit 1 ;; esac
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then REVISION="$REVISION-dirty"; fi

CONTEXT=$(mktemp -d)
trap 'rm -rf "$CONTEXT"' EXIT
ROOT="$CONTEXT/rootfs"
# run/ and data/ become /var/run/postgresql and the data volume, owned by uid 70 (COPY --chown).
mkdir -p "$ROOT"/{bin,etc,tmp,usr/local/bin,usr/share,var/lib/postgresql} "$ROOT$PGBIN" "$ROOT$PGLIB" \
  "$CONTEXT/run" "$CONTEXT/data"
chmod 1777 "$ROOT/tmp"
# PostgreSQL refuses a data directory other users can read; initdb also sets 0700 itself.
chmod 0700 "$CONTEXT/data"

# The programs, and every module but the JIT provider: llvmjit.so needs LLVM (~100 MB) and its
# bitcode; the image turns jit off instead. The modules are dlopen()ed, so `ldd` on the programs
# alone would miss what they need (libxml2 for pgxml, libuuid for uuid-ossp, ...).
objects=()
for program in $PROGRAMS; do
  cp "$PGBIN/$program" "$ROOT$PGBIN/$program"
  objects+=("$PGBIN/$program")
done
for module in "$PGLIB"/*.so; do
  case "$(basename "$module")" in llvmjit*) continue ;; esac
  cp "$module" "$ROOT$module"
  objects+=("$module")
done

# The library closure, each at the path the loader looks for it.
for object in "${objects[@]}"; do
  ldd "$object" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }'
done | sort -u | while read -r lib; do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
done
# On merged-/usr hosts `ldd` names /lib/...; the loader path must also exist as named in the ELF.
interp=$(readelf -l "$PGBIN/postgres" 2>/dev/null | sed -n 's/.*interpreter: \(.*\)]/\1/p')
if [ -n "$interp" ] && [ ! -e "$ROOT$interp" ]; then
  mkdir -p "$ROOT$(dirname "$interp")"
  cp -L "$interp" "$ROOT$interp"
fi

# Share files: postgres.bki and the SQL initdb runs, the timezonesets postgres reads at every
# start (timezone_abbreviations = 'Default'), tsearch_data, extensions. Not the man pages.
mkdir -p "$ROOT$PGSHARE"
for entry in "$PGSHARE"/*; do
  [ "$(basename "$entry")" = man ] && continue
  cp -a "$entry" "$ROOT$PGSHARE/"
done
# Debian builds PostgreSQL with the system time zone data: initdb looks there for the zone it
# writes into postgresql.conf, and `SET TIME ZONE 'Europe/Paris'` or pg_timezone_names read it.
# `localtime` is a link to the host's /etc/localtime; the image uses TZ=UTC.
cp -a "$ZONEINFO" "$ROOT/usr/share/zoneinfo"
rm -f "$ROOT/usr/share/zoneinfo/localtime"

# A shell: the entrypoint is a script, and initdb starts postgres (and `locale -a`) via popen().
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] && continue
  ln -sf busybox "$ROOT/bin/$applet"
done
# initdb and psql look the running uid up (getpwuid); glibc reads these files itself.
cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/nonexistent:/sbin/nologin
postgres:x:70:70:PostgreSQL:/var/lib/postgresql:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
postgres:x:70:
nogroup:x:65534:
EOF
# Containers reach each other by name through Docker's DNS.
echo "hosts: files dns" >"$ROOT/etc/nsswitch.conf"

# The entrypoint. On an empty data directory it creates the cluster: superuser `secureclaw`
# whose password is the first line of $POSTGRES_PASSWORD_FILE, scram-sha-256 for every
# connection, database `secureclaw`. Then it execs postgres (pid 1) with any arguments given
# (e.g. `-c max_connections=200`), so `docker stop` reaches postgres itself.
cat >"$ROOT/usr/local/bin/postgres-entrypoint" <<'EOF'
#!/bin/sh
set -eu
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
die() { echo "postgres-entrypoint: $*" >&2; exit 1; }

# A password in the environment shows in `docker inspect` and in every child process.
[ -z "${POSTGRES_PASSWORD:-}" ] || die "POSTGRES_PASSWORD is not read: put the password in a file and name it in POSTGRES_PASSWORD_FILE"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile="${POSTGRES_PASSWORD_FILE:-}"
  [ -n "$pwfile" ] || die "the data directory is empty and POSTGRES_PASSWORD_FILE is not set"
  [ -r "$pwfile" ] || die "cannot read $pwfile as uid $(id -u): mount it readable by uid 70"
  head -n 1 "$pwfile" | grep -q . || die "the first line of $pwfile (the password) is empty"
  [ -w "$PGDATA" ] || die "$PGDATA is not writable by uid $(id -u)"
  echo "postgres-entrypoint: empty data directory, creating the cluster"
  # C locale: no locale files needed, and byte-order collation that never changes under an index.
  # initdb runs `locale -a` to import the system's libc locales; the image has none, so its
  # output shows "sh: locale: not found" and "no usable system locales were found". Harmless:
  # the C and POSIX collations are built in and the ICU ones (libicu is in the image) imported.
  initdb --pgdata="$PGDATA" --username=secureclaw --pwfile="$pwfile" \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
    --locale=C --encoding=UTF8 --no-instructions
  cat >>"$PGDATA/postgresql.conf" <<'CONF'

# secureclaw-postgres
listen_addresses = '*'
port = 5432
unix_socket_directories = '/var/run/postgresql'
# The JIT provider (llvmjit, with LLVM) is not in the image.
jit = off
CONF
  # initdb allows host connections from loopback only; containers connect over the network.
  cat >>"$PGDATA/pg_hba.conf" <<'HBA'

# secureclaw-postgres: any address, with the password
host    all             all             0.0.0.0/0               scram-sha-256
host    all             all             ::/0                    scram-sha-256
HBA
  # Single-user mode: no server listens while the cluster is only half made, and no password
  # has to pass through a client. It exits 0 even when a command fails, hence the grep.
  out=$(echo "CREATE DATABASE secureclaw OWNER secureclaw;" | postgres --single -D "$PGDATA" postgres 2>&1) || true
  if echo "$out" | grep -qE 'ERROR|FATAL|PANIC'; then
    echo "$out" >&2
    # Leave the directory empty so that the next start tries again from scratch.
    find "$PGDATA" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
    die "could not create the database secureclaw"
  fi
  echo "postgres-entrypoint: cluster ready (user secureclaw, database secureclaw)"
else
  echo "postgres-entrypoint: existing cluster in $PGDATA (PostgreSQL $(cat "$PGDATA/PG_VERSION"))"
fi
exec postgres -D "$PGDATA" "$@"
EOF
chmod 0755 "$ROOT/usr/local/bin/postgres-entrypoint"
# No setuid or setgid file in the image (copies are made without those modes; links have none).
cp docker/Dockerfile.postgres "$CONTEXT/Dockerfile"

echo "== docker build secureclaw-postgres:$TAG (PostgreSQL $PG_VERSION, no network, FROM scratch)"
start=$SECONDS
docker build --network none --pull=false -q \
  --build-arg "PG_VERSION=$PG_VERSION" --build-arg "REVISION=$REVISION" \
  -t "secureclaw-postgres:$TAG" "$CONTEXT"
echo "== secureclaw-postgres:$TAG built in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "secureclaw-postgres:$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
