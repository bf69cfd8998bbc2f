from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from engine import EngineConfig
from engine.llama import LlamaEngine


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
async def engine(anyio_backend: str) -> AsyncIterator[LlamaEngine]:
    """One real engine on the default model, shared by the engine tests."""
    async with LlamaEngine(EngineConfig(max_sequences=8, context_per_sequence=1024)) as eng:
        yield eng
