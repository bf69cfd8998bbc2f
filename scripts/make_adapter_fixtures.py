"""Make the PEFT / mlx-lm adapter fixtures in tests/fixtures/adapters/ and their llama.cpp references.

Run once by hand, not in CI (it needs torch, transformers and peft, which loramux does not):

    python -m venv /tmp/fixvenv
    /tmp/fixvenv/bin/pip install torch==2.13.0 transformers==4.57.6 peft==0.21.0 safetensors gguf==0.19.0
    /tmp/fixvenv/bin/python scripts/make_adapter_fixtures.py LLAMA_CPP_DIR

LLAMA_CPP_DIR is the llama.cpp of the llama-cpp-python sdist loramux builds (its vendor/llama.cpp), whose
convert_lora_to_gguf.py writes the reference GGUFs:

    python LLAMA_CPP_DIR/convert_lora_to_gguf.py --base tests/fixtures/adapters/base_config --outtype f32 \
        --outfile tests/fixtures/adapters/reference/NAME.gguf FOLDER

What it makes (random non-zero init, rank 8, alpha 16, q/k/v/o/gate/up/down of four layers, saved in bf16):
- peft_lora/: a plain PEFT LoRA folder; reference/peft_lora.gguf is the converter's output for it.
- peft_rslora/: an rsLoRA folder (use_rslora). llama.cpp's converter ignores use_rslora, so its reference
  (reference/peft_rslora.gguf) is the converter's output for the same folder with lora_alpha = 16·√8 and
  use_rslora false: the scale PEFT applies.
- mlx_lora/: an mlx-lm folder holding peft_lora's weights transposed, scale = alpha / r = 2: its twin is
  peft_lora, so reference/peft_lora.gguf is its reference too.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "adapters"
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYERS = [0, 1, 15, 29]
RANK, ALPHA = 8, 16
BASE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"

# SmolLM2-135M-Instruct's HF config (what its GGUF's metadata says): the converter's --base needs only this.
BASE_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-05,
    "rope_theta": 100000,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
}


def peft_folder(folder: Path, *, seed: int, rslora: bool) -> None:
    torch.manual_seed(seed)
    base = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in BASE_CONFIG.items() if k != "architectures"}))
    base.name_or_path = BASE_NAME  # what peft writes as base_model_name_or_path
    config = LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        target_modules=MODULES,
        layers_to_transform=LAYERS,
        init_lora_weights=False,  # random A and B: a zero B would make every test pass trivially
        use_rslora=rslora,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.1)  # perturb the model's text without turning it into noise
    model.save_pretrained(folder)
    weights = load_file(folder / "adapter_model.safetensors")
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}, folder / "adapter_model.safetensors")


def mlx_twin(peft: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    weights = load_file(peft / "adapter_model.safetensors")
    mlx = {}
    for key, value in weights.items():
        short = key.removeprefix("base_model.model.")
        short = short.replace(".lora_A.weight", ".lora_a").replace(".lora_B.weight", ".lora_b")
        mlx[short] = value.T.contiguous()  # mlx-lm: a is (in, r), b is (r, out)
    save_file(mlx, folder / "adapters.safetensors")
    config = {
        "fine_tune_type": "lora",
        "num_layers": 30,
        "lora_parameters": {"rank": RANK, "scale": ALPHA / RANK, "dropout": 0.0, "keys": MODULES},
        "model": BASE_NAME,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))


def convert(llama_cpp: Path, folder: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            str(llama_cpp / "convert_lora_to_gguf.py"),
            "--base",
            str(OUT / "base_config"),
            "--outtype",
            "f32",
            "--outfile",
            str(out),
            str(folder),
        ],
        check=True,
    )


def main() -> None:
    llama_cpp = Path(sys.argv[1])
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "base_config").mkdir(parents=True)
    (OUT / "base_config" / "config.json").write_text(json.dumps(BASE_CONFIG, indent=2))
    peft_folder(OUT / "peft_lora", seed=1, rslora=False)
    peft_folder(OUT / "peft_rslora", seed=2, rslora=True)
    mlx_twin(OUT / "peft_lora", OUT / "mlx_lora")
    convert(llama_cpp, OUT / "peft_lora", OUT / "reference" / "peft_lora.gguf")
    with tempfile.TemporaryDirectory() as tmp:  # the converter ignores use_rslora: give it alpha·√r
        plain = Path(tmp) / "peft_rslora_as_plain"
        shutil.copytree(OUT / "peft_rslora", plain)
        config = json.loads((plain / "adapter_config.json").read_text())
        config["lora_alpha"] = ALPHA * math.sqrt(RANK)
        config["use_rslora"] = False
        (plain / "adapter_config.json").write_text(json.dumps(config, indent=2))
        convert(llama_cpp, plain, OUT / "reference" / "peft_rslora.gguf")


if __name__ == "__main__":
    main()
