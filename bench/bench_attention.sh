#!/usr/bin/env bash
# The flash-attention node alone (bench/attention_node.cpp): loramux's batch-invariant kernel against
# stock llama.cpp's choice of path, in one process, on the patched llama.cpp tree the wheel is built
# from. Builds ggml there once (~3 minutes on 2 cores), writes bench/results/attention_node.md.
#
#   bash bench/bench_attention.sh [threads (default: all cores)] [rounds (default 7)]
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(bash scripts/llama_source.sh)/vendor/llama.cpp
BUILD="$SRC/build-attention"
cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_LLAMAFILE=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
if ! cmake --build "$BUILD" -j"$(nproc)" --target ggml ggml-cpu >"$BUILD/loramux-build.log" 2>&1; then
  tail -40 "$BUILD/loramux-build.log" >&2
  exit 1
fi
c++ -O2 -std=c++17 bench/attention_node.cpp -I"$SRC/ggml/include" -L"$BUILD/bin" -lggml -lggml-base -lggml-cpu \
  -Wl,-rpath,"$BUILD/bin" -o "$BUILD/attention_node"
THREADS=${1:-$(nproc)}
OUT=bench/results/attention_node.md
{
  echo "# The flash-attention node alone: batch-invariant vs stock llama.cpp's path"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -m), $(nproc) cores, $THREADS threads, \`bash bench/bench_attention.sh\`."
  echo "SmolLM2-135M's shape (head size 64, 9 query heads over 3 KV heads, F16 K and V as llama.cpp's cache"
  echo "lays them out, causal F16 mask), one \`GGML_OP_FLASH_ATTN_EXT\` node computed by ggml's CPU backend from"
  echo "loramux's patched tree. *Stock's path* is what unpatched llama.cpp takes for the node (one-row for fewer"
  echo "than 64 rows of a sequence, tiled for 64+, split-KV for one row over 512+ cells); *batch-invariant* is"
  echo "loramux's mode (every row on the tiled path, a row's result the same in any batch). Microseconds per"
  echo "node (median of ${2:-7} alternating rounds); ratio = median of per-round stock / invariant (above 1: loramux's"
  echo "mode is faster). A decoding token runs this node once per layer (30 layers)."
  echo
  "$BUILD/attention_node" "$THREADS" "${2:-7}"
} >"$OUT"
cat "$OUT"
