#!/usr/bin/env bash
# Build llama-server from the llama.cpp that loramux runs (llama-cpp-python's vendored copy with
# loramux's patches, scripts/llama_source.sh; same cmake flags as scripts/setup.sh), for side-by-side
# benchmarks (bench/bench_openai.py). The patches add an API llama-server does not call. ~10 minutes
# on 2 cores, once; the binary is kept in the source tree under ~/.cache/loramux/src.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_VERSION=0.3.36
LLAMA_CMAKE_ARGS=${LORAMUX_LLAMA_CMAKE_ARGS:-"-DGGML_LLAMAFILE=OFF"}
SRC=$(LLAMA_VERSION=$LLAMA_VERSION bash scripts/llama_source.sh)
cd "$SRC/vendor/llama.cpp"
# shellcheck disable=SC2086  # the cmake arguments are a list
cmake -B build $LLAMA_CMAKE_ARGS -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON >/dev/null
cmake --build build -j"$(nproc)" --target llama-server >/dev/null
echo "$SRC/vendor/llama.cpp/build/bin/llama-server"
