"""The tools' structured outputs. They extend or reuse the engine's types (engine/info.py, result.py)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from engine import AdapterRef, GenerationResult


class InferenceResult(GenerationResult):
    model: str = Field(description="The served model.")
    adapters: list[AdapterRef] = Field(description="The adapter set the text was generated with.")


class UnloadAdapterResult(BaseModel):
    name: str
    unloaded: bool
    requests_served: int
