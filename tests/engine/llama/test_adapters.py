"""LoRA adapters on the real model: loading, validation, path confinement, per-request sets, hot-swap."""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from engine import AdapterRef, ChatMessage, EngineConfig, GenerateRequest, InvalidRequest, SamplingParams
from engine.default_model import default_model_path
from engine.llama import LlamaEngine
from tests.adapter_factory import slow_adapter_reads, write_lora

pytestmark = pytest.mark.anyio

QUESTION = (ChatMessage(role="user", content="Tell me a short story about a dragon."),)
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


def request(
    *names: str, sampling: SamplingParams = GREEDY, text: tuple[ChatMessage, ...] = QUESTION
) -> GenerateRequest:
    return GenerateRequest(messages=text, sampling=sampling, adapters=tuple(AdapterRef(name=n) for n in names))


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("adapters")
    for i in range(4):
        write_lora(d / f"lora{i}.gguf", seed=i, strength=0.05)
    return d


@pytest.fixture(scope="module")
async def lora_engine(anyio_backend: str, adapter_dir: Path) -> AsyncIterator[LlamaEngine]:
    async with LlamaEngine(EngineConfig(max_sequences=8, context_per_sequence=512, adapter_dirs=(adapter_dir,))) as eng:
        for i in range(3):
            await eng.load_adapter(f"a{i}", f"lora{i}.gguf")
        yield eng


async def test_load_reports_metadata_and_is_idempotent(lora_engine: LlamaEngine, adapter_dir: Path) -> None:
    loaded = await lora_engine.load_adapter("meta", "lora3.gguf")
    info, new = loaded.adapter, loaded.newly_loaded
    assert new and info.rank == 8 and info.alpha == 16.0 and info.architecture == "llama"
    assert info.target_modules == ("attn_output", "attn_v", "ffn_down")
    assert (
        info.path == str(adapter_dir / "lora3.gguf") and info.file_size == (adapter_dir / "lora3.gguf").stat().st_size
    )
    again = await lora_engine.load_adapter("meta", "lora3.gguf")
    assert not again.newly_loaded and again.adapter.loaded_at == info.loaded_at and again.adapter.version == 1
    other = await lora_engine.load_adapter("meta", "lora2.gguf")  # other content: a new version
    assert other.newly_loaded and other.adapter.version == 2 and other.replaced_sha256 == info.sha256
    await lora_engine.unload_adapter("meta")
    assert "meta" not in {a.name for a in (await lora_engine.list_adapters()).adapters}


async def test_adapters_change_the_output(lora_engine: LlamaEngine) -> None:
    texts = {(await lora_engine.complete(request(*names))).text for names in [(), ("a0",), ("a1",), ("a0", "a1")]}
    assert len(texts) == 4


async def mixed_batch_matches_solo(eng: LlamaEngine) -> dict[int, int]:
    """Eight requests over five adapter sets at once give exactly their solo texts; returns how many
    steps carried each number of sequences meanwhile."""
    sets = [(), ("a0",), ("a1",), ("a2",), ("a0", "a1"), (), ("a0",), ("a2",)]
    alone = [(await eng.complete(request(*s))).text for s in sets]
    results: dict[int, str] = {}

    async def one(i: int) -> None:
        results[i] = (await eng.complete(request(*sets[i]))).text

    before = eng.stats()
    async with anyio.create_task_group() as tg:
        for i in range(len(sets)):
            tg.start_soon(one, i)
    after = eng.stats()
    assert [results[i] for i in range(len(sets))] == alone
    assert after.backend_value("adapter_set_switches") > before.backend_value("adapter_set_switches")
    return {n: c - before.sequences_per_step.get(n, 0) for n, c in after.sequences_per_step.items()}


async def test_each_request_in_a_mixed_batch_gets_exactly_its_adapter_set(lora_engine: LlamaEngine) -> None:
    """Different adapter sets share decode steps (loramux's llama.cpp patch: per-sequence scales)."""
    steps = await mixed_batch_matches_solo(lora_engine)
    assert max(n for n, c in steps.items() if c) == 8


