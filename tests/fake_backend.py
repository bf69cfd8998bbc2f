"""A byte-level fake model for fast tests of the worker, scheduler and async facade.

Tokens are bytes (0-255) plus EOS=256. Each request's sampler replies with `reply` bytes then EOS.
Every decode step is recorded, so tests can see what the scheduler put in it.
"""

from __future__ import annotations

import time

from engine.backend import ModelInfo
from engine.config import EngineConfig
from engine.request import SamplingParams
from engine.scheduler import StepPlan
from engine.sequence import Sequence

EOS = 256


class FakeSampler:
    def __init__(self, reply: bytes) -> None:
        self._tokens = [*reply, EOS]
        self._i = 0
        self.closed = False

    def sample(self, row: int) -> int:
        token = self._tokens[min(self._i, len(self._tokens) - 1)]
        self._i += 1
        return token

    def close(self) -> None:
        self.closed = True


class FakeBackend:
    def __init__(self, config: EngineConfig, *, reply: bytes = b"hello world", step_seconds: float = 0.0) -> None:
        self.context_per_sequence = config.context_per_sequence
        self.info = ModelInfo("fake", "fake", "fake", 0, 0, 0, config.context_per_sequence, config.max_sequences, False)
        self.reply = reply
        self.step_seconds = step_seconds
        self.steps: list[list[tuple[int, int, int, bool]]] = []  # per step: (request id, n tokens, pos, samples)
        self.kv: dict[int, int] = {}  # seq id → highest position
        self.moves: list[tuple[int, int]] = []
        self.adapter_sets: list[list[tuple[object, float]]] = []
        self.closed = False

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return list(text.encode())

    def token_bytes(self, token: int) -> bytes:
        return b"" if token == EOS else bytes([token])

    def token_text(self, token: int) -> str:
        return "</s>" if token == EOS else chr(token)

    def is_eog(self, token: int) -> bool:
        return token == EOS

    bos_token = EOS
    eos_token = EOS
    adds_bos = False

    def chat_template(self) -> str | None:
        return None

    def new_sampler(self, params: SamplingParams) -> FakeSampler:
        return FakeSampler(self.reply)

    def run_step(self, plan: StepPlan) -> list[tuple[Sequence, int]]:
        if self.step_seconds:
            time.sleep(self.step_seconds)
        for src, dst in plan.moves:
            self.moves.append((src, dst))
            self.kv[dst] = self.kv.pop(src)
        self.steps.append([(c.seq.request_id, len(c.tokens), c.start_pos, c.samples) for c in plan.chunks])
        rows = []
        n = 0
        for c in plan.chunks:
            self.kv[c.seq.seq_id] = c.start_pos + len(c.tokens) - 1
            n += len(c.tokens)
            if c.samples:
                rows.append((c.seq, n - 1))
        return rows

    def free_sequence(self, seq_id: int) -> None:
        self.kv.pop(seq_id, None)

    def sequence_max_position(self, seq_id: int) -> int:
        return self.kv.get(seq_id, -1)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def load_adapter(self, opened: object) -> object:
        return object()

    def free_adapter(self, handle: object) -> None:
        pass

    def set_adapters(self, adapters: list[tuple[object, float]]) -> None:
        self.adapter_sets.append(adapters)

    def close(self) -> None:
        self.closed = True
