"""Parse an mlx-lm LoRA folder (adapter_config.json and adapters.safetensors).

mlx-lm stores lora_a as (n_in, r) and lora_b as (r, n_out), the transposes of PEFT's A and B, and
applies `scale · x·a·b` with `scale` used as is (no division by the rank): so A = a.T, B = b.T and the
alpha llama.cpp divides by the rank is scale·r. DoRA and full fine-tunes are refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.llama.adapters.conversion import AdapterConversionError, LoraModule, TrainedLora
from engine.llama.adapters.peft import CONFIG_FILE, load_config
from engine.llama.adapters.safetensors_file import read_safetensors

WEIGHTS_FILE = "adapters.safetensors"
DEFAULT_SCALE = 20.0  # mlx-lm's default when the config gives none
_HALVES = {".lora_a": "a", ".lora_b": "b"}


def is_mlx_config(config: Mapping[str, Any]) -> bool:
    return "lora_parameters" in config or "fine_tune_type" in config


def parse_mlx(config_bytes: bytes, weights_bytes: bytes, where: str) -> TrainedLora:
    config = load_config(config_bytes, where)
    kind = config.get("fine_tune_type", "lora")
    if kind != "lora":
        what = "a DoRA adapter" if kind == "dora" else f"a {kind!r} fine-tune"
        raise AdapterConversionError(f"{where} is {what} (fine_tune_type), which llama.cpp cannot apply as a LoRA")
    params = config.get("lora_parameters") or {}
    if not isinstance(params, dict):
        raise AdapterConversionError(f"{where}: lora_parameters in {CONFIG_FILE} must be an object")
    scale = params.get("scale", DEFAULT_SCALE)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise AdapterConversionError(f"{where}: lora_parameters.scale must be a finite number, not {scale!r}")
    weights = read_safetensors(weights_bytes, f"{where}/{WEIGHTS_FILE}")
    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, value in weights.items():
        for suffix, half in _HALVES.items():
            if key.endswith(suffix):
                halves.setdefault(key.removesuffix(suffix), {})[half] = value
                break
        else:
            feature = (
                "a DoRA magnitude (DoRA adapters cannot be applied)" if key.endswith(".m") else "not a LoRA weight"
            )
            raise AdapterConversionError(f"{where}: {key} is {feature}; expected only .lora_a / .lora_b tensors")
    modules = []
    ranks = set()
    for module_key, pair in sorted(halves.items()):
        if set(pair) != {"a", "b"}:
            missing = "lora_b" if "a" in pair else "lora_a"
            raise AdapterConversionError(f"{where}: {module_key} has no {missing} to pair with its other half")
        a, b = pair["a"].T, pair["b"].T  # to PEFT's (r, n_in) and (n_out, r)
        rank = a.shape[0] if a.ndim == 2 else 0
        ranks.add(rank)
        modules.append(LoraModule(module_key, a, b, float(scale) * rank))
    rank = params.get("rank")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        rank = max(ranks, default=1)
    name = config.get("model")
    return TrainedLora(
        kind="mlx-lm",
        modules=modules,
        alpha=float(scale) * rank,
        base_model_name=name if isinstance(name, str) else None,
    )
