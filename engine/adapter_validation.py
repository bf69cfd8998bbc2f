"""Check a LoRA adapter GGUF against the base model before llama.cpp sees it.

llama.cpp returns NULL for many bad files but says why only in its log; these checks name the
problem for the agent: not a GGUF, truncated, a model instead of an adapter, another architecture,
tensors that name no base tensor or have the wrong shapes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

from engine.errors import InvalidRequest
from engine.gguf_header import GGUFFormatError, GGUFHeader, read_gguf_header

GGUF_MAGIC = b"GGUF"


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
    where = repr(display_name)
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
        ranks.add(a[1])
        parts = base_name.split(".")
        modules.add(parts[2] if len(parts) > 3 and parts[0] == "blk" else base_name)

    alpha_field = meta.get("adapter.lora.alpha")
    rank = max(ranks)
    alpha = float(alpha_field) if isinstance(alpha_field, int | float) else float(rank)
    return AdapterFileInfo(
        architecture=str(arch),
        rank=rank,
        alpha=alpha,
        target_modules=tuple(sorted(modules)),
        num_tensors=2 * len(pairs),
    )
