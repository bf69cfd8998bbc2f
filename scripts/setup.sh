#!/usr/bin/env bash
# Create .venv and install loramux with its test tools. Idempotent: re-installs only when
# pyproject.toml changed. The first run compiles llama-cpp-python (~10 min on 2 cores; pip caches it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "loramux needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.loramux-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv (the first time compiles llama.cpp: about 10 minutes)..." >&2
  .venv/bin/python -m pip install --quiet --upgrade pip >&2
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) .venv/bin/python -m pip install --quiet -e '.[test]' >&2
  echo "$want" > "$stamp"
fi
