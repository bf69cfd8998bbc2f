"""Hostile adapter files: nothing one caller's adapter holds may reach another caller's answer.

Sequences with different adapter sets share decode steps, and an adapter on most of a step's tokens is
computed on every row, scaled by 0 on the others' rows: a NaN alpha or weight (0 × NaN = NaN) used to
blank out base-model answers sharing its steps. Such files are refused at load; one that passes (finite,
in range) but blows up at its own scale fails its own requests alone.
"""

from __future__ import annotations

import struct
from pathlib import Path

import anyio
import pytest

from engine import (
    AdapterRef,
    ChatMessage,
    EngineConfig,
    EngineError,
    GenerateRequest,
    InvalidRequest,
    NonFiniteOutput,
    SamplingParams,
)
from engine.llama import LlamaEngine
from engine.llama.adapters.validation import AdapterFileError, validate_adapter
from tests.adapter_factory import base_shapes, write_lora
from tests.fake_runner import FakeRunner
from tests.hostile_inputs import loud_adapter, with_alpha_bytes, write_with_value

pytestmark = pytest.mark.anyio

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, repeat_penalty=1.0)


def validate(path: Path) -> object:
    return validate_adapter(
        path.read_bytes(), display_name=path.name, base_architecture="llama", base_shapes=base_shapes()
    )


@pytest.mark.parametrize(
    "raw", [struct.pack("<I", 0x7FC00000), struct.pack("<f", float("inf")), struct.pack("<f", float("-inf"))]
)
def test_a_non_finite_alpha_is_refused_naming_it(tmp_path: Path, raw: bytes) -> None:
    good = write_lora(tmp_path / "good.gguf", rank=4, layers=range(2))
    validate(good)  # the untouched copy passes
    bad = with_alpha_bytes(good, tmp_path / "bad.gguf", raw)
    with pytest.raises(AdapterFileError, match=r"adapter\.lora\.alpha is .*finite number"):
        validate(bad)


@pytest.mark.parametrize("alpha", [-1.0, 1e9])
def test_an_absurd_alpha_is_refused(tmp_path: Path, alpha: float) -> None:
    path = write_lora(tmp_path / "a.gguf", rank=4, layers=range(2), alpha=alpha)
    with pytest.raises(AdapterFileError, match=r"adapter\.lora\.alpha"):
        validate(path)


def test_rank_zero_is_refused(tmp_path: Path) -> None:
    """llama.cpp scales by alpha / rank: a rank of 0 would make the scale infinite (NaN on other rows)."""
    with pytest.raises(AdapterFileError, match="rank 0"):
        validate(write_lora(tmp_path / "r0.gguf", rank=0, layers=range(2)))


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e30])
def test_non_finite_or_huge_weights_are_refused_naming_the_tensor(tmp_path: Path, dtype: str, value: float) -> None:
    if dtype == "f16" and value == 1e30:
        pytest.skip("float16 cannot hold 1e30 (it becomes inf, tested)")
    validate(write_with_value(tmp_path / "ok.gguf", 0.5, dtype))  # the same file with a sane value passes
    with pytest.raises(AdapterFileError, match=r"blk\.1\.attn_v\.weight\.lora_b"):
        validate(write_with_value(tmp_path / "bad.gguf", value, dtype))


# -- through the engine: a refused load leaves nothing; a loud adapter fails only its own requests ----------


def chat(text: str, adapters: tuple[AdapterRef, ...] = (), **more: object) -> GenerateRequest:
    return GenerateRequest(
        messages=(ChatMessage(role="user", content=text),), sampling=GREEDY, adapters=adapters, **more
    )


async def outcome(engine: LlamaEngine, request: GenerateRequest) -> str | EngineError:
    try:
        return (await engine.complete(request)).text
    except EngineError as exc:
        return exc


