"""Hostile inputs the tests share: adapter files with bad numbers, a directory of hostile files, schemas
nested too deep to write with json.dumps."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter
from gguf.constants import GGMLQuantizationType
from gguf.quants import quantize

from engine.config import default_adapter_dir
from tests.adapter_factory import base_shapes

BASE_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_ERROR_BYTES = 1024  # the most an OpenAI error answer may take (issue 20)


def with_alpha_bytes(source: Path, target: Path, raw: bytes) -> Path:
    """A copy of `source` whose float32 adapter.lora.alpha value is the 4 bytes `raw` (as the issue's repro)."""
    data = bytearray(source.read_bytes())
    reader = GGUFReader(source)
    field = reader.fields["adapter.lora.alpha"]
    offset = field.parts[field.data[0]].ctypes.data - reader.data.ctypes.data
    data[offset : offset + 4] = raw
    target.write_bytes(bytes(data))
    return target


def write_adapter(
    path: Path,
    *,
    fill: float,
    alpha: float = 8.0,
    rank: int = 32,
    targets: tuple[str, ...] = ("attn_v",),
    dtype: str = "f32",
    odd_value: float | None = None,
) -> Path:
    """An adapter of layers 0-1 of `targets` with every weight `fill`, stored as `dtype`; `odd_value`, if
    given, replaces one weight of blk.1.attn_v's lora_b."""
    w = GGUFWriter(str(path), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    for layer, target in ((layer, target) for layer in range(2) for target in targets):
        name = f"blk.{layer}.{target}.weight"
        n_in, n_out = base_shapes()[name]
        a = np.full((rank, n_in), fill, np.float32)
        b = np.full((n_out, rank), fill, np.float32)
        if name == "blk.1.attn_v.weight" and odd_value is not None:
            b[3, 0] = odd_value
        for suffix, t in ((".lora_a", a), (".lora_b", b)):
            if dtype == "f32":
                w.add_tensor(name + suffix, t)
            elif dtype == "f16":
                w.add_tensor(name + suffix, t.astype(np.float16))
            else:
                kind = GGMLQuantizationType.BF16 if dtype == "bf16" else GGMLQuantizationType.Q8_0
                with np.errstate(invalid="ignore", over="ignore"):  # NaN and 1e30 on purpose
                    w.add_tensor(name + suffix, quantize(t, kind).view(np.uint8), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_with_value(path: Path, value: float, dtype: str) -> Path:
    return write_adapter(path, fill=0.01, dtype=dtype, odd_value=value)


def loud_adapter(path: Path) -> Path:
    """Finite and in range, but huge at scale 4: the gate and up projections square into ffn_down's input,
    which overflows float32 on the adapter's own rows (x × 0 stays 0 on the others' rows)."""
    return write_adapter(
        path, fill=60000.0, alpha=65504.0, rank=1, targets=("ffn_gate", "ffn_up", "ffn_down"), dtype="f16"
    )


def hostile_adapter_dir(root: Path) -> Path:
    """caps.gguf, its copy with a NaN alpha, a symlink self-loop and a two-link loop."""
    root.mkdir(exist_ok=True)
    caps = root / "caps.gguf"
    if not caps.exists():
        shutil.copy(default_adapter_dir() / "caps.gguf", caps)
        with_alpha_bytes(caps, root / "nan_alpha.gguf", struct.pack("<I", 0x7FC00000))
        (root / "self.gguf").symlink_to(root / "self.gguf")
        (root / "ping.gguf").symlink_to(root / "pong.gguf")
        (root / "pong.gguf").symlink_to(root / "ping.gguf")
    return root


def nested_schema_text(depth: int, via: str) -> str:
    """The schema as JSON text, written without recursion (json.dumps gives up near 1,000 levels)."""
    if via == "properties":
        return '{"type": "object", "properties": {"a": ' * depth + '{"type": "string"}' + "}}" * depth
    return '{"type": "array", "items": ' * depth + '{"type": "string"}' + "}" * depth
