"""The baseline: a batched greedy decode loop on llama.cpp alone (no engine, no server, no MCP).

Same model, context settings, prompt tokens and lengths as the server gets: the ceiling the engine's
batching is measured against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import llama_cpp

from engine.llama.cpp.log import quiet_llama_logs


@dataclass
class RawRun:
    tokens: int
    seconds: float
    ttft_s: list[float]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def raw_batched_decode(
    model_path: str, prompts: list[list[int]], max_tokens: int, *, context_per_sequence: int, threads: int
) -> RawRun:
    quiet_llama_logs()
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(model_path.encode(), llama_cpp.llama_model_default_params())
    n = len(prompts)
    capacity = sum(len(p) for p in prompts) + n
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = context_per_sequence * n
    params.n_batch = params.n_ubatch = capacity
    params.n_seq_max = n
    params.n_threads = params.n_threads_batch = threads
    params.kv_unified = False
    params.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(capacity, 0, 1)
    samplers = [llama_cpp.llama_sampler_init_greedy() for _ in range(n)]
    try:
        start = time.perf_counter()
        # step 0: every prompt; then one token per sequence per step
        rows = []
        k = 0
        for s, prompt in enumerate(prompts):
            for i, tok in enumerate(prompt):
                batch.token[k], batch.pos[k], batch.n_seq_id[k] = tok, i, 1
                batch.seq_id[k][0] = s
                batch.logits[k] = i == len(prompt) - 1
                k += 1
            rows.append(k - 1)
        batch.n_tokens = k
        positions = [len(p) for p in prompts]
        generated = 0
        ttft: list[float] = []
        for step in range(max_tokens):
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            tokens = [llama_cpp.llama_sampler_sample(samplers[s], ctx, rows[s]) for s in range(n)]
            generated += n
            if step == 0:
                ttft = [time.perf_counter() - start] * n
            for s, tok in enumerate(tokens):
                batch.token[s], batch.pos[s], batch.n_seq_id[s] = tok, positions[s], 1
                batch.seq_id[s][0] = s
                batch.logits[s] = True
                positions[s] += 1
            batch.n_tokens = n
            rows = list(range(n))
        return RawRun(generated, time.perf_counter() - start, ttft)
    finally:
        for sm in samplers:
            llama_cpp.llama_sampler_free(sm)
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
