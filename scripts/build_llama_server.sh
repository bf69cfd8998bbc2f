#!/usr/bin/env bash
# Build llama-server from the llama.cpp that llama-cpp-python vendors (same version and cmake flags as
# scripts/setup.sh), for side-by-side benchmarks (bench/bench_openai.py). ~10 minutes on 2 cores, once;
# the binary is kept under ~/.cache/loramux/llama-server.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_VERSION=0.3.36
LLAMA_CMAKE_ARGS=${LORAMUX_LLAMA_CMAKE_ARGS:-"-DGGML_LLAMAFILE=OFF"}
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/loramux/llama-server"
mkdir -p "$DIR" && cd "$DIR"
[ -f "llama_cpp_python-$LLAMA_VERSION.tar.gz" ] || python3 -m pip download --quiet --no-deps --no-binary :all: \
  "llama-cpp-python==$LLAMA_VERSION" -d .
[ -d "llama_cpp_python-$LLAMA_VERSION" ] || tar xzf "llama_cpp_python-$LLAMA_VERSION.tar.gz"
cd "llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp"
# shellcheck disable=SC2086  # the cmake arguments are a list
cmake -B build $LLAMA_CMAKE_ARGS -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON >/dev/null
cmake --build build -j"$(nproc)" --target llama-server >/dev/null
echo "$DIR/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp/build/bin/llama-server"
