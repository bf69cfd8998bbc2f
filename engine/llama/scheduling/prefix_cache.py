"""Prompt-prefix reuse per adapter set: a finished request's KV stays in its (now free) sequence slot,
and a later request under the same adapter set whose tokens start the same way starts its prefill
after the shared part.

Only free slots hold cached KV, so the cache never takes a slot from a request: admission overwrites a
warm slot when it needs one (and its entry is forgotten). A hit copies the warm slot's KV into the new
request's slot (one cross-stream copy inside llama.cpp, done before the next compute), then cuts it
back to the shared prefix; a warm slot that is itself the new slot is only cut. KV depends on the
adapters applied, so a hit needs the same adapter set, scales and versions included (the core keys a
sequence by name@content: after a reload, the old version's entries never match). Entries past the cell budget
are forgotten least recently used first (their cells are cleared when the slot is next taken).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.request import AdapterKey

# Shorter shared prefixes are not worth a copy of the slot's buffers.
MIN_HIT_TOKENS = 16


@dataclass(slots=True)
class _Warm:
    adapter_key: AdapterKey
    tokens: np.ndarray  # the tokens whose KV the slot holds, at positions 0, 1, …
    last_used: int


def _shared_length(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


@dataclass(frozen=True, slots=True)
class Reuse:
    """What admission does to a new request's slot before its prefill: copy a warm slot's KV in (when
    `source` is another slot), then keep only positions below `keep` (0: a clean slot)."""

    source: int | None
    slot: int
    keep: int


class PrefixCache:
    def __init__(self, budget_cells: int) -> None:
        self.budget_cells = budget_cells
        self._warm: dict[int, _Warm] = {}  # free seq id → what its KV holds
        self._tick = 0
        self.hits = 0
        self.misses = 0
        self.tokens_saved = 0

    @property
    def cells(self) -> int:
        return sum(len(w.tokens) for w in self._warm.values())

    def admit(self, slot: int, adapter_key: AdapterKey, prompt: list[int], *, reuse: bool = True) -> Reuse:
        """The reuse for a request taking `slot`: the warm slot sharing the longest prefix under the same
        adapter set (at most all but the prompt's last token, whose logits the request needs); none
        unless `reuse`."""
        best, shared = None, 0
        candidates = [(s, w) for s, w in self._warm.items() if w.adapter_key == adapter_key] if reuse else []
        if candidates:
            wanted = np.asarray(prompt[:-1], dtype=np.int32)  # the last token's logits must be computed
            for seq_id, warm in candidates:
                n = _shared_length(warm.tokens, wanted)
                if n > shared:
                    best, shared = seq_id, n
        self._warm.pop(slot, None)  # the slot is taken: what it held is overwritten
        if best is None or shared < MIN_HIT_TOKENS:
            self.misses += self.budget_cells > 0
            return Reuse(None, slot, 0)
        self.hits += 1
        self.tokens_saved += shared
        if best in self._warm:
            self._tick += 1
            self._warm[best].last_used = self._tick
        return Reuse(None if best == slot else best, slot, shared)

    def keep(self, slot: int, adapter_key: AdapterKey, tokens: list[int]) -> bool:
        """Remember what a freed slot's KV holds; False if the budget has no room for it (then the
        caller clears the slot)."""
        if not tokens or len(tokens) > self.budget_cells:
            return False
        self._tick += 1
        self._warm[slot] = _Warm(adapter_key, np.asarray(tokens, dtype=np.int32), self._tick)
        while self.cells > self.budget_cells:
            oldest = min(self._warm, key=lambda s: self._warm[s].last_used)
            del self._warm[oldest]  # its cells stay until the slot is taken (admission clears them)
        return True

    def forget(self, slot: int) -> None:
        self._warm.pop(slot, None)

    def clear(self) -> None:
        self._warm.clear()
