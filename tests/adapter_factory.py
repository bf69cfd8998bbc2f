"""Write synthetic LoRA adapter GGUFs for the default model with the `gguf` package (numpy only)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFWriter

from engine.default_model import default_model_path

TARGETS = ("attn_v", "attn_output", "ffn_down")


@functools.cache
def base_shapes() -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(int(x) for x in t.shape) for t in GGUFReader(default_model_path()).tensors}


def write_lora(
    path: Path,
    *,
    rank: int = 8,
    alpha: float = 16.0,
    strength: float = 0.05,
    seed: int = 0,
    targets: tuple[str, ...] = TARGETS,
    layers: range = range(30),
    arch: str = "llama",
    general_type: str = "adapter",
    adapter_type: str = "lora",
    wrong_shape: bool = False,
    unknown_tensor: bool = False,
    missing_b: bool = False,
    dtype: type = np.float16,
) -> Path:
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), arch)
    w.add_string("general.type", general_type)
    w.add_string("adapter.type", adapter_type)
    w.add_float32("adapter.lora.alpha", alpha)
    for layer in layers:
        for target in targets:
            name = f"blk.{layer}.{target}.weight"
            n_in, n_out = base_shapes()[name]
            if wrong_shape:
                n_in += 1
            a = (rng.standard_normal((rank, n_in)) * strength).astype(dtype)  # numpy (r, n_in)
            b = (rng.standard_normal((n_out, rank)) * strength).astype(dtype)  # numpy (n_out, r)
            w.add_tensor(f"{name}.lora_a", a)
            if not missing_b:
                w.add_tensor(f"{name}.lora_b", b)
    if unknown_tensor:
        w.add_tensor("blk.99.attn_v.weight.lora_a", np.zeros((rank, 576), np.float32))
        w.add_tensor("blk.99.attn_v.weight.lora_b", np.zeros((192, rank), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def slow_adapter_reads(monkeypatch: Any, seconds: float = 1.5) -> None:
    """Every adapter file read takes `seconds` longer, as from a slow network mount."""
    import time

    import engine.llama.adapters.loading as adapter_loading

    read = adapter_loading.read_adapter_file

    def slow_read(real: Path, display: str) -> object:
        time.sleep(seconds)
        return read(real, display)

    monkeypatch.setattr(adapter_loading, "read_adapter_file", slow_read)
