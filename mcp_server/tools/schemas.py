"""The tools' structured outputs. They extend or reuse the engine's types (engine/info.py, result.py)."""

from __future__ import annotations

import warnings
from typing import Any

from pydantic import BaseModel, Field

from engine import AdapterRef, GenerationResult

with warnings.catch_warnings():
    # `json` is the name agents read; it shadows only pydantic's deprecated BaseModel.json() method
    warnings.filterwarnings("ignore", message='Field name "json"', category=UserWarning)

    class InferenceResult(GenerationResult):
        model: str = Field(description="The served model.")
        adapters: list[AdapterRef] = Field(description="The adapter set the text was generated with.")
        json: Any = Field(None, description="With `json_schema`: the value the text holds (valid for the schema).")


class UnloadAdapterResult(BaseModel):
    name: str
    unloaded: bool
    requests_served: int
