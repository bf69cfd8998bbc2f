"""Adapter sets per sequence, through loramux's llama.cpp patch (engine/llama_patch.py).

Stock llama.cpp applies one adapter set to every sequence of a decode, so requests with different sets
take turns (llama-server does the same). The patch adds `llama_set_adapters_lora_seq`: the context holds
a list of adapters and each sequence its own scale for each (0: not applied); every token's LoRA term is
scaled by its sequence's scale on the rank-r intermediate. One decode then serves every adapter set, and
a token's arithmetic does not depend on what else shares the step. Changing only the scales is a graph
input, not a new graph: a new list of adapters re-reserves llama.cpp's scheduler (a few ms), as a new
set does in stock llama.cpp.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from typing import Any

from engine import llama_patch


class SeqAdapters:
    """The context's adapter list and per-sequence scales, set before each decode when they change."""

    def __init__(self, ctx: Any, n_seq: int) -> None:
        assert llama_patch.available()
        self._ctx = ctx
        self._n_seq = n_seq
        self._adapters: tuple[int, ...] = ()
        self._scales: dict[int, tuple[tuple[int, float], ...]] = {}

    def holds(self, handle: Any) -> bool:
        return _address(handle) in self._adapters

    def apply(self, per_seq: Mapping[int, Sequence[tuple[Any, float]]]) -> bool:
        """Give each seq id its adapters and scales (seq ids not named: none). True if the context's
        adapter list changed (llama.cpp builds a new graph then)."""
        scales = {seq: tuple((_address(h), s) for h, s in pairs) for seq, pairs in per_seq.items() if pairs}
        # A fixed order (by address): a sequence with two adapters adds their terms in the same order
        # whichever others share the step, so its sums are the same alone and batched.
        adapters = tuple(sorted({h for pairs in scales.values() for h, _ in pairs}))
        if adapters == self._adapters and scales == self._scales:
            return False
        changed = adapters != self._adapters
        n = len(adapters)
        if n == 0:
            rc = llama_patch.set_adapters_lora_seq(self._ctx, None, 0, None, 0)
        else:
            index = {h: i for i, h in enumerate(adapters)}
            table = (ctypes.c_float * (self._n_seq * n))()
            for seq, pairs in scales.items():
                for handle, scale in pairs:
                    table[seq * n + index[handle]] += scale
            handles = (ctypes.c_void_p * n)(*adapters)
            rc = llama_patch.set_adapters_lora_seq(self._ctx, handles, n, table, self._n_seq)
        if rc != 0:
            self._adapters, self._scales = (), {}
            raise RuntimeError(f"llama_set_adapters_lora_seq returned {rc}")
        self._adapters, self._scales = adapters, scales
        return changed

    def clear(self) -> None:
        self.apply({})


def _address(handle: Any) -> int:
    """An adapter pointer as an int (llama-cpp-python returns a ctypes pointer object, which is unhashable)."""
    return handle if isinstance(handle, int) else ctypes.cast(handle, ctypes.c_void_p).value or 0
