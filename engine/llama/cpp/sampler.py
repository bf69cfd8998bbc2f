"""Per-request llama.cpp sampler chains built from SamplingParams."""

from __future__ import annotations

import ctypes
import math
import random
from collections.abc import Collection

import llama_cpp
import numpy as np

from engine.llama.cpp.constraints import TokenMask
from engine.llama.cpp.logprobs import RowScores, _logits_address
from engine.llama.cpp.penalties import RecentTokens
from engine.llama.scheduling.sequence import TokenScores
from engine.request import SamplingParams

# The logits as a plain address (logprobs.py): the argmax path reads 49k floats in place, and numpy's
# ctypes pointer conversion cost more than the argmax itself (~25 µs a call on the decode thread, where
# every Python line runs with caches cold after llama_decode).


class NonFiniteLogits(ArithmeticError):
    """A row of logits held NaN or +inf (or nothing above -inf): no token can be chosen from it."""


class LlamaSampler:
    """One per request. The logits row is changed in place first, where the argmax and llama.cpp's chain
    both read it: `banned` tokens (ignore_eos: the end-of-generation tokens, as in llama-server) and tokens
    the constraint's mask forbids become -inf, then the penalties apply (penalties.py). Then greedy is an
    argmax: llama.cpp's chain would copy all 49k logits into a candidate array first (on the decode
    thread, for every sequence of every step); both take the first maximum on ties. Sampling is a
    llama.cpp chain: top-k → top-p → min-p → temperature → seeded draw.

    A row whose largest logit is not finite (NaN, which the argmax and `max` both return when present,
    or +inf, or -inf everywhere) raises NonFiniteLogits before any token is taken: a numerically broken
    adapter fails its own request, and llama.cpp's chain never draws from NaN probabilities.

    With `logprobs` (alternatives per token), `scores` holds the sampled token's log-probability and the
    likeliest alternatives from the row as the draw saw it (after bans, mask and penalties)."""

    def __init__(
        self,
        ctx: llama_cpp.llama_context_p,
        n_vocab: int,
        params: SamplingParams,
        mask: TokenMask | None = None,
        banned: Collection[int] = (),
        logprobs: int | None = None,
    ) -> None:
        self._ctx = ctx
        self._row = ctypes.c_float * n_vocab
        self._mask = mask  # json_schema / grammar: disallowed tokens' logits become -inf first
        self._banned = np.fromiter(banned, dtype=np.intp) if banned else None
        self._recent = RecentTokens(params) if RecentTokens.wanted(params) else None
        self._chain = None if params.temperature == 0.0 else _draw_chain(params)  # greedy: an argmax
        self._logprobs = logprobs
        self.scores: TokenScores | None = None  # the last sampled token's, when logprobs are asked for

    @property
    def argmax(self) -> bool:
        return self._chain is None

    @property
    def plain_argmax(self) -> bool:
        """Its token is the row's argmax after the bans alone (no mask, penalties, scores or draw), which
        is what llama.cpp's greedy steps (greedy_steps.py) take themselves."""
        return self._chain is None and self._mask is None and self._recent is None and self._logprobs is None

    @property
    def bans(self) -> bool:
        return self._banned is not None

    def sample(self, row: int) -> int:
        """Sample from the logits of batch row `row` of the last decode, and accept the token."""
        address = _logits_address(self._ctx, row)
        if not address:
            raise ValueError(f"llama.cpp has no logits for batch row {row}")
        logits = self._row.from_address(address)  # element access (penalties)
        view = np.frombuffer(logits, dtype=np.float32)  # array operations: ban, mask, argmax, finiteness
        if self._banned is not None:
            view[self._banned] = -np.inf
        if self._mask is not None:
            self._mask.apply(view)
        if self._recent is not None:
            self._recent.apply(logits)
        if self._chain is None:
            token = int(view.argmax())
            if not math.isfinite(view[token]):
                raise NonFiniteLogits
        else:
            if not math.isfinite(view.max()):
                raise NonFiniteLogits
        scores = RowScores(view) if self._logprobs is not None else None  # before the chain changes the row
        if self._chain is not None:
            token = llama_cpp.llama_sampler_sample(self._chain, self._ctx, row)
        if scores is not None:
            self.scores = scores.scores(token, self._logprobs or 0)
        if self._mask is not None:
            self._mask.accept(token)
        if self._recent is not None:
            self._recent.accept(token)
        return token

    def close(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None


def _draw_chain(params: SamplingParams) -> llama_cpp.llama_sampler_p:
    """llama.cpp's chain for a temperature above 0 (penalties and masks are applied before it runs)."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    add = llama_cpp.llama_sampler_chain_add
    if params.top_k > 0:
        add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
    add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
    seed = params.seed if params.seed is not None else random.getrandbits(32) % (2**32 - 1)
    add(chain, llama_cpp.llama_sampler_init_dist(seed))
    return chain
