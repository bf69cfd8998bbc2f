"""Read a .safetensors file's tensors as float32 numpy arrays, without torch.

The format is a little-endian u64 header length, a JSON header (name → dtype, shape, byte range) and
the raw bytes. `safetensors.numpy` cannot read BF16 (numpy has no bfloat16), which is how PEFT and
mlx-lm usually save adapters, so the format is parsed here: BF16 is the top half of a float32, widened
exactly. Every length and range is checked against the file, so a hostile file cannot make this
allocate more than the file's size or read outside it.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np

from engine.errors import InvalidRequest

MAX_HEADER_BYTES = 100 << 20  # the format's own limit
# the element types an adapter's weights come in (others — ints, fp8 — are not LoRA weights)
_FLOAT_TYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "F64": np.dtype("<f8"),
}


class SafetensorsError(InvalidRequest):
    pass


def read_safetensors(data: bytes, where: str) -> dict[str, np.ndarray]:
    """name → float32 array of the tensor's shape; `where` names the file in errors."""
    if len(data) < 8:
        raise SafetensorsError(f"{where} is not a safetensors file (it has {len(data)} bytes)")
    (header_len,) = struct.unpack_from("<Q", data, 0)
    if header_len > min(MAX_HEADER_BYTES, len(data) - 8):
        raise SafetensorsError(f"{where} is not a safetensors file, or it is truncated (header of {header_len} bytes)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SafetensorsError(f"{where} has a corrupt safetensors header ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{where} has a corrupt safetensors header (not a JSON object)")
    body = memoryview(data)[8 + header_len :]
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[str(name)] = _tensor(body, str(name), entry, where)
    return tensors


def _tensor(body: memoryview, name: str, entry: object, where: str) -> np.ndarray:
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{where}: tensor {name!r} has a corrupt header entry")
    dtype_name, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype_name not in _FLOAT_TYPES:
        raise SafetensorsError(
            f"{where}: tensor {name!r} is {dtype_name!r}; LoRA weights must be F32, F16, BF16 or F64"
        )
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise SafetensorsError(f"{where}: tensor {name!r} has a corrupt header entry")
    dtype = _FLOAT_TYPES[dtype_name]
    begin, end = offsets
    if not 0 <= begin <= end <= len(body) or end - begin != math.prod(shape) * dtype.itemsize:
        raise SafetensorsError(f"{where}: tensor {name!r} lies outside the file or has the wrong size")
    raw = np.frombuffer(body[begin:end], dtype=dtype)
    if dtype_name == "BF16":
        values = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        values = raw.astype(np.float32)  # F16 widens exactly; F64 rounds as any converter's f32 output does
    return values.reshape(shape)
