"""Turn a trained LoRA (parsed from a PEFT or mlx-lm folder) into the GGUF adapter llama.cpp loads,
in memory, with gguf-py and numpy: the same tensors llama.cpp's own convert_lora_to_gguf.py writes.

- Names go through gguf-py's tensor-name map for the served model's architecture and block count.
- llama-architecture GGUFs store q and k permuted for llama.cpp's RoPE (convert_hf_to_gguf.py's
  `LlamaModel.permute`), so the rows of lora_B for q and k are permuted the same way; lora_A is untouched.
- llama.cpp applies `scale · alpha / rank` with one alpha per file and each module's own rank. The file's
  alpha is the adapter's common one; a module whose scale differs (PEFT's rank_pattern / alpha_pattern)
  gets the ratio folded into its lora_B, so every module is applied at the scale it was trained with.
- F32 throughout, as the converter's default: converting to F16 already changes greedy text.

Everything is checked here, by PEFT's names, before llama.cpp sees a byte: llama.cpp only logs and
returns NULL on a bad adapter.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from engine.errors import InvalidRequest
from engine.llama.adapters.base_model import AdapterBase

# Architectures whose GGUF q/k weights are permuted (True) or stored as trained (False). Others are
# refused: their conversion (fused qkv, other norms) is not checked here.
CONVERTIBLE_ARCHITECTURES = {"llama": True, "qwen2": False, "qwen3": False}
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_EMBEDDING_NAMES = ("token_embd", "output")


class AdapterConversionError(InvalidRequest):
    pass


@dataclass(frozen=True)
class LoraModule:
    """One adapted weight as trained: delta_W = (alpha / r) · B @ A, with r = A's rows."""

    key: str  # the module's name in the trained model, e.g. model.layers.0.self_attn.q_proj
    a: np.ndarray  # (r, n_in) float32
    b: np.ndarray  # (n_out, r) float32
    alpha: float  # the alpha that, divided by this module's rank, gives the scale it was trained with


@dataclass(frozen=True)
class TrainedLora:
    kind: str  # "PEFT" or "mlx-lm", for messages
    modules: list[LoraModule]
    alpha: float  # the adapter's common alpha: written as adapter.lora.alpha
    base_model_name: str | None


def to_gguf_tensors(lora: TrainedLora, base: AdapterBase, where: str) -> list[tuple[str, np.ndarray]]:
    """The GGUF tensors (name, array in PEFT's shape) llama.cpp's converter writes for `lora`."""
    arch = base.architecture
    if arch not in CONVERTIBLE_ARCHITECTURES:
        raise AdapterConversionError(
            f"{where}: converting {lora.kind} adapters for the {arch!r} architecture is not supported "
            f"(supported: {', '.join(CONVERTIBLE_ARCHITECTURES)}); convert it with llama.cpp's "
            "convert_lora_to_gguf.py and load the .gguf"
        )
    if not lora.modules:
        raise AdapterConversionError(f"{where} holds no LoRA weights")
    names = gguf.get_tensor_name_map(_ARCH_IDS[arch], base.block_count)
    tensors: list[tuple[str, np.ndarray]] = []
    seen: set[str] = set()
    for module in lora.modules:
        target = _base_tensor(module.key, names, base, where)
        if target in seen:
            raise AdapterConversionError(f"{where} adapts {module.key} twice")
        seen.add(target)
        a, b = _checked_pair(module, base.tensor_shapes[target], where)
        if CONVERTIBLE_ARCHITECTURES[arch] and target.split(".")[2] in ("attn_q", "attn_k"):
            heads = base.head_count if ".attn_q." in target else base.head_count_kv
            b = _permute_rows(b, heads, module.key, where)
        if np.float32(module.alpha) != np.float32(lora.alpha):  # the file's alpha/rank is not this module's scale
            b = b * np.float32(module.alpha / lora.alpha)
        tensors += [(target + ".lora_a", a), (target + ".lora_b", b)]
    return tensors


def write_gguf(tensors: Sequence[tuple[str, np.ndarray]], alpha: float, architecture: str, path: Path) -> None:
    """Write the adapter GGUF atomically (a temporary file renamed into place): a reader never sees half."""
    fd, tmp = tempfile.mkstemp(prefix=".converting-", suffix=".gguf", dir=path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, architecture)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        for name, array in tensors:
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_ARCH_IDS = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}


def _base_tensor(key: str, names: gguf.TensorNameMap, base: AdapterBase, where: str) -> str:
    """The served model's tensor that `key` adapts (e.g. blk.0.attn_q.weight), or a refusal naming why not."""
    layer = _LAYER.search(key)
    if layer is not None and int(layer.group(1)) >= base.block_count:
        raise AdapterConversionError(
            f"{where} adapts layer {layer.group(1)} ({key}), but the served model has {base.block_count} layers: "
            "it was trained for another model"
        )
    target = names.get_name(key + ".weight", try_suffixes=(".weight",))
    if target is not None and target.split(".")[0] in _EMBEDDING_NAMES:
        raise AdapterConversionError(
            f"{where} adapts the embeddings or the output layer ({key}); llama.cpp applies LoRA to the "
            "attention and feed-forward weights only: retrain without embed_tokens / lm_head in target_modules"
        )
    if target is None or target not in base.tensor_shapes:
        raise AdapterConversionError(
            f"{where} adapts {key!r}, which the served {base.architecture} model does not have: "
            "it was trained for another architecture"
        )
    return target


def _checked_pair(module: LoraModule, base_shape: tuple[int, ...], where: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = module.a, module.b
    if a.ndim != 2 or b.ndim != 2:
        raise AdapterConversionError(f"{where}: {module.key}'s LoRA weights are not matrices")
    if a.shape[0] != b.shape[1]:
        raise AdapterConversionError(
            f"{where}: {module.key} has lora_A of rank {a.shape[0]} but lora_B of rank {b.shape[1]}; "
            "the two halves must have the same rank"
        )
    n_in, n_out = base_shape[0], base_shape[1] if len(base_shape) > 1 else 1
    if a.shape[1] != n_in or b.shape[0] != n_out:
        raise AdapterConversionError(
            f"{where}: {module.key} is {b.shape[0]}x{a.shape[1]} (out x in) in the adapter but {n_out}x{n_in} "
            "in the served model: it was trained for another model"
        )
    return a, b


def _permute_rows(b: np.ndarray, heads: int, key: str, where: str) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute applied to lora_B's rows (its output dimension)."""
    n_out, rank = b.shape
    if heads <= 0 or n_out % (2 * heads):
        raise AdapterConversionError(
            f"{where}: {key} has {n_out} outputs, which do not split into the served model's {heads} heads"
        )
    return b.reshape(heads, 2, n_out // heads // 2, rank).swapaxes(1, 2).reshape(n_out, rank)
