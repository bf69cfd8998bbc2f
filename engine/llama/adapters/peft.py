"""Parse a PEFT LoRA folder (Hugging Face PEFT, Unsloth, axolotl): adapter_config.json and
adapter_model.safetensors, into the modules and scales PEFT applies.

PEFT's scale is lora_alpha / r, or lora_alpha / √r with use_rslora; rank_pattern / alpha_pattern
override r and alpha per module. (llama.cpp's own converter ignores use_rslora and so applies alpha / r
to rsLoRA adapters; vLLM and SGLang had the same bug.) What llama.cpp cannot apply is refused by name:
DoRA, trained biases, full copies of modules (modules_to_save), trainable tokens.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.llama.adapters.conversion import AdapterConversionError, LoraModule, TrainedLora
from engine.llama.adapters.safetensors_file import read_safetensors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
_PREFIX = "base_model.model."
_HALVES = {".lora_A.weight": "a", ".lora_B.weight": "b"}


def is_peft_config(config: Mapping[str, Any]) -> bool:
    return "peft_type" in config


def parse_peft(config_bytes: bytes, weights_bytes: bytes, where: str) -> TrainedLora:
    config = load_config(config_bytes, where)
    _refuse_unsupported(config, where)
    weights = read_safetensors(weights_bytes, f"{where}/{WEIGHTS_FILE}")
    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, value in weights.items():
        short = key.removeprefix(_PREFIX)
        for suffix, half in _HALVES.items():
            if short.endswith(suffix):
                halves.setdefault(short.removesuffix(suffix), {})[half] = value
                break
        else:
            raise AdapterConversionError(f"{where}: {_what_tensor_is(key)}")
    r = _positive(config.get("r", 8), "r", where)
    lora_alpha = _finite(config.get("lora_alpha", 8), "lora_alpha", where)
    rslora = bool(config.get("use_rslora", False))
    rank_pattern = _pattern(config, "rank_pattern", where)
    alpha_pattern = _pattern(config, "alpha_pattern", where)
    modules = []
    for module_key, pair in sorted(halves.items()):
        if set(pair) != {"a", "b"}:
            missing = "lora_B" if "a" in pair else "lora_A"
            raise AdapterConversionError(f"{where}: {module_key} has no {missing} to pair with its other half")
        rank = pair["a"].shape[0] if pair["a"].ndim == 2 else r
        expected_rank = rank_pattern.get(_pattern_key(rank_pattern, module_key), r)
        if rank != expected_rank:
            raise AdapterConversionError(
                f"{where}: {module_key} has rank {rank} but adapter_config.json says {expected_rank} (r / rank_pattern)"
            )
        alpha = alpha_pattern.get(_pattern_key(alpha_pattern, module_key), lora_alpha)
        modules.append(LoraModule(module_key, pair["a"], pair["b"], _effective_alpha(alpha, rank, rslora)))
    base_name = config.get("base_model_name_or_path")
    return TrainedLora(
        kind="PEFT",
        modules=modules,
        alpha=_effective_alpha(lora_alpha, r, rslora),
        base_model_name=base_name if isinstance(base_name, str) else None,
    )


def load_config(data: bytes, where: str) -> dict[str, Any]:
    try:
        config = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise AdapterConversionError(f"{where}/{CONFIG_FILE} is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(config, dict):
        raise AdapterConversionError(f"{where}/{CONFIG_FILE} is not a JSON object")
    return config


def _effective_alpha(alpha: float, rank: int, rslora: bool) -> float:
    """The alpha llama.cpp must divide by the rank to apply PEFT's scale: alpha, or alpha·√r for rsLoRA."""
    return alpha * math.sqrt(rank) if rslora else float(alpha)


def _refuse_unsupported(config: Mapping[str, Any], where: str) -> None:
    kind = config.get("peft_type")
    if kind != "LORA":
        raise AdapterConversionError(f"{where} is a PEFT {kind!r} adapter; only LoRA adapters can be served")
    if config.get("use_dora"):
        raise AdapterConversionError(
            f"{where} is a DoRA adapter (use_dora), which llama.cpp cannot apply; merge it into the model or "
            "train a plain LoRA"
        )
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise AdapterConversionError(
            f"{where} trains biases (bias={config.get('bias')!r}, lora_bias={config.get('lora_bias')!r}); "
            "llama.cpp LoRA adapters hold no biases: train with bias='none'"
        )
    if config.get("modules_to_save"):
        raise AdapterConversionError(
            f"{where} saves full copies of modules (modules_to_save: {config['modules_to_save']!r}), which a "
            "LoRA adapter cannot carry in llama.cpp; train without modules_to_save or merge the adapter"
        )
    if config.get("trainable_token_indices"):
        raise AdapterConversionError(
            f"{where} trains token embeddings (trainable_token_indices), which llama.cpp LoRA adapters cannot hold"
        )
    if config.get("layer_replication"):
        raise AdapterConversionError(f"{where} replicates layers (layer_replication), which llama.cpp cannot apply")
    targets = config.get("target_modules")
    names = [targets] if isinstance(targets, str) else targets if isinstance(targets, list) else []
    embedded = [t for t in names if isinstance(t, str) and t in ("embed_tokens", "lm_head", "wte", "embed_out")]
    if embedded:
        raise AdapterConversionError(
            f"{where} adapts the embeddings or the output layer (target_modules {embedded}); llama.cpp applies "
            "LoRA to the attention and feed-forward weights only"
        )


def _what_tensor_is(key: str) -> str:
    """A refusal for a tensor that is not a plain lora_A / lora_B weight, naming the feature it belongs to."""
    if "lora_magnitude_vector" in key:
        return f"{key} is a DoRA magnitude vector: DoRA adapters cannot be applied by llama.cpp"
    if "modules_to_save" in key:
        return f"{key} is a full module copy (modules_to_save), which a llama.cpp LoRA adapter cannot carry"
    if "lora_embedding" in key or "trainable_tokens" in key:
        return f"{key} adapts the token embeddings, which llama.cpp LoRA adapters cannot hold"
    if key.endswith(".bias"):
        return f"{key} is a trained bias, which llama.cpp LoRA adapters cannot hold"
    return f"{key} is not a LoRA weight (lora_A / lora_B); the folder is not a plain LoRA adapter"


def _pattern(config: Mapping[str, Any], field: str, where: str) -> dict[str, float]:
    value = config.get(field) or {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) for k, v in value.items()
    ):
        raise AdapterConversionError(f"{where}: {field} in {CONFIG_FILE} must map module names to numbers")
    return value


def _pattern_key(patterns: Mapping[str, float], module_key: str) -> str | None:
    """PEFT's own matching: a pattern applies to a module whose name ends with it (as a regex)."""
    for pattern in patterns:
        try:
            if re.match(rf"(.*\.)?({pattern})$", module_key):
                return pattern
        except re.error:
            continue
    return None


def _positive(value: object, field: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AdapterConversionError(f"{where}: {field} in {CONFIG_FILE} must be a positive integer, not {value!r}")
    return value


def _finite(value: object, field: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AdapterConversionError(f"{where}: {field} in {CONFIG_FILE} must be a finite number, not {value!r}")
    return float(value)
