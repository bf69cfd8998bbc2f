"""The context's LoRA adapters for one decode step, from each running sequence's adapter set.

Stock llama.cpp applies one adapter set to every sequence of a decode (`OneSetPerStep`): requests with
different sets take turns, the scheduler giving each step one set (llama-server does the same).
loramux's llama.cpp patch adds `llama_set_adapters_lora_seq` (`PerSequence`): the context holds a list
of adapters and each sequence its own scale for each (0: not applied), applied per token on the rank-r
intermediate, so one decode serves every set and a token's arithmetic does not depend on what else
shares the step. In both, a new list of adapters makes llama.cpp re-reserve its graph (a few ms); with
the patch, new scales for the same list are only a graph input.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from typing import Any

import llama_cpp

from engine.llama.cpp import patch as llama_patch

# seq id → (adapter handle, scale) pairs; handles are the registry's objects, compared by identity
PerSeq = Mapping[int, Sequence[tuple[Any, float]]]


class ContextAdapters:
    """Sets the context's adapters before a decode, only when the step's assignment changed (it usually
    has not: this runs every step)."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self._last: PerSeq = {}

    def apply(self, per_seq: PerSeq) -> bool:
        """Apply the step's adapters (sequences without any left out); True if the context's adapter list
        changed."""
        if per_seq == self._last:
            return False
        try:
            changed = self._set(per_seq)
        except BaseException:
            self._last = {}
            raise
        self._last = per_seq
        return changed

    def holds(self, handle: Any) -> bool:
        """Whether the context points at this adapter (it must be detached before it is freed)."""
        return any(h is handle for pairs in self._last.values() for h, _ in pairs)

    def clear(self) -> None:
        self.apply({})

    def _set(self, per_seq: PerSeq) -> bool:
        raise NotImplementedError


class OneSetPerStep(ContextAdapters):
    """Stock llama.cpp: the whole decode gets one adapter set."""

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self._set_now: tuple[tuple[Any, float], ...] = ()

    def _set(self, per_seq: PerSeq) -> bool:
        adapters = tuple(next(iter(per_seq.values()), ()))
        assert all(tuple(pairs) == adapters for pairs in per_seq.values()), "a step serves one set without the patch"
        if adapters == self._set_now:  # other sequences, the same set
            return False
        self._set_now = ()
        n = len(adapters)
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*(h for h, _ in adapters)) if n else None
        scales = (ctypes.c_float * n)(*(s for _, s in adapters)) if n else None
        if llama_cpp.llama_set_adapters_lora(self._ctx, handles, n, scales) != 0:
            raise RuntimeError("llama_set_adapters_lora failed")
        self._set_now = adapters
        return True


class PerSequence(ContextAdapters):
    """loramux's patch: every sequence with its own scales for the context's adapter list."""

    def __init__(self, ctx: Any, n_seq: int) -> None:
        assert llama_patch.available()
        super().__init__(ctx)
        self._n_seq = n_seq
        self._adapters: tuple[int, ...] = ()  # the context's list, as addresses

    def _set(self, per_seq: PerSeq) -> bool:
        scales = {seq: [(_address(h), s) for h, s in pairs] for seq, pairs in per_seq.items()}
        # A fixed order (by address): a sequence with two adapters adds their terms in the same order
        # whichever others share the step, so its sums are the same alone and batched.
        adapters = tuple(sorted({h for pairs in scales.values() for h, _ in pairs}))
        n = len(adapters)
        if n == 0:
            rc = llama_patch.set_adapters_lora_seq(self._ctx, None, 0, None, 0)
        else:
            index = {h: i for i, h in enumerate(adapters)}
            table = (ctypes.c_float * (self._n_seq * n))()
            for seq, pairs in scales.items():
                for handle, scale in pairs:
                    table[seq * n + index[handle]] = scale
            rc = llama_patch.set_adapters_lora_seq(self._ctx, (ctypes.c_void_p * n)(*adapters), n, table, self._n_seq)
        changed, self._adapters = adapters != self._adapters, adapters if rc == 0 else ()
        if rc != 0:
            raise RuntimeError(f"llama_set_adapters_lora_seq returned {rc}")
        return changed


def _address(handle: Any) -> int:
    """An adapter pointer as an int (llama-cpp-python returns a ctypes pointer object, which is unhashable)."""
    return handle if isinstance(handle, int) else ctypes.cast(handle, ctypes.c_void_p).value or 0
