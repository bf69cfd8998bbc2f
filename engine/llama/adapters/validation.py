"""Check a LoRA adapter GGUF against the base model before llama.cpp sees it.

llama.cpp returns NULL for many bad files but says why only in its log; these checks name the
problem for the agent: not a GGUF, truncated, a model instead of an adapter, another architecture,
tensors that name no base tensor or have the wrong shapes, and numbers that would reach other callers.

Why the numbers matter: sequences with different adapter sets share a decode step, and an adapter
applied to a majority of the step's tokens is computed on every row, scaled by 0 on the rows of other
sequences. 0 × NaN and 0 × inf are NaN, so one file with a NaN alpha or a NaN weight would wipe out other
callers' answers. With a finite alpha and finite weights within float16's range, every other row's term
is finite (|A·x| ≤ n_in × 65504 × max|x|, far below float32's 3.4e38) and so exactly 0 once scaled: the
adapter can then break only its own requests, which the sampler fails alone (engine/llama/cpp/sampler.py).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from engine.errors import InvalidRequest
from engine.llama.adapters.files import shown
from engine.llama.adapters.gguf_header import GGUFFormatError, GGUFHeader, TensorInfo, read_gguf_header

GGUF_MAGIC = b"GGUF"
# float16's largest value: trained LoRA weights are orders of magnitude smaller, and f16 adapters cannot
# hold more. Larger (or non-finite) values could overflow on other callers' rows (see the docstring).
MAX_ABS_WEIGHT = 65504.0
MAX_ALPHA = 65504.0
CHECK_CHUNK = 1 << 20  # elements checked at a time: bounded temporary memory for large adapters
# how the float types' elements read with numpy (BF16: the top half of a float32, widened per chunk)
_FLOAT_LAYOUTS = {
    GGMLQuantizationType.F32: np.float32,
    GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.BF16: np.uint16,
}


class AdapterFileError(InvalidRequest):
    pass


@dataclass(frozen=True)
class AdapterFileInfo:
    architecture: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    num_tensors: int


def validate_adapter(
    data: bytes, *, display_name: str, base_architecture: str, base_shapes: Mapping[str, tuple[int, ...]]
) -> AdapterFileInfo:
    """`data` is the whole file; `base_shapes` maps base tensor names to ggml shapes (ne order)."""
    where = shown(display_name)
    size = len(data)
    if size == 0:
        raise AdapterFileError(f"{where} is empty")
    with io.BytesIO(data) as f:
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise AdapterFileError(f"{where} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
        f.seek(0)
        try:
            header: GGUFHeader = read_gguf_header(f, size)
            data_end = header.data_end()
        except GGUFFormatError as exc:
            raise AdapterFileError(f"{where} is a truncated or corrupt GGUF file ({exc})") from exc
    if data_end > size:
        raise AdapterFileError(f"{where} is truncated: its tensors need {data_end} bytes, the file has {size}")
    meta = header.metadata

    kind = meta.get("general.type")
    if kind != "adapter":
        what = "a full model" if kind in (None, "model") else f"general.type = {kind!r}"
        raise AdapterFileError(f"{where} is {what}, not a LoRA adapter (general.type must be 'adapter')")
    adapter_type = meta.get("adapter.type")
    if adapter_type != "lora":
        raise AdapterFileError(f"{where} is a {adapter_type!r} adapter; only 'lora' adapters are supported")
    arch = meta.get("general.architecture")
    if arch != base_architecture:
        raise AdapterFileError(
            f"{where} is an adapter for the {arch!r} architecture, but the served model is {base_architecture!r}"
        )

    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for tensor in header.tensors:
        name = tensor.name
        for suffix in (".lora_a", ".lora_b"):
            if name.endswith(suffix):
                pairs.setdefault(name[: -len(suffix)], {})[suffix] = tensor.shape
                break
        else:
            raise AdapterFileError(f"{where} has tensor {name!r}, which is not a LoRA tensor (.lora_a / .lora_b)")
    if not pairs:
        raise AdapterFileError(f"{where} contains no LoRA tensors")

    ranks: set[int] = set()
    modules: set[str] = set()
    for base_name, ab in sorted(pairs.items()):
        if set(ab) != {".lora_a", ".lora_b"}:
            missing = ".lora_b" if ".lora_a" in ab else ".lora_a"
            raise AdapterFileError(f"{where} has no {base_name}{missing} to pair with its other half")
        base = base_shapes.get(base_name)
        if base is None:
            raise AdapterFileError(f"{where} adapts {base_name!r}, which the served model does not have")
        a, b = ab[".lora_a"], ab[".lora_b"]  # ggml order: a = [n_in, r], b = [r, n_out]
        if len(base) != 2 or len(a) != 2 or len(b) != 2 or a[1] != b[0] or a[0] != base[0] or b[1] != base[1]:
            raise AdapterFileError(
                f"{where}: {base_name} has shape {list(base)} but its LoRA tensors are {list(a)} and {list(b)} "
                f"(expected [{base[0]}, r] and [r, {base[1] if len(base) > 1 else '?'}])"
            )
        if a[1] == 0:  # llama.cpp scales by alpha / rank: infinity, and infinity x 0 is NaN on other rows
            raise AdapterFileError(f"{where}: {base_name} has LoRA rank 0; an adapter's rank must be at least 1")
        ranks.add(a[1])
        parts = base_name.split(".")
        modules.add(parts[2] if len(parts) > 3 and parts[0] == "blk" else base_name)

    rank = max(ranks)
    alpha = _alpha(meta.get("adapter.lora.alpha"), rank, where)
    for tensor in header.tensors:
        _check_values(data, header.data_offset, tensor, where)
    return AdapterFileInfo(
        architecture=str(arch),
        rank=rank,
        alpha=alpha,
        target_modules=tuple(sorted(modules)),
        num_tensors=2 * len(pairs),
    )


def _alpha(field: object, rank: int, where: str) -> float:
    """adapter.lora.alpha (the rank when absent, as llama.cpp reads it): finite, 0 (no alpha) to MAX_ALPHA."""
    if field is None:
        return float(rank)
    if isinstance(field, bool) or not isinstance(field, int | float):
        raise AdapterFileError(f"{where}: adapter.lora.alpha is {type(field).__name__}, not a number")
    alpha = float(field)
    if not math.isfinite(alpha) or not 0.0 <= alpha <= MAX_ALPHA:
        raise AdapterFileError(
            f"{where}: adapter.lora.alpha is {alpha!r}; it must be a finite number from 0 to {MAX_ALPHA:g} "
            "(LoRA alphas are typically 8 to 128)"
        )
    return alpha


def _check_values(data: bytes, data_offset: int, tensor: TensorInfo, where: str) -> None:
    """Every value of the tensor is finite and within ±MAX_ABS_WEIGHT, checked in chunks."""
    start = data_offset + tensor.offset
    raw = memoryview(data)[start : start + tensor.nbytes()]
    try:
        kind = GGMLQuantizationType(tensor.ggml_type)
    except ValueError:
        raise AdapterFileError(f"{where}: tensor {tensor.name!r} has unknown type {tensor.ggml_type}") from None
    floats = kind in _FLOAT_LAYOUTS
    values = np.frombuffer(raw, dtype=_FLOAT_LAYOUTS.get(kind, np.uint8))  # quantized: its bytes
    # quantized types are checked dequantized, a whole number of blocks (bytes) at a time
    block, block_bytes = GGML_QUANT_SIZES[kind]
    step = CHECK_CHUNK if floats else max(1, CHECK_CHUNK // block) * block_bytes
    for first in range(0, len(values), step):
        chunk = values[first : first + step]
        if kind is GGMLQuantizationType.BF16:
            chunk = (chunk.astype(np.uint32) << 16).view(np.float32)
        elif not floats:
            try:
                with np.errstate(all="ignore"):  # NaN scales are what this looks for
                    chunk = dequantize(chunk, kind)
            except NotImplementedError:
                raise AdapterFileError(
                    f"{where}: tensor {tensor.name!r} has type {kind.name}, which cannot be checked; "
                    "convert the adapter with --outtype f16, bf16, f32 or q8_0"
                ) from None
        if not chunk.size:
            continue
        low, high = float(chunk.min()), float(chunk.max())  # NaN, if any, comes out of both
        if math.isnan(low) or math.isnan(high):
            raise AdapterFileError(f"{where}: tensor {tensor.name!r} holds NaN values; the adapter is corrupt")
        if not -MAX_ABS_WEIGHT <= low <= high <= MAX_ABS_WEIGHT:
            worst = high if abs(high) >= abs(low) else low
            raise AdapterFileError(
                f"{where}: tensor {tensor.name!r} holds {worst:g}; LoRA weights must be finite and within "
                f"±{MAX_ABS_WEIGHT:g} (the adapter is corrupt or was saved wrongly)"
            )
