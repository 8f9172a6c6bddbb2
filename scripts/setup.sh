#!/usr/bin/env bash
# Install everything into the current Python environment (`make` picks it: an active venv/conda env, else
# a local .venv): Debian's Chromium (PNG export, browser tests), the exact package versions of
# requirements-lock.txt (PyTorch included, unless a torch is already installed: a CUDA build is kept),
# this package with its test extras, and the embedded default model, converted once into the user cache.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Debian's Chromium, and an emoji font so that the course's screenshots show its emoji (ratings also read as text)
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium chromium-driver fonts-dejavu-core)
if command -v dpkg >/dev/null 2>&1 && ! dpkg -s fonts-noto-color-emoji >/dev/null 2>&1; then need+=(fonts-noto-color-emoji); fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "note: missing Debian packages (chromium: PNG figures and browser tests; the emoji font: screenshots): sudo apt-get install ${need[*]}" >&2
  fi
fi

constraints=requirements-lock.txt
if "$PY" -c "import torch" 2>/dev/null; then  # keep the torch the user installed (e.g. a CUDA build)
  constraints=$(mktemp)
  trap 'rm -f "$constraints"' EXIT
  grep -v '^torch==' requirements-lock.txt > "$constraints"
fi
echo "installing the locked environment into $("$PY" -c 'import sys; print(sys.prefix)')"
"$PY" -m pip install -q -c "$constraints" -e ".[dev]"
"$PY" -m tv_utils prepare
