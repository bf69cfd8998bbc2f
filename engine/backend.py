"""What the worker needs from a model backend. `LlamaRuntime` is the real one; tests may bring a fake."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from engine.request import SamplingParams
from engine.sequence import Sampler, Sequence

if TYPE_CHECKING:
    from engine.scheduler import StepPlan


@dataclass(frozen=True)
class ModelInfo:
    path: str
    description: str
    architecture: str
    parameters: int
    size_bytes: int
    trained_context: int
    context_per_sequence: int
    max_sequences: int
    has_chat_template: bool


class Backend(Protocol):
    info: ModelInfo
    context_per_sequence: int

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...
    def token_bytes(self, token: int) -> bytes: ...
    def token_text(self, token: int) -> str: ...
    def is_eog(self, token: int) -> bool: ...
    @property
    def bos_token(self) -> int: ...
    @property
    def eos_token(self) -> int: ...
    @property
    def adds_bos(self) -> bool: ...
    def chat_template(self) -> str | None: ...
    def new_sampler(self, params: SamplingParams) -> Sampler: ...
    def run_step(self, plan: StepPlan) -> list[tuple[Sequence, int]]: ...
    def free_sequence(self, seq_id: int) -> None: ...
    def sequence_max_position(self, seq_id: int) -> int: ...
    def close(self) -> None: ...
