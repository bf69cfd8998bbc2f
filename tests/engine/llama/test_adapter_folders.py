"""PEFT and mlx-lm folders on the real model: the greedy text under a folder is the greedy text under
llama.cpp's own conversion of it; folders load on first use; a refused folder never reaches llama.cpp."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine import AdapterRef, ChatMessage, EngineConfig, GenerateRequest, InvalidRequest, SamplingParams
from engine.llama import LlamaEngine
from tests.fake_runner import FakeRunner
from tests.peft_factory import FIXTURES, peft_config, write_peft_folder

pytestmark = pytest.mark.anyio

QUESTION = (ChatMessage(role="user", content="Write two sentences about the sea."),)
GREEDY = SamplingParams(temperature=0.0, max_tokens=32)


def ask(*names: str) -> GenerateRequest:
    return GenerateRequest(messages=QUESTION, sampling=GREEDY, adapters=tuple(AdapterRef(name=n) for n in names))


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    for folder in ("peft_lora", "peft_rslora", "mlx_lora"):
        shutil.copytree(FIXTURES / folder, root / folder)
    shutil.copytree(FIXTURES / "reference", root / "reference")
    return root


@pytest.fixture(scope="module")
async def engine(
    anyio_backend: str, adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LlamaEngine]:
    config = EngineConfig(
        max_sequences=4,
        context_per_sequence=512,
        adapter_dirs=(adapter_dir,),
        adapter_cache_dir=tmp_path_factory.mktemp("cache"),
    )
    async with LlamaEngine(config) as eng:
        yield eng


@pytest.mark.parametrize(
    ("folder", "ref"), [("peft_lora", "peft_lora"), ("peft_rslora", "peft_rslora"), ("mlx_lora", "peft_lora")]
)
async def test_greedy_text_under_a_folder_is_that_under_llama_cpps_conversion(
    engine: LlamaEngine, folder: str, ref: str
) -> None:
    loaded = await engine.load_adapter(f"{folder}-folder", folder)
    assert loaded.adapter.source_format == ("mlx-lm" if folder.startswith("mlx") else "peft")
    await engine.load_adapter(f"{folder}-ref", f"reference/{ref}.gguf")
    base = (await engine.complete(ask())).text
    from_folder = await engine.complete(ask(f"{folder}-folder"))
    from_reference = (await engine.complete(ask(f"{folder}-ref"))).text
    assert from_folder.text == from_reference != base
    (use,) = from_folder.receipt.adapters
    assert use.source_sha256 == loaded.adapter.source_sha256 and len(use.source_sha256 or {}) == 2


async def test_a_folder_loads_on_first_use(engine: LlamaEngine) -> None:
    before = engine.stats().adapter_first_use_loads
    result = await engine.complete(ask("peft_rslora"))  # the folder's own name: not loaded yet
    assert result.receipt.adapters[0].name == "peft_rslora"
    listing = await engine.list_adapters()
    assert "peft_rslora" in {a.name for a in listing.adapters} and "peft_rslora/" in listing.available_files
    assert engine.stats().adapter_first_use_loads == before + 1


async def test_a_folder_can_be_preloaded_from_anywhere(tmp_path: Path) -> None:
    """The operator's --adapter NAME=PATH: any path, a folder too; pinned."""
    config = EngineConfig(
        max_sequences=2,
        context_per_sequence=256,
        adapter_dirs=(tmp_path,),
        adapter_cache_dir=tmp_path / "cache",
        preload_adapters=(("pre", FIXTURES / "mlx_lora"),),
    )
    async with LlamaEngine(config) as eng:
        (info,) = (await eng.list_adapters()).adapters
        assert info.name == "pre" and info.source_format == "mlx-lm" and info.pinned


async def test_a_refused_folder_never_reaches_llama_cpp(tmp_path: Path) -> None:
    runner: FakeRunner | None = None

    def factory(config: EngineConfig) -> FakeRunner:
        nonlocal runner
        runner = FakeRunner(config, like_default_model=True)
        return runner

    write_peft_folder(tmp_path / "dora", config=peft_config(use_dora=True))
    write_peft_folder(tmp_path / "good")
    config = EngineConfig(max_sequences=2, context_per_sequence=256, adapter_dirs=(tmp_path,), adapter_cache_dir=None)
    async with LlamaEngine(config, factory) as eng:
        with pytest.raises(InvalidRequest, match="DoRA"):
            await eng.load_adapter("d", "dora")
        with pytest.raises(InvalidRequest, match="DoRA"):  # on first use too
            await eng.complete(ask("dora"))
        assert runner is not None and runner.live_adapters == 0
        await eng.load_adapter("g", "good")
        assert runner.live_adapters == 1
