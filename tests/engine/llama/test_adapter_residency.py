"""Adapters on the real model at scale: loaded on first use, a residency budget with LRU eviction and
pins, never evicting one in use, and no prefix-cache entry outliving the weights it was computed with."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from engine import AdapterRef, ChatMessage, EngineBusy, EngineConfig, GenerateRequest, SamplingParams, UnknownAdapter
from engine.llama import LlamaEngine
from tests.adapter_factory import slow_adapter_reads, write_lora

pytestmark = pytest.mark.anyio

QUESTION = (ChatMessage(role="user", content="Name three colours."),)
GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


def ask(*names: str, sampling: SamplingParams = GREEDY) -> GenerateRequest:
    return GenerateRequest(messages=QUESTION, sampling=sampling, adapters=tuple(AdapterRef(name=n) for n in names))


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("adapters")
    for i in range(5):
        write_lora(d / f"l{i}.gguf", seed=i, strength=0.05)
    return d


@pytest.fixture
async def engine(anyio_backend: str, adapter_dir: Path) -> AsyncIterator[LlamaEngine]:
    config = EngineConfig(max_sequences=4, context_per_sequence=512, adapter_dirs=(adapter_dir,), max_loaded_adapters=2)
    async with LlamaEngine(config) as eng:
        yield eng


async def resident(engine: LlamaEngine) -> list[str]:
    return sorted(a.name for a in (await engine.list_adapters()).adapters)


async def test_loading_past_the_budget_evicts_the_least_recently_used(engine: LlamaEngine) -> None:
    await engine.load_adapter("l0", "l0.gguf")
    await engine.load_adapter("l1", "l1.gguf")
    await engine.complete(ask("l0"))  # l1 is now the least recently used
    loaded = await engine.load_adapter("l2", "l2.gguf")
    assert loaded.evicted == ["l1"] and await resident(engine) == ["l0", "l2"]
    await engine.complete(ask("l3"))  # first use: evicts l0 (l2 was loaded after l0's last use)
    assert await resident(engine) == ["l2", "l3"]
    stats = engine.stats()
    assert stats.adapter_evictions == 2 and stats.adapter_first_use_loads == 1 and stats.adapters_loaded == 2


async def test_pinned_adapters_stay(engine: LlamaEngine) -> None:
    await engine.load_adapter("l0", "l0.gguf", pin=True)
    await engine.load_adapter("l1", "l1.gguf")
    for name in ("l2", "l3", "l4"):
        await engine.complete(ask(name))
    listing = await engine.list_adapters()
    assert sorted(a.name for a in listing.adapters) == ["l0", "l4"]
    (l0,) = [a for a in listing.adapters if a.name == "l0"]
    assert l0.pinned and listing.max_loaded_adapters == 2 and listing.auto_load
    await engine.load_adapter("l4", "l4.gguf", pin=True)  # pinning a resident adapter: no reload
    with pytest.raises(EngineBusy, match="pinned or used"):
        await engine.complete(ask("l1"))


async def test_an_adapter_in_use_is_never_evicted(engine: LlamaEngine) -> None:
    long = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    async with engine.generate(ask("l0", sampling=long)) as stream:
        async for _ in stream:
            # l0 is the least recently loaded, but it is generating: l1 goes instead
            await engine.load_adapter("l1", "l1.gguf")
            await engine.load_adapter("l2", "l2.gguf")
            assert await resident(engine) == ["l0", "l2"]
            with pytest.raises(EngineBusy):  # l2 idle is evicted for l3; then l3 ... only if idle
                async with engine.generate(ask("l3", "l4", sampling=GREEDY)):
                    pass
            break
    assert "l0" in await resident(engine)


async def test_concurrent_first_uses_load_once(engine: LlamaEngine) -> None:
    texts: list[str] = []

    async def one() -> None:
        texts.append((await engine.complete(ask("l1"))).text)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(one)
    assert len(set(texts)) == 1 and engine.stats().adapter_first_use_loads == 1 and engine.stats().adapter_loads == 1
    with pytest.raises(UnknownAdapter, match=r"no .nowhere.gguf. or adapter folder .nowhere/."):
        await engine.complete(ask("nowhere"))


async def test_no_prefix_cache_entry_outlives_its_weights(adapter_dir: Path) -> None:
    """Unload a name and load other weights under it: a prompt cached under the old weights is not reused."""
    config = EngineConfig(max_sequences=2, context_per_sequence=512, adapter_dirs=(adapter_dir,))
    async with LlamaEngine(config) as eng:
        truth = (await eng.complete(ask("l1"))).text  # l1's own text (first use)
        await eng.load_adapter("x", "l0.gguf")
        await eng.complete(ask("x"))
        await eng.complete(ask("x"))
        hits = eng.stats().prefix_hits
        assert hits >= 1  # the prompt is cached under x
        await eng.unload_adapter("x")
        await eng.load_adapter("x", "l1.gguf")
        assert (await eng.complete(ask("x"))).text == truth
        assert eng.stats().prefix_hits == hits


async def test_a_first_use_load_holds_up_only_its_own_call(
    engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_adapter_reads(monkeypatch, 1.5)
    arrivals: list[float] = []
    window: list[float] = []

    async def base_stream() -> None:
        async with engine.generate(
            ask(sampling=SamplingParams(temperature=0.0, max_tokens=2000, ignore_eos=True))
        ) as s:
            async for _ in s:
                arrivals.append(time.monotonic())
                if len(window) == 2:
                    break

    async def first_use() -> None:
        await anyio.sleep(0.5)
        window.append(time.monotonic())
        await engine.complete(ask("l4", sampling=SamplingParams(temperature=0.0, max_tokens=1)))
        window.append(time.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(base_stream)
        tg.start_soon(first_use)
    assert window[1] - window[0] >= 1.5  # the call waited for its adapter's load
    assert len([t for t in arrivals if window[0] < t < window[1]]) >= 20  # the other call generated all along


async def test_a_long_listing_says_it_is_cut(tmp_path: Path) -> None:
    for i in range(205):
        (tmp_path / f"x{i:03d}.gguf").write_bytes(b"")  # listed by name: never read
    config = EngineConfig(max_sequences=1, context_per_sequence=256, adapter_dirs=(tmp_path,))
    async with LlamaEngine(config) as eng:
        listing = await eng.list_adapters()
    assert len(listing.available_files) == 200 and listing.available_files_truncated
