"""What adapters are checked and converted against: the resident model's architecture, tensor shapes
and attention layout, all read from its own GGUF header (no Hugging Face config.json needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine.llama.adapters.gguf_header import GGUFHeader, read_gguf_header


@dataclass(frozen=True)
class AdapterBase:
    architecture: str
    tensor_shapes: Mapping[str, tuple[int, ...]]  # ggml order (ne): a weight is [n_in, n_out]
    block_count: int = 0
    head_count: int = 0
    head_count_kv: int = 0
    # how the model names itself (general.name, basename, …): to warn when an adapter was trained on another
    names: tuple[str, ...] = field(default=())

    @classmethod
    def from_header(cls, header: GGUFHeader) -> AdapterBase:
        meta = header.metadata
        arch = str(meta.get("general.architecture", "unknown"))

        def number(key: str) -> int:
            value = meta.get(f"{arch}.{key}")
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        head_count = number("attention.head_count")
        names = tuple(
            str(meta[k])
            for k in ("general.name", "general.basename", "general.base_model.0.name", "general.finetune")
            if isinstance(meta.get(k), str)
        )
        return cls(
            architecture=arch,
            tensor_shapes={t.name: t.shape for t in header.tensors},
            block_count=number("block_count"),
            head_count=head_count,
            head_count_kv=number("attention.head_count_kv") or head_count,  # absent: no grouped-query attention
            names=names,
        )

    @classmethod
    def from_model_file(cls, path: Path) -> AdapterBase:
        with open(path, "rb") as f:
            return cls.from_header(read_gguf_header(f, os.fstat(f.fileno()).st_size))
