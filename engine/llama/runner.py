"""What the core needs from a model runner. `LlamaRunner` is the real one; tests bring a fake.

The runner owns the model's mutable state (context, KV, adapter set, per-request samplers) and is only
ever called from the core, on one thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from engine.info import ModelInfo
from engine.llama.adapters.base_model import AdapterBase
from engine.llama.adapters.files import AdapterFileBytes
from engine.llama.scheduling.step import StepOutput, StepPlan
from engine.llama.vocab import Vocab
from engine.request import SamplingParams


class ModelRunner(Protocol):
    info: ModelInfo
    vocab: Vocab  # read-only: the async side tokenizes with it

    def adapter_base(self) -> AdapterBase:
        """The model's architecture, tensor shapes and attention layout, to check and convert adapters against."""
        ...

    def add_sequence(
        self, request_id: int, sampling: SamplingParams, constraint: Any = None, logprobs: int | None = None
    ) -> None:
        """Make the request's sampler (scoring what it samples with `logprobs` alternatives, when not
        None); raising here refuses the request alone."""
        ...

    def remove_sequence(self, request_id: int | None, seq_id: int | None) -> None:
        """Free the request's sampler (if `request_id`) and the slot's context cells (if `seq_id`)."""
        ...

    def interrupt(self) -> None:
        """Called from any thread when a command is queued: an execute() taking several steps
        (StepPlan.max_steps) returns after its current one, so the command waits one step at most."""
        ...

    def execute(self, plan: StepPlan) -> StepOutput:
        """Apply the plan's moves, set each chunk's adapters (its sequence's (handle, scale) pairs),
        decode, and sample every chunk that samples; score the sampled tokens of sequences that asked,
        and the prompt tokens of prompt chunks whose sequences asked (`prompt_logprobs`). It may take up
        to `plan.max_steps` steps (StepOutput.steps), each chunk's sampled token fed to the next."""
        ...

    def rebuild_context(self) -> None:
        """Replace the context with a fresh one (empty cells, no adapter set) after faults left it
        suspect. Called with no sequence left."""
        ...

    def load_adapter(self, file: AdapterFileBytes) -> Any: ...
    def free_adapter(self, handle: Any) -> None: ...
    def kv_cells_used(self, seq_ids: Iterable[int] | None = None) -> int:
        """Cells holding the KV of these sequences (all if None)."""
        ...

    def close(self) -> None: ...
