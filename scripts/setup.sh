#!/usr/bin/env bash
# Install everything on a fresh Debian machine (Python 3.11+): Debian's Chromium (PNG export, browser
# tests), PyTorch (CPU build unless one is already installed), this package with its test extras, and
# the embedded default model, converted once into the user cache.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-dejavu-core >/dev/null
  else
    echo "note: Debian's chromium is not installed (needed for PNG figures and browser tests): sudo apt-get install chromium chromium-driver" >&2
  fi
fi

# A torch already present (CUDA or CPU) is kept; otherwise pin the release whose CPU build this machine has.
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -e ".[dev]"
"$PY" -m tv_utils prepare
