"""Write synthetic PEFT and mlx-lm adapter folders for the default model (numpy only, no torch).

The folders made by `peft` itself are in tests/fixtures/adapters (scripts/make_adapter_fixtures.py); these
are for the cases peft would not write: refusals, patterns, hostile files."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tests import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "adapters"
# SmolLM2-135M: hidden 576, 9 query heads and 3 kv heads of 64, feed-forward 1536
SHAPES = {  # module → (n_out, n_in)
    "self_attn.q_proj": (576, 576),
    "self_attn.k_proj": (192, 576),
    "self_attn.v_proj": (192, 576),
    "self_attn.o_proj": (576, 576),
    "mlp.gate_proj": (1536, 576),
    "mlp.up_proj": (1536, 576),
    "mlp.down_proj": (576, 1536),
}


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray], *, bf16: bool = False) -> None:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, array in tensors.items():
        a = np.ascontiguousarray(array, dtype=np.float32)
        raw = (a.view(np.uint32) >> 16).astype("<u2").tobytes() if bf16 else a.astype("<f4").tobytes()
        header[name] = {
            "dtype": "BF16" if bf16 else "F32",
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def peft_tensors(
    *, rank: int = 4, layers: tuple[int, ...] = (0, 5), modules: tuple[str, ...] = tuple(SHAPES), seed: int = 0,
    strength: float = 0.05,
) -> dict[str, np.ndarray]:  # fmt: skip
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in layers:
        for module in modules:
            n_out, n_in = SHAPES[module]
            key = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{key}.lora_A.weight"] = rng.normal(0, strength, (rank, n_in)).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.normal(0, strength, (n_out, rank)).astype(np.float32)
    return tensors


def peft_config(**overrides: Any) -> dict[str, Any]:
    config = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "use_rslora": False,
        "use_dora": False,
        "bias": "none",
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "task_type": "CAUSAL_LM",
    }
    config.update(overrides)
    return config


def write_peft_folder(
    folder: Path, *, config: dict[str, Any] | None = None, tensors: dict[str, np.ndarray] | None = None,
    bf16: bool = True,
) -> Path:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config or peft_config()))
    write_safetensors(folder / "adapter_model.safetensors", peft_tensors() if tensors is None else tensors, bf16=bf16)
    return folder


def write_mlx_folder(
    folder: Path, *, scale: float = 2.0, rank: int = 4, fine_tune_type: str = "lora", extra: dict | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        k.removeprefix("base_model.model.")
        .replace(".lora_A.weight", ".lora_a")
        .replace(".lora_B.weight", ".lora_b"): v.T
        for k, v in peft_tensors(rank=rank).items()
    }
    tensors.update(extra or {})
    config = {
        "fine_tune_type": fine_tune_type,
        "num_layers": 30,
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0},
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    write_safetensors(folder / "adapters.safetensors", tensors)
    return folder
