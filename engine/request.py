"""What a caller asks of the engine: input (raw prompt or chat messages), sampling, adapter set."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_STOP_STRINGS = 16


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant"] = Field(description="Who wrote the message.")
    content: str = Field(max_length=200_000, description="The message text.")


class AdapterRef(BaseModel):
    """One LoRA adapter of a request's adapter set, with the scale it is applied at."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="A loaded adapter's name.")
    scale: float = Field(1.0, ge=-4.0, le=4.0, description="Strength; 1.0 as trained, 0 disables it.")


# A request's adapter set in canonical form: sorted (name, scale) pairs. Requests with equal keys can
# share a decode step; the empty key is the base model.
AdapterKey = tuple[tuple[str, float], ...]


class SamplingParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(0.7, ge=0.0, le=5.0, description="0 means greedy decoding.")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0, le=1000, description="0 disables top-k.")
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.1, ge=0.5, le=2.0, description="1.0 disables the penalty.")
    repeat_last_n: int = Field(64, ge=0, le=4096)
    seed: int | None = Field(None, ge=0, le=2**32 - 2, description="Fixed seed for reproducible sampling.")
    max_tokens: int = Field(256, ge=1, le=32768)
    stop: tuple[str, ...] = Field((), max_length=MAX_STOP_STRINGS)
    ignore_eos: bool = Field(False, description="Generate exactly max_tokens (benchmarks).")

    @model_validator(mode="after")
    def _stops_not_empty(self) -> SamplingParams:
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")
        return self


class GenerateRequest(BaseModel):
    """Exactly one of `prompt` (raw text, no chat template) or `messages` (rendered with the model's template)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    sampling: SamplingParams = SamplingParams()
    adapters: tuple[AdapterRef, ...] = ()

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        if self.prompt is not None and not self.prompt:
            raise ValueError("prompt must not be empty")
        if self.messages is not None and not self.messages:
            raise ValueError("messages must not be empty")
        names = [a.name for a in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError("each adapter may appear once in a request's adapter set")
        return self

    @property
    def adapter_key(self) -> AdapterKey:
        return tuple(sorted((a.name, a.scale) for a in self.adapters if a.scale != 0.0))
