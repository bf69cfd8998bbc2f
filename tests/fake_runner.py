"""A byte-level fake model runner for fast tests of the core, scheduler and async facade.

Tokens are bytes (0-255) plus EOS=256. Each request's sampler replies with `reply` bytes then EOS.
Every executed step is recorded, so tests can see what the scheduler put in it. Faults can be injected:
`fail_decodes` (the next N decodes fail), `raise_in_execute` (the next N steps raise: a bug),
`failing_sampler` (a predicate on a request's sampling).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from engine.config import EngineConfig
from engine.default_model import default_model_path
from engine.errors import EngineFailure
from engine.info import Capabilities, ModelInfo
from engine.llama.adapters.base_model import AdapterBase
from engine.llama.adapters.validation import AdapterFileError
from engine.llama.scheduling.step import StepOutput, StepPlan
from engine.request import SamplingParams

EOS = 256


class FakeVocab:
    bos_token = EOS
    eos_token = EOS
    adds_bos = False

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return list(text.encode())

    def token_bytes(self, token: int) -> bytes:
        return b"" if token == EOS else bytes([token])

    def token_text(self, token: int) -> str:
        return "</s>" if token == EOS else chr(token)

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def chat_template(self) -> str | None:
        return None


class FakeSampler:
    def __init__(self, reply: bytes) -> None:
        self._tokens = [*reply, EOS]
        self._i = 0

    def sample(self) -> int:
        token = self._tokens[min(self._i, len(self._tokens) - 1)]
        self._i += 1
        return token


class FakeRunner:
    """`like_default_model`: the default model's architecture and tensor shapes, so that real adapter
    files (adapters/caps.gguf) load (as handles that change nothing)."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        reply: bytes = b"hello world",
        step_seconds: float = 0.0,
        like_default_model: bool = False,
    ) -> None:
        self._like_default_model = like_default_model
        self.info = ModelInfo(
            name="fake.gguf",
            description="fake",
            architecture="llama" if like_default_model else "fake",
            parameters=0,
            size_bytes=0,
            context_per_request=config.context_per_sequence,
            max_running_requests=config.max_sequences,
            capabilities=Capabilities(mixed_adapter_sets=config.mix_adapters, constrained_output=False),
        )
        self.vocab = FakeVocab()
        self.reply = reply
        self.step_seconds = step_seconds
        self.samplers: dict[int, FakeSampler] = {}
        self.steps: list[list[tuple[int, int, int, bool]]] = []  # per step: (request id, n tokens, pos, samples)
        self.kv: dict[int, int] = {}  # seq id → highest position
        self.moves: list[tuple[int, int]] = []
        self.adapter_sets: list[dict[object, list[tuple[object, float]]]] = []  # per change: each set's handles
        self.fail_decodes = 0
        self.raise_in_execute = 0  # the next N executes raise (a bug, not a reported failure)
        self.rebuilds = 0
        self.refuse_adapters = False  # load_adapter fails as llama.cpp's does for a file it refuses
        self.live_adapters = 0  # loaded and not freed
        self.failing_sampler: Callable[[SamplingParams], bool] = lambda _: False
        self.failing_sampler_at_start: Callable[[SamplingParams], bool] = lambda _: False
        self._sampling: dict[int, SamplingParams] = {}
        self._logprobs: dict[int, int | None] = {}
        self.closed = False
        self.interrupts = 0

    def adapter_base(self) -> AdapterBase:
        if self._like_default_model:
            return AdapterBase.from_model_file(default_model_path())
        return AdapterBase(self.info.architecture, {})

    def add_sequence(
        self, request_id: int, sampling: SamplingParams, constraint: Any = None, logprobs: int | None = None
    ) -> None:
        if self.failing_sampler_at_start(sampling):
            raise RuntimeError("injected sampler construction failure")
        self.samplers[request_id] = FakeSampler(self.reply)
        self._sampling[request_id] = sampling
        self._logprobs[request_id] = logprobs

    def remove_sequence(self, request_id: int | None, seq_id: int | None) -> None:
        self.samplers.pop(request_id, None)
        self._sampling.pop(request_id, None)
        self._logprobs.pop(request_id, None)
        if seq_id is not None:
            self.kv.pop(seq_id, None)

    def interrupt(self) -> None:
        self.interrupts += 1

    def execute(self, plan: StepPlan) -> StepOutput:
        if self.raise_in_execute and plan.chunks:  # before anything, moves included
            self.raise_in_execute -= 1
            raise RuntimeError("injected bug in a decode step")
        for reuse in plan.reuses:
            kept = self.kv.get(reuse.slot if reuse.source is None else reuse.source, -1)
            self.kv[reuse.slot] = min(kept, reuse.keep - 1)
            if self.kv[reuse.slot] < 0:
                del self.kv[reuse.slot]
        for src, dst in plan.moves:
            self.moves.append((src, dst))
            self.kv[dst] = self.kv.pop(src)
        output = StepOutput()
        if not plan.chunks:
            return output
        if self.step_seconds:
            time.sleep(self.step_seconds)
        mixing = self.info.capabilities.mixed_adapter_sets
        assert mixing or len(plan.adapter_keys) == 1, "without mixing a step serves one set"
        adapters = {c.seq.adapter_key: c.seq.adapter_handles for c in plan.chunks}  # each set's handles
        if not self.adapter_sets or self.adapter_sets[-1] != adapters:
            self.adapter_sets.append(adapters)
            output.adapter_switched = True
        if self.fail_decodes:
            self.fail_decodes -= 1
            output.failed = [(c.seq, EngineFailure("injected decode failure")) for c in plan.chunks]
            return output
        self.steps.append([(c.seq.request_id, len(c.tokens), c.start_pos, c.samples) for c in plan.chunks])
        for c in plan.chunks:
            self.kv[c.seq.seq_id] = c.start_pos + len(c.tokens) - 1
            if c.samples:
                if self.failing_sampler(self._sampling[c.seq.request_id]):
                    output.failed.append((c.seq, EngineFailure("injected sampler failure")))
                else:
                    token = self.samplers[c.seq.request_id].sample()
                    output.sampled.append((c.seq, token))
                    if (k := self._logprobs.get(c.seq.request_id)) is not None:  # certain: the reply is fixed
                        output.sampled_scores[c.seq.request_id] = (token, 0.0, ((token, 0.0),)[:k])
            if c.seq.prompt_logprobs and c.start_pos < c.seq.num_prompt_tokens:
                end = min(c.start_pos + len(c.tokens), c.seq.num_prompt_tokens - 1)
                scores = [(c.seq.prompt_tokens[p + 1], -1.0, ()) for p in range(c.start_pos, end)]
                output.prompt_scores.append((c.seq, scores))
        return output

    def rebuild_context(self) -> None:
        assert not self.samplers
        self.kv.clear()
        self.adapter_sets.clear()
        self.rebuilds += 1

    def load_adapter(self, opened: object) -> object:
        if self.refuse_adapters:
            raise AdapterFileError("llama.cpp refused the adapter (injected)")
        self.live_adapters += 1
        return object()

    def free_adapter(self, handle: object) -> None:
        self.live_adapters -= 1

    def kv_cells_used(self, seq_ids: Iterable[int] | None = None) -> int:
        wanted = self.kv if seq_ids is None else set(seq_ids)
        return sum(pos + 1 for seq_id, pos in self.kv.items() if seq_id in wanted)

    def close(self) -> None:
        self.closed = True
