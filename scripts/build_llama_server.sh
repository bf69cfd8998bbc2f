#!/usr/bin/env bash
# Build llama-server from the llama.cpp release that loramux runs (llama-cpp-python 0.3.36's vendored
# copy), for side-by-side benchmarks (bench/bench_openai.py). Prints the binary's path.
#
#   bash scripts/build_llama_server.sh            # stock: unpatched sources, llama.cpp's default cmake
#                                                 # flags (llamafile's sgemm on, flash attention auto):
#                                                 # the llama-server people install. The anchor.
#   bash scripts/build_llama_server.sh --patched  # loramux's patched tree and its flags
#                                                 # (GGML_LLAMAFILE=OFF), as the wheel is built
#
# llama-batched-bench (kernels alone, no server) is built beside it. ~10 minutes on 2 cores each, once;
# binaries stay in their source trees under ~/.cache/loramux/src.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_VERSION=0.3.36
case "${1:-}" in
  --patched)
    SRC=$(LLAMA_VERSION=$LLAMA_VERSION bash scripts/llama_source.sh)
    CMAKE_ARGS=${LORAMUX_LLAMA_CMAKE_ARGS:-"-DGGML_LLAMAFILE=OFF"}
    ;;
  "" | --stock)
    SRC=$(LLAMA_VERSION=$LLAMA_VERSION bash scripts/llama_source.sh --stock)
    CMAKE_ARGS=""
    ;;
  *)
    echo "usage: $0 [--stock | --patched]" >&2
    exit 2
    ;;
esac
cd "$SRC/vendor/llama.cpp"
# shellcheck disable=SC2086  # the cmake arguments are a list
cmake -B build $CMAKE_ARGS -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON >/dev/null
# the compiler's warnings fill screens: kept in a log, shown only when the build fails
if ! cmake --build build -j"$(nproc)" --target llama-server llama-batched-bench >build/loramux-build.log 2>&1; then
  tail -40 build/loramux-build.log >&2
  exit 1
fi
echo "$SRC/vendor/llama.cpp/build/bin/llama-server"