async def test_eight_adapters_on_every_projection_decode_together(tmp_path: Path) -> None:
    """Eight distinct rank-16 adapters on five projection types in every layer, all in one decode: the
    graph has room for them all (an undersized node budget once aborted the process here), and each
    request still gets exactly its solo text."""
    targets = ("attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    for i in range(8):
        write_lora(tmp_path / f"l{i}.gguf", rank=16, alpha=32, seed=i, strength=0.02, targets=targets)
    sampling = SamplingParams(temperature=0.0, max_tokens=12)
    async with LlamaEngine(EngineConfig(max_sequences=8, context_per_sequence=512, adapter_dirs=(tmp_path,))) as eng:
        for i in range(8):
            await eng.load_adapter(f"l{i}", f"l{i}.gguf")
        requests = [request(f"l{i}", sampling=sampling) for i in range(8)]
        alone = [(await eng.complete(r)).text for r in requests]
        together: dict[int, str] = {}

        async def one(i: int) -> None:
            together[i] = (await eng.complete(requests[i])).text

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
        assert max(eng.stats().sequences_per_step) == 8
    assert [together[i] for i in range(8)] == alone
    assert len(set(alone)) > 1  # the adapters do differ


async def test_without_mixing_adapter_sets_take_turns_and_still_match_solo(adapter_dir: Path) -> None:
    config = EngineConfig(max_sequences=8, context_per_sequence=512, adapter_dirs=(adapter_dir,), mix_adapters=False)
    async with LlamaEngine(config) as eng:
        for i in range(3):
            await eng.load_adapter(f"a{i}", f"lora{i}.gguf")
        steps = await mixed_batch_matches_solo(eng)
    assert max(n for n, c in steps.items() if c) <= 2  # the largest set has two requests


async def test_unknown_adapter_lists_the_loaded_ones(lora_engine: LlamaEngine) -> None:
    with pytest.raises(InvalidRequest, match=r"no adapter named 'nope'.*a0, a1, a2"):
        await lora_engine.complete(request("nope"))


async def test_unloading_an_adapter_in_use_is_refused_until_its_requests_finish(lora_engine: LlamaEngine) -> None:
    await lora_engine.load_adapter("busy", "lora3.gguf")
    long = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    async with lora_engine.generate(request("busy", sampling=long)) as stream:
        async for _ in stream:
            break
        with pytest.raises(InvalidRequest, match=r"'busy' is used by 1 queued or running request"):
            await lora_engine.unload_adapter("busy")
    info = await lora_engine.unload_adapter("busy")  # the stream was aborted on leaving the block
    assert info.requests_served == 1


async def test_streams_across_adapters_survive_loads_and_unloads(lora_engine: LlamaEngine) -> None:
    sets = [(), ("a0",), ("a1",), ("a2",)] * 2
    sampling = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    alone = [(await lora_engine.complete(request(*s, sampling=sampling))).text for s in sets]
    streamed: dict[int, str] = {}
    done = anyio.Event()

    async def stream(i: int) -> None:
        async with lora_engine.generate(request(*sets[i], sampling=sampling)) as s:
            streamed[i] = "".join([d.text async for d in s])
            assert s.result is not None and s.result.finish_reason == "length"

    async def churn() -> None:
        n = 0
        while not done.is_set():
            await lora_engine.load_adapter("churn", f"lora{n % 4}.gguf")
            await lora_engine.unload_adapter("churn")
            n += 1
        assert n >= 3

    async with anyio.create_task_group() as tg:
        tg.start_soon(churn)
        async with anyio.create_task_group() as streams:
            for i in range(len(sets)):
                streams.start_soon(stream, i)
        done.set()
    assert [streamed[i] for i in range(len(sets))] == alone


# -- bad files: each gets a clear error, and the engine serves a good request afterwards -------------


def _bad_files(d: Path) -> dict[str, tuple[str, str]]:
    """file name → (how it was made, expected error)."""
    (d / "random.gguf").write_bytes(os.urandom(4096))
    (d / "empty.gguf").write_bytes(b"")
    good = (d / "lora0.gguf").read_bytes()
    (d / "truncated.gguf").write_bytes(good[: len(good) // 3])
    (d / "header_only.gguf").write_bytes(good[:40])
    write_lora(d / "model_type.gguf", general_type="model", layers=range(1))
    write_lora(d / "other_arch.gguf", arch="qwen2", layers=range(1))
    write_lora(d / "wrong_shape.gguf", wrong_shape=True, layers=range(2))
    write_lora(d / "unknown_tensor.gguf", unknown_tensor=True, layers=range(1))
    write_lora(d / "missing_b.gguf", missing_b=True, layers=range(1))
    write_lora(d / "not_lora.gguf", adapter_type="control_vector", layers=range(1))
    (d / "a_directory.gguf").mkdir(exist_ok=True)
    return {
        "random.gguf": ("random bytes", "not a GGUF file"),
        "empty.gguf": ("empty", "is empty"),
        "truncated.gguf": ("a third of a good adapter", "truncated"),
        "header_only.gguf": ("40 bytes of a good adapter", "truncated or corrupt"),
        "model_type.gguf": ("general.type = model", "not a LoRA adapter"),
        "other_arch.gguf": ("an adapter for qwen2", "'qwen2' architecture"),
        "wrong_shape.gguf": ("lora_a one column too wide", "has shape"),
        "unknown_tensor.gguf": ("adapts blk.99", "does not have"),
        "missing_b.gguf": ("lora_a without lora_b", "to pair with"),
        "not_lora.gguf": ("adapter.type = control_vector", "only 'lora' adapters"),
        "a_directory.gguf": ("a directory", "is a folder without adapter_config.json"),
    }


@pytest.fixture(scope="module")
def bad_dir(adapter_dir: Path) -> dict[str, tuple[str, str]]:
    return _bad_files(adapter_dir)


@pytest.mark.parametrize(
    "name",
    [
        "random.gguf",
        "empty.gguf",
        "truncated.gguf",
        "header_only.gguf",
        "model_type.gguf",
        "other_arch.gguf",
        "wrong_shape.gguf",
        "unknown_tensor.gguf",
        "missing_b.gguf",
        "not_lora.gguf",
        "a_directory.gguf",
    ],
)
async def test_bad_adapter_files_are_refused_clearly(lora_engine: LlamaEngine, bad_dir: dict, name: str) -> None:
    _, expected = bad_dir[name]
    with pytest.raises(InvalidRequest, match=expected):
        await lora_engine.load_adapter("bad", name)
    assert "bad" not in {a.name for a in (await lora_engine.list_adapters()).adapters}
    ok = await lora_engine.complete(request("a0", sampling=SamplingParams(max_tokens=4)))
    assert ok.usage.completion_tokens >= 1


async def test_the_base_model_itself_is_refused_as_an_adapter(lora_engine: LlamaEngine, adapter_dir: Path) -> None:
    shutil.copy(default_model_path(), adapter_dir / "base_model.gguf")
    with pytest.raises(InvalidRequest, match="a full model, not a LoRA adapter"):
        await lora_engine.load_adapter("bad", "base_model.gguf")


# -- paths: nothing outside the adapter directories is ever opened -------------------------------------


@pytest.fixture(scope="module")
def outside_file(tmp_path_factory: pytest.TempPathFactory, adapter_dir: Path) -> Path:
    outside = tmp_path_factory.mktemp("outside")
    secret = write_lora(outside / "secret.gguf", layers=range(1))  # a valid adapter, but in the wrong place
    (adapter_dir / "escape.gguf").symlink_to(secret)
    (adapter_dir / "sub").mkdir(exist_ok=True)
    (adapter_dir / "sub" / "inner.gguf").symlink_to(adapter_dir / "lora1.gguf")  # stays inside: allowed
    return secret


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/etc/passwd", "not inside an adapter directory"),
        (str(Path.home() / ".bashrc"), "not inside an adapter directory|outside the adapter directories"),
        ("../outside/secret.gguf", "'..' is not allowed"),
        ("sub/../../etc/passwd", "'..' is not allowed"),
        ("escape.gguf", "outside the adapter directories"),
        ("does_not_exist.gguf", "no adapter file"),
        ("", "give the adapter file"),
    ],
)
async def test_paths_outside_the_adapter_directories_are_refused(
    lora_engine: LlamaEngine, outside_file: Path, path: str, expected: str
) -> None:
    with pytest.raises(InvalidRequest, match=expected):
        await lora_engine.load_adapter("bad", path)
    ok = await lora_engine.complete(request(sampling=SamplingParams(max_tokens=4)))
    assert ok.usage.completion_tokens >= 1


async def test_absolute_path_to_the_secret_is_refused(lora_engine: LlamaEngine, outside_file: Path) -> None:
    with pytest.raises(InvalidRequest, match="not inside an adapter directory"):
        await lora_engine.load_adapter("bad", str(outside_file))


async def test_paths_inside_the_adapter_directories_are_accepted(
    lora_engine: LlamaEngine, adapter_dir: Path, outside_file: Path
) -> None:
    for name, path in [("inner", "sub/inner.gguf"), ("absolute", str(adapter_dir / "lora2.gguf"))]:
        info = (await lora_engine.load_adapter(name, path)).adapter
        assert Path(info.path).is_relative_to(adapter_dir)
        await lora_engine.unload_adapter(name)


async def test_invalid_adapter_names_are_refused(lora_engine: LlamaEngine) -> None:
    for name in ["", "has space", "../x", "a" * 65]:
        with pytest.raises(InvalidRequest, match="adapter name"):
            await lora_engine.load_adapter(name, "lora0.gguf")


# -- files that block: nothing stalls the decode thread --------------------------------------------------


@pytest.fixture(scope="module")
def special_files(adapter_dir: Path) -> dict[str, str]:
    os.mkfifo(adapter_dir / "fifo.gguf")
    made = {"fifo.gguf": "not a regular file"}
    try:
        os.mknod(adapter_dir / "device.gguf", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero
        made["device.gguf"] = "not a regular file"
    except PermissionError:
        pass  # not root: the FIFO covers the blocking-open case
    return made


async def test_fifos_and_devices_are_refused_without_blocking(
    lora_engine: LlamaEngine, special_files: dict[str, str]
) -> None:
    for name, expected in special_files.items():
        with anyio.fail_after(5):  # a blocking open of a FIFO would wait for a writer forever
            with pytest.raises(InvalidRequest, match=expected):
                await lora_engine.load_adapter("bad", name)


async def test_streams_keep_generating_while_an_adapter_file_is_read_slowly(
    lora_engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_adapter_reads(monkeypatch, 1.5)
    sampling = SamplingParams(temperature=0.0, max_tokens=2000, ignore_eos=True)
    arrivals: list[float] = []
    window: list[float] = []

    async def stream(i: int) -> None:
        async with lora_engine.generate(request(*([f"a{i % 3}"] if i else []), sampling=sampling)) as s:
            async for _ in s:
                arrivals.append(time.monotonic())
                if len(window) == 2:
                    break

    async def load() -> None:
        await anyio.sleep(0.5)
        window.append(time.monotonic())
        loaded = await lora_engine.load_adapter("slow", "lora3.gguf")
        window.append(time.monotonic())
        assert loaded.newly_loaded

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(stream, i)
        tg.start_soon(load)
    during = [t for t in arrivals if window[0] < t < window[1]]
    assert window[1] - window[0] >= 1.5
    assert len(during) >= 20  # the streams generated all along (a stalled decode thread gives none)
    await lora_engine.unload_adapter("slow")
