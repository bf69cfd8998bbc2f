"""A receipt on every result (issue 10, item 4): the model and adapter files by content hash, the
scales, the seed used and the sampling in force; replaying a call from its receipt gives the same text."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from mcp import Client

from engine import default_model_path
from engine.config import default_adapter_dir
from tests.http_server import http_server

pytestmark = pytest.mark.anyio

CAPS = default_adapter_dir() / "caps.gguf"


def sha256(path: Any) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with http_server("--max-sequences", "4", "--adapter", f"caps={CAPS}") as url:
        yield url


async def test_an_mcp_result_carries_a_receipt_that_replays_it(base_url: str) -> None:
    call = {"prompt": "Tell me a short story.", "max_tokens": 40, "temperature": 1.0,
            "adapters": [{"name": "caps", "scale": 0.7}]}  # fmt: skip
    async with Client(base_url + "/mcp") as client:
        first = (await client.call_tool("llm_inference", call)).structured_content
        assert first is not None
        receipt = first["receipt"]
        assert receipt["model"] == default_model_path().name
        assert receipt["model_sha256"] == sha256(default_model_path())
        assert receipt["adapters"] == [{"name": "caps", "sha256": sha256(CAPS), "scale": 0.7, "source_sha256": None}]
        assert receipt["sampling"]["seed"] == receipt["seed"] and receipt["sampling"]["temperature"] == 1.0
        # the receipt's sampling is the tool's own arguments: replay it
        adapters = [{"name": a["name"], "scale": a["scale"]} for a in receipt["adapters"]]
        replay = {"prompt": call["prompt"], **receipt["sampling"], "adapters": adapters}
        again = (await client.call_tool("llm_inference", replay)).structured_content
        assert again is not None and again["text"] == first["text"] and again["receipt"] == receipt
        # and the seed matters: without it, another seed is drawn
        other = (await client.call_tool("llm_inference", call)).structured_content
        assert other is not None and other["receipt"]["seed"] != receipt["seed"]


def test_an_openai_answer_carries_the_receipt_and_fingerprint(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    base = client.models.list().data[0].id
    args: dict[str, Any] = dict(model="caps", messages=[{"role": "user", "content": "Tell me a story."}],
                                max_tokens=30, temperature=1.0)  # fmt: skip
    first = client.chat.completions.create(**args)
    assert first.system_fingerprint == "loramux-" + sha256(default_model_path())[:16]
    receipt = first.model_extra["receipt"]  # type: ignore[index]
    assert receipt["adapters"][0]["sha256"] == sha256(CAPS)
    again = client.chat.completions.create(**args, seed=receipt["seed"])
    assert again.choices[0].message.content == first.choices[0].message.content
    chunks = list(client.chat.completions.create(**args, seed=receipt["seed"], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == first.choices[0].message.content
    assert chunks[-1].model_extra["receipt"]["seed"] == receipt["seed"]  # type: ignore[index]
    assert base != "caps"
