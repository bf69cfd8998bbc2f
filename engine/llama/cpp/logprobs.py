"""Log-probabilities from a row of logits, for requests that ask for them.

Computed in float64 from the float32 row, in one fixed order: a row's values do not depend on what
else shared the decode step (the logits are batch-invariant), so neither do these.
"""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np

from engine.llama.scheduling.sequence import TokenScores

# llama_get_logits_ith returning a plain address (numpy reads the row in place)
_logits_address = llama_cpp.llama_cpp._lib["llama_get_logits_ith"]
_logits_address.argtypes = [llama_cpp.llama_context_p_ctypes, ctypes.c_int32]
_logits_address.restype = ctypes.c_void_p


def logits_row(ctx: llama_cpp.llama_context_p, row: int, n_vocab: int) -> np.ndarray:
    """Batch row `row` of the last decode's logits, in place (writes change llama.cpp's copy)."""
    address = _logits_address(ctx, row)
    if not address:
        raise ValueError(f"llama.cpp has no logits for batch row {row}")
    return np.frombuffer((ctypes.c_float * n_vocab).from_address(address), dtype=np.float32)


class RowScores:
    """log-softmax over one row: the normalizer once, then any token's log-probability."""

    def __init__(self, row: np.ndarray) -> None:
        self._row = row
        top = float(row.max())
        self._log_total = top + float(np.log(np.exp(row.astype(np.float64) - top).sum()))

    def logprob(self, token: int) -> float:
        return float(self._row[token]) - self._log_total

    def top(self, k: int) -> tuple[tuple[int, float], ...]:
        """The k likeliest tokens (ties: lower id first, as an argmax picks), none with probability 0."""
        if k <= 0:
            return ()
        row = self._row
        k = min(k, row.size)
        kth = np.partition(row, row.size - k)[row.size - k]  # the k-th largest value
        above = np.flatnonzero(row > kth)
        ids = np.concatenate([above, np.flatnonzero(row == kth)[: k - above.size]])
        ids = ids[np.lexsort((ids, -row[ids]))]
        return tuple((int(i), self.logprob(int(i))) for i in ids if np.isfinite(row[i]))

    def scores(self, token: int, k: int) -> TokenScores:
        return token, self.logprob(token), self.top(k)
