from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

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


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[None]:
    """A local Ray for the tests of the Ray backend (2 CPUs: this machine's), shared by the session."""
    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, namespace="loramux", configure_logging=False)
    yield
    serve.shutdown()
    ray.shutdown()
