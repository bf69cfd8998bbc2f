"""Read a GGUF file's header: metadata scalars and strings, and tensor infos, stopping before the data.

gguf's GGUFReader parses every metadata array element into numpy (3.8 s for the default model's
49k-token vocabulary); validation needs only the header, so arrays are skipped here (~50 ms). Every
length is checked against the file size, so a hostile file cannot make this allocate or loop unbounded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

MAGIC = b"GGUF"
MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32

# value type → struct format of a scalar (GGUF spec)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    pass


@dataclass(frozen=True)
class ArrayValue:
    """A metadata array, skipped: only its element type and length are kept."""

    element_type: int
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order (ne0 first)
    ggml_type: int
    offset: int  # from the start of the data section

    def nbytes(self) -> int:
        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(self.ggml_type)]
        except (ValueError, KeyError) as exc:
            raise GGUFFormatError(f"tensor {self.name!r} has unknown type {self.ggml_type}") from exc
        n = 1
        for d in self.shape:
            n *= d
        return n // block * size


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict[str, object]
    tensors: list[TensorInfo]
    data_offset: int

    def data_end(self) -> int:
        return max((self.data_offset + t.offset + t.nbytes() for t in self.tensors), default=self.data_offset)


class _Reader:
    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.size = size

    def take(self, n: int) -> bytes:
        if n < 0 or self.f.tell() + n > self.size:
            raise GGUFFormatError("unexpected end of file")
        return self.f.read(n)

    def skip(self, n: int) -> None:
        if n < 0 or self.f.tell() + n > self.size:
            raise GGUFFormatError("unexpected end of file")
        self.f.seek(n, 1)

    def unpack(self, fmt: str) -> object:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def u32(self) -> int:
        return int(self.unpack("<I"))  # type: ignore[call-overload]

    def u64(self) -> int:
        return int(self.unpack("<Q"))  # type: ignore[call-overload]

    def string(self) -> str:
        return self.take(self.u64()).decode("utf-8", "replace")

    def count(self, what: str) -> int:
        n = self.u64()
        if n > self.size:  # each item takes at least a byte
            raise GGUFFormatError(f"{what} count {n} exceeds the file size")
        return n

    def value(self, value_type: int) -> object:
        if value_type in _SCALARS:
            return self.unpack(_SCALARS[value_type])
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            element_type, n = self.u32(), self.count("array")
            if element_type in _SCALARS:
                self.skip(n * struct.calcsize(_SCALARS[element_type]))
            elif element_type == _STRING:
                for _ in range(n):
                    self.skip(self.u64())
            else:
                raise GGUFFormatError(f"unsupported array element type {element_type}")
            return ArrayValue(element_type, n)
        raise GGUFFormatError(f"unknown metadata value type {value_type}")


def read_gguf_header(f: BinaryIO, size: int) -> GGUFHeader:
    r = _Reader(f, size)
    if r.take(4) != MAGIC:
        raise GGUFFormatError("not a GGUF file")
    version = r.u32()
    if version not in (2, 3):
        raise GGUFFormatError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = r.count("tensor"), r.count("metadata")
    metadata: dict[str, object] = {}
    for _ in range(n_kv):
        key = r.string()
        metadata[key] = r.value(r.u32())
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.u32()
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFFormatError(f"tensor {name!r} has {n_dims} dimensions")
        shape = tuple(r.u64() for _ in range(n_dims))
        tensors.append(TensorInfo(name, shape, r.u32(), r.u64()))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFFormatError(f"invalid general.alignment {alignment!r}")
    data_offset = -(-f.tell() // alignment) * alignment
    return GGUFHeader(version, metadata, tensors, data_offset)
