#!/usr/bin/env bash
# Print the path of llama-cpp-python's source with loramux's llama.cpp patches applied
# (scripts/llama_cpp_patches/*.patch), or with --stock as released. The sdist comes from PyPI once;
# trees are kept under ~/.cache/loramux/src, one per version and patch set (and one stock). setup.sh builds the Python wheel from it and
# build_llama_server.sh the benchmark's llama-server, so both run the same llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_VERSION=${LLAMA_VERSION:-0.3.36}
PYTHON=${PYTHON:-python3}
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/loramux/src"
if [ "${1:-}" = "--stock" ]; then  # the sources as released, unpatched (build_llama_server.sh's anchor)
  TREE="$CACHE/llama_cpp_python-$LLAMA_VERSION-stock"
  MARK=.loramux-stock
else
  PATCHES=$(cat scripts/llama_cpp_patches/*.patch | sha256sum | cut -c1-12)
  TREE="$CACHE/llama_cpp_python-$LLAMA_VERSION-$PATCHES"
  MARK=.loramux-patched
fi
if [ ! -f "$TREE/$MARK" ]; then
  mkdir -p "$CACHE"
  SDIST="$CACHE/llama_cpp_python-$LLAMA_VERSION.tar.gz"
  [ -f "$SDIST" ] || "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
    "llama-cpp-python==$LLAMA_VERSION" -d "$CACHE" >&2
  rm -rf "$TREE" "$TREE.tmp" && mkdir -p "$TREE.tmp"
  tar xzf "$SDIST" -C "$TREE.tmp" --strip-components=1
  if [ "$MARK" = .loramux-patched ]; then
    for p in scripts/llama_cpp_patches/*.patch; do
      patch -p1 --quiet --forward -d "$TREE.tmp/vendor/llama.cpp" < "$p" >&2
    done
  fi
  touch "$TREE.tmp/$MARK"
  mv "$TREE.tmp" "$TREE"
fi
echo "$TREE"
