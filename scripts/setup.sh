#!/usr/bin/env bash
# Create .venv and install loramux with its test tools. Idempotent: re-installs only when
# pyproject.toml, this script or the llama.cpp patches changed. The first run compiles llama-cpp-python
# with loramux's llama.cpp patches (scripts/llama_cpp_patches: adapter sets per sequence, exact flash
# attention on the CPU, greedy steps in one call), ~12 min on 2 cores; the wheel is kept in
# ~/.cache/loramux, so later set-ups and fresh clones reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "loramux needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

# llama.cpp without llamafile's sgemm: it takes over f32/f16 matmuls only for batches of 2+ tokens,
# with another summation order than ggml's kernels, so a LoRA request's output would depend on
# whether others shared its step. Without it, outputs are the same alone and batched. Decoding runs
# one token per sequence, which sgemm never handled anyway.
LLAMA_VERSION=0.3.36
# Override for a GPU build, e.g. LORAMUX_LLAMA_CMAKE_ARGS="-DGGML_LLAMAFILE=OFF -DGGML_CUDA=on" (README: GPU offload).
LLAMA_CMAKE_ARGS=${LORAMUX_LLAMA_CMAKE_ARGS:-"-DGGML_LLAMAFILE=OFF"}
BUILD_KEY=$( (echo "$LLAMA_CMAKE_ARGS"; cat scripts/llama_cpp_patches/*.patch) | sha256sum | cut -c1-12)
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/loramux/wheels/llama-cpp-python-$LLAMA_VERSION-$BUILD_KEY"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.loramux-installed
want=$( (cat pyproject.toml scripts/setup.sh; echo "$BUILD_KEY") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >&2
  if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $LLAMA_VERSION with loramux's patches (about 12 minutes on 2 cores, once)..." >&2
    SRC=$(LLAMA_VERSION=$LLAMA_VERSION PYTHON=.venv/bin/python bash scripts/llama_source.sh)
    mkdir -p "$WHEELS"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) .venv/bin/python -m pip wheel \
      --quiet --no-cache-dir --no-deps "$SRC" -w "$WHEELS" >&2
  fi
  .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-*.whl >&2
  .venv/bin/python -m pip install --quiet -e '.[test]' >&2
  echo "$want" > "$stamp"
fi
