"""Per-request llama.cpp sampler chains built from SamplingParams."""

from __future__ import annotations

import ctypes
import random
from collections.abc import Collection

import llama_cpp
import numpy as np

from engine.constraints import TokenMask
from engine.request import SamplingParams

# llama_get_logits_ith returning a plain address: the argmax path reads 49k floats in place, and
# numpy's ctypes pointer conversion cost more than the argmax itself (~25 µs a call on the decode thread,
# where every Python line runs with caches cold after llama_decode). A second function object: the
# llama_cpp module's own binding keeps its restype.
_logits_address = llama_cpp.llama_cpp._lib["llama_get_logits_ith"]
_logits_address.argtypes = [llama_cpp.llama_context_p_ctypes, ctypes.c_int32]
_logits_address.restype = ctypes.c_void_p


class LlamaSampler:
    """One chain per request: penalties → top-k → top-p → min-p → temperature → seeded draw (or greedy),
    after the constraint's token mask when the request has one. Plain greedy (no penalties, no mask) is an
    argmax over the logits: llama.cpp's chain would copy all 49k logits into a candidate array first
    (~0.25 ms per sequence per step, on the decode thread); both take the first maximum on ties.
    `banned` tokens are never sampled (ignore_eos: the end-of-generation tokens, as in llama-server)."""

    def __init__(
        self,
        ctx: llama_cpp.llama_context_p,
        n_vocab: int,
        params: SamplingParams,
        mask: TokenMask | None = None,
        banned: Collection[int] = (),
    ) -> None:
        self._ctx = ctx
        self._row = ctypes.c_float * n_vocab
        self._mask = mask  # json_schema / grammar: disallowed tokens' logits become -inf first
        self._banned = np.fromiter(banned, dtype=np.intp) if banned else None
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        penalised = (params.repeat_penalty != 1.0, params.frequency_penalty != 0.0, params.presence_penalty != 0.0)
        penalties = any(penalised) and params.repeat_last_n > 0
        self.argmax = params.temperature == 0.0 and not penalties and mask is None
        if penalties:
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab,
                    params.repeat_last_n,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                ),
            )
        if params.temperature == 0.0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else random.getrandbits(32) % (2**32 - 1)
            add(chain, llama_cpp.llama_sampler_init_dist(seed))
        self._chain = chain

    def sample(self, row: int) -> int:
        """Sample from the logits of batch row `row` of the last decode, and accept the token."""
        if self.argmax or self._banned is not None:
            # banned tokens' logits become -inf in place, where the argmax and llama.cpp's chain both read
            address = _logits_address(self._ctx, row)
            if not address:
                raise ValueError(f"llama.cpp has no logits for batch row {row}")
            logits = np.frombuffer(self._row.from_address(address), dtype=np.float32)
            if self._banned is not None:
                logits[self._banned] = -np.inf
            if self.argmax:
                return int(logits.argmax())
        if self._mask is None:
            return llama_cpp.llama_sampler_sample(self._chain, self._ctx, row)
        self._mask.apply(llama_cpp.llama_get_logits_ith(self._ctx, row))
        token = llama_cpp.llama_sampler_sample(self._chain, self._ctx, row)
        self._mask.accept(token)
        return token

    def close(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
