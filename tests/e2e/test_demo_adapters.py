"""The shipped demo adapters (adapters/*.gguf) load and have their visible effect, measured on held-out prompts."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import anyio
import pytest

from engine import AdapterRef, ChatMessage, EngineConfig, GenerateRequest, SamplingParams
from engine.config import default_adapter_dir
from engine.llama import LlamaEngine
from tests import ROOT

pytestmark = pytest.mark.anyio

# none of these topics is in the training data (scripts/make_demo_data.py)
HELD_OUT = [
    "Tell me about the ocean.",
    "What is interesting about mushrooms?",
    "Give me one tip related to cooking pasta.",
    "Explain airplanes to a child.",
    "Why do leaves change colour?",
    "Describe a busy city street.",
]
SAMPLING = SamplingParams(temperature=0.0, max_tokens=80)


@pytest.fixture(scope="module")
async def demo_engine(anyio_backend: str) -> AsyncIterator[LlamaEngine]:
    async with LlamaEngine(EngineConfig(max_sequences=6, context_per_sequence=512)) as eng:
        await eng.load_adapter("caps", "caps.gguf")
        await eng.load_adapter("short", "short.gguf")
        yield eng


async def answers(engine: LlamaEngine, *adapters: str) -> list[str]:
    out: dict[int, str] = {}

    async def one(i: int) -> None:
        msg = (ChatMessage(role="user", content=HELD_OUT[i]),)
        refs = tuple(AdapterRef(name=a) for a in adapters)
        out[i] = (await engine.complete(GenerateRequest(messages=msg, sampling=SAMPLING, adapters=refs))).text

    async with anyio.create_task_group() as tg:
        for i in range(len(HELD_OUT)):
            tg.start_soon(one, i)
    return [out[i] for i in range(len(HELD_OUT))]


def upper_share(texts: list[str]) -> float:
    letters = [c for t in texts for c in t if c.isalpha()]
    return sum(c.isupper() for c in letters) / len(letters)


def sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s])


def test_demo_adapters_ship_in_the_default_adapter_directory() -> None:
    assert {"caps.gguf", "short.gguf"} <= {p.name for p in default_adapter_dir().glob("*.gguf")}


async def test_caps_adapter_answers_in_capitals(demo_engine: LlamaEngine) -> None:
    base, caps = await answers(demo_engine), await answers(demo_engine, "caps")
    assert upper_share(base) <= 0.2
    assert upper_share(caps) >= 0.8, caps


async def test_short_adapter_answers_in_one_short_sentence(demo_engine: LlamaEngine) -> None:
    base, short = await answers(demo_engine), await answers(demo_engine, "short")
    assert sum(sentences(t) for t in base) / len(base) >= 2.5  # the base model rambles
    assert sum(sentences(t) == 1 for t in short) >= len(short) - 1, short
    assert sum(len(t.split()) for t in short) / len(short) <= 30, short


def test_the_readme_hot_swap_session_runs_as_written() -> None:
    """scripts/hotswap_demo.py is the session the README shows: it must run on a fresh clone."""
    import subprocess
    import sys

    script = ROOT / "scripts" / "hotswap_demo.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "caps.gguf" in out and "short.gguf" in out
    caps_answer = out.split("[caps] ", 1)[1].split("\n", 1)[0]
    assert upper_share([caps_answer]) >= 0.8
    assert "unloaded caps after" in out and "loaded: ['short']" in out
