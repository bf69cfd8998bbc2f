#!/usr/bin/env bash
# Set up, then serve the embedded default model over streamable HTTP (default http://127.0.0.1:8000/mcp).
# Extra arguments go to `loramux` (e.g. --port 9000, --model other.gguf).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/loramux --http "$@"
