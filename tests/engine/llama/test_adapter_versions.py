"""Versioned reload on the real model: a name loaded again with other content (by a load, or by
--watch-adapters noticing the file change) is a new version; running requests finish on the old one,
which is freed when they end; no prefix-cache entry of the old version is ever reused; compare-and-swap."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import pytest

from engine import (
    AdapterRef,
    AdapterVersionMismatch,
    ChatMessage,
    EngineConfig,
    GenerateRequest,
    SamplingParams,
)
from engine.llama import LlamaEngine
from tests.adapter_factory import write_lora
from tests.fake_runner import FakeRunner

pytestmark = pytest.mark.anyio

QUESTION = (ChatMessage(role="user", content="Describe a quiet morning in a small town."),)
LONG = SamplingParams(temperature=0.0, max_tokens=120, ignore_eos=True)


def ask(name: str | None, sampling: SamplingParams = LONG) -> GenerateRequest:
    return GenerateRequest(messages=QUESTION, sampling=sampling, adapters=(AdapterRef(name=name),) if name else ())


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("versions")
    write_lora(d / "v1.gguf", seed=11, strength=0.06)
    write_lora(d / "v2.gguf", seed=12, strength=0.06)
    return d


@pytest.fixture(scope="module")
async def truths(anyio_backend: str, files: Path) -> dict[str, str]:
    """Each file's own text, under names nothing else uses."""
    async with LlamaEngine(EngineConfig(max_sequences=2, context_per_sequence=512, adapter_dirs=(files,))) as eng:
        return {v: (await eng.complete(ask(v))).text for v in ("v1", "v2")}


async def test_a_reload_while_a_request_streams(files: Path, truths: dict[str, str]) -> None:
    config = EngineConfig(max_sequences=2, context_per_sequence=512, adapter_dirs=(files,))
    async with LlamaEngine(config) as eng:
        first = await eng.load_adapter("x", "v1.gguf")
        async with eng.generate(ask("x")) as stream:
            parts = []
            async for delta in stream:
                parts.append(delta.text)
                if len(parts) == 3:  # mid-stream: x becomes v2
                    reloaded = await eng.load_adapter("x", "v2.gguf", expect_sha256=first.adapter.sha256)
                    assert reloaded.newly_loaded and reloaded.adapter.version == 2
                    assert reloaded.replaced_sha256 == first.adapter.sha256
        assert "".join(parts) == truths["v1"]  # it finished on the version it started with
        assert stream.result is not None and stream.result.receipt.adapters[0].sha256 == first.adapter.sha256
        after = await eng.complete(ask("x"))
        assert after.text == truths["v2"] and after.receipt.adapters[0].sha256 == reloaded.adapter.sha256
        with pytest.raises(AdapterVersionMismatch, match="not at the expected"):
            await eng.load_adapter("x", "v1.gguf", expect_sha256=first.adapter.sha256)
        assert eng.stats().adapter_reloads == 1


async def test_no_prefix_cache_entry_of_an_old_version_is_reused(files: Path, truths: dict[str, str]) -> None:
    config = EngineConfig(max_sequences=2, context_per_sequence=512, adapter_dirs=(files,))
    async with LlamaEngine(config) as eng:
        await eng.load_adapter("x", "v1.gguf")
        assert (await eng.complete(ask("x"))).text == truths["v1"]
        assert (await eng.complete(ask("x"))).text == truths["v1"]
        hits = eng.stats().prefix_hits
        assert hits >= 1  # the prompt is cached under x's version 1
        await eng.load_adapter("x", "v2.gguf")
        assert (await eng.complete(ask("x"))).text == truths["v2"]
        assert eng.stats().prefix_hits == hits  # version 1's entry was not reused
        assert (await eng.complete(ask("x"))).text == truths["v2"]
        assert eng.stats().prefix_hits == hits + 1  # version 2's own entry is


async def test_watched_files_reload_when_they_change(tmp_path: Path, files: Path, truths: dict[str, str]) -> None:
    shutil.copy(files / "v1.gguf", tmp_path / "w.gguf")
    config = EngineConfig(max_sequences=2, context_per_sequence=512, adapter_dirs=(tmp_path,), watch_adapters=True)
    async with LlamaEngine(config) as eng:
        assert (await eng.complete(ask("w"))).text == truths["v1"]  # loaded on first use
        shutil.copy(files / "v2.gguf", tmp_path / "w.tmp")
        os.replace(tmp_path / "w.tmp", tmp_path / "w.gguf")  # how trainers should save: atomically
        with anyio.fail_after(10):
            while eng.stats().adapter_reloads < 1:  # noqa: ASYNC110 (the watcher polls; no event to wait on)
                await anyio.sleep(0.1)
        assert (await eng.complete(ask("w"))).text == truths["v2"]
        (tmp_path / "w.gguf").write_bytes(b"GGUF half-written")  # in place, caught half-way: kept as it was
        await anyio.sleep(2.5)
        assert eng.stats().adapter_reloads == 1 and (await eng.complete(ask("w"))).text == truths["v2"]
        (tmp_path / "w.gguf").write_bytes((files / "v1.gguf").read_bytes())  # the write completes
        with anyio.fail_after(10):
            while eng.stats().adapter_reloads < 2:  # noqa: ASYNC110
                await anyio.sleep(0.1)
        assert (await eng.complete(ask("w"))).text == truths["v1"]


async def test_the_old_version_is_freed_when_its_last_request_ends(files: Path) -> None:
    runner: FakeRunner | None = None

    def factory(config: EngineConfig) -> FakeRunner:
        nonlocal runner
        runner = FakeRunner(config, like_default_model=True, step_seconds=0.01)
        return runner

    config = EngineConfig(max_sequences=2, context_per_sequence=256, adapter_dirs=(files,))
    async with LlamaEngine(config, factory) as eng:
        await eng.load_adapter("x", "v1.gguf")
        assert runner is not None
        async with eng.generate(ask("x", SamplingParams(max_tokens=50, ignore_eos=True))) as stream:
            async for _ in stream:
                await eng.load_adapter("x", "v2.gguf")
                assert runner.live_adapters == 2  # v1 is still held
                break
        with anyio.fail_after(5):
            while runner.live_adapters != 1:  # noqa: ASYNC110 (the core frees it between steps)
                await anyio.sleep(0.01)
        await eng.load_adapter("x", "v1.gguf")  # nothing holds v2: freed at once
        assert runner.live_adapters == 1