async def test_refused_loads_leave_nothing_loaded(tmp_path: Path) -> None:
    good = write_lora(tmp_path / "good.gguf", rank=4, layers=range(2))
    write_lora(tmp_path / "other.gguf", rank=4, layers=range(2), seed=1)
    with_alpha_bytes(good, tmp_path / "nan_alpha.gguf", struct.pack("<I", 0x7FC00000))
    write_with_value(tmp_path / "nan_weight.gguf", float("nan"), "f32")
    write_lora(tmp_path / "wrong_shape.gguf", rank=4, layers=range(2), wrong_shape=True)
    (tmp_path / "loop.gguf").symlink_to(tmp_path / "loop.gguf")
    config = EngineConfig(max_sequences=2, context_per_sequence=256, adapter_dirs=(tmp_path,))
    async with LlamaEngine(config) as engine:
        for name, path in [
            ("nan", "nan_alpha.gguf"),
            ("nanw", "nan_weight.gguf"),
            ("shape", "wrong_shape.gguf"),
            ("loop", "loop.gguf"),
            ("gone", "missing.gguf"),
            ("bad name!", "good.gguf"),
        ]:
            with pytest.raises(InvalidRequest):
                await engine.load_adapter(name, path)
            assert (await engine.list_adapters()).adapters == [], name
        good_sha = (await engine.load_adapter("good", "good.gguf")).adapter.sha256  # a good one loads after them
        for path in ("nan_alpha.gguf", "wrong_shape.gguf"):  # a refused reload keeps the resident version
            with pytest.raises(InvalidRequest):
                await engine.load_adapter("good", path)
        (good_info,) = (await engine.list_adapters()).adapters
        assert good_info.name == "good" and good_info.sha256 == good_sha and good_info.version == 1


@pytest.mark.parametrize("loud_requests", [3, 1], ids=["loud-on-most-rows", "loud-on-few-rows"])
async def test_a_numerically_broken_adapter_fails_only_its_own_requests(tmp_path: Path, loud_requests: int) -> None:
    """3 loud + base + constrained: the loud adapter is computed on every row (scaled by 0 elsewhere);
    1 loud: on its own rows only. Either way the others' text is exactly their solo text."""
    loud_adapter(tmp_path / "loud.gguf")
    config = EngineConfig(max_sequences=8, context_per_sequence=512, adapter_dirs=(tmp_path,))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    async with LlamaEngine(config) as engine:
        await engine.load_adapter("loud", "loud.gguf")
        others = [
            chat("Name three rivers."),
            chat("Where is Paris?", json_schema=schema),
            chat("Write one sentence about cats."),
        ]
        solo = [await outcome(engine, r) for r in others]
        assert all(isinstance(t, str) and t for t in solo), solo
        loud = [chat(f"Say {i}.", (AdapterRef(name="loud", scale=4.0),)) for i in range(loud_requests)]
        results: list[str | EngineError] = [""] * (len(others) + len(loud))

        async def one(i: int, request: GenerateRequest) -> None:
            results[i] = await outcome(engine, request)

        async with anyio.create_task_group() as tg:
            for i, request in enumerate([*loud, *others]):
                tg.start_soon(one, i, request)
        for error in results[:loud_requests]:
            assert isinstance(error, NonFiniteOutput), error
            assert "loud x4" in str(error) and "NaN or infinite" in str(error)
        assert results[loud_requests:] == solo
        assert engine.stats().running == 0


async def test_a_load_llama_cpp_refuses_leaves_nothing_loaded() -> None:
    """The last failure path of a load: the bytes pass validation and llama.cpp refuses them (here the
    fake runner does, as llama.cpp returns NULL)."""
    made: list[FakeRunner] = []

    def runner(config: EngineConfig) -> FakeRunner:
        made.append(FakeRunner(config, like_default_model=True))
        return made[-1]

    async with LlamaEngine(EngineConfig(), runner_factory=runner) as engine:  # type: ignore[arg-type]
        made[0].refuse_adapters = True
        with pytest.raises(InvalidRequest, match="refused"):
            await engine.load_adapter("caps", "caps.gguf")
        assert (await engine.list_adapters()).adapters == [] and made[0].live_adapters == 0
        made[0].refuse_adapters = False
        await engine.load_adapter("caps", "caps.gguf")
        await engine.unload_adapter("caps")
        assert made[0].live_adapters == 0
