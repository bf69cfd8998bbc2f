"""llm_batch over real streamable HTTP against a spawned `loramux --http` on the real model: answers in
order, each item's text what llm_inference gives it alone, per-item errors, progress k of n, the whole
batch cancelled, and another caller served while a batch fills every slot."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError

from tests.http_server import http_server
from tests.mcp_checks import engine_stats

pytestmark = pytest.mark.anyio

GREEDY = {"temperature": 0, "max_tokens": 16}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with http_server("--max-sequences", "4") as url:
        yield url


async def test_items_come_back_in_order_each_as_it_would_alone(base_url: str) -> None:
    items: list[Any] = [
        "Name a river.",
        {"prompt": "Name a mountain.", "max_tokens": 6},
        {"messages": [{"role": "user", "content": "What is 2+2?"}]},
        {"prompt": "Say yes or no.", "json_schema": {"enum": ["yes", "no"]}},
        {"prompt": "Broken item.", "temperature": 9},  # refused alone
        {"prompt": "Another broken one.", "frobnicate": 1},
        *[f"Write the number {i} in words." for i in range(6)],
    ]
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with Client(base_url + "/mcp") as client:
        answer = await client.call_tool(
            "llm_batch", {"items": items, **GREEDY}, progress_callback=on_progress, read_timeout_seconds=120
        )
        assert not answer.is_error, answer.content
        batch = answer.structured_content
        assert batch is not None
        results = batch["results"]
        assert [r["index"] for r in results] == list(range(len(items)))
        assert (batch["succeeded"], batch["failed"]) == (len(items) - 2, 2)
        assert "temperature" in results[4]["error"] and "frobnicate" in results[5]["error"]
        assert results[3]["result"]["json"] in ("yes", "no")
        assert batch["usage"]["completion_tokens"] == sum(
            r["result"]["usage"]["completion_tokens"] for r in results if r["result"]
        )
        for i in (0, 1, 2, 6, 11):  # the same text as the item alone
            item = items[i] if isinstance(items[i], dict) else {"prompt": items[i]}
            alone = await client.call_tool("llm_inference", GREEDY | item, read_timeout_seconds=60)
            assert alone.structured_content is not None
            assert results[i]["result"]["text"] == alone.structured_content["text"], i
    assert [p[0] for p in progress] == list(range(1, len(items) + 1))
    assert progress[-1][1] == len(items) and progress[-1][2] == f"{len(items)} of {len(items)} items done"


async def test_cancelling_the_call_cancels_every_item(base_url: str) -> None:
    async with Client(base_url + "/mcp") as client:
        before = await engine_stats(client)
        long = {"max_tokens": 2000, "ignore_eos": True}
        with pytest.raises(MCPError):
            await client.call_tool("llm_batch", {"items": ["Write an essay."] * 10, **long}, read_timeout_seconds=2)
        deadline = time.monotonic() + 10
        while (stats := await engine_stats(client))["running"] or stats["waiting"]:
            assert time.monotonic() < deadline, f"batch items still run: {stats}"
            await anyio.sleep(0.1)
        assert stats["requests_cancelled"] > before["requests_cancelled"]
        assert stats["requests_finished"] == before["requests_finished"]


async def test_another_caller_gets_a_slot_while_a_batch_fills_them(base_url: str) -> None:
    async with Client(base_url + "/mcp") as client:
        before = (await engine_stats(client))["backend"]["sequence_preemptions"]
        batch_done = anyio.Event()
        single: dict[str, Any] = {}

        async def run_batch() -> None:
            items = [f"Tell a story number {i}." for i in range(12)]
            await client.call_tool(
                "llm_batch", {"items": items, "max_tokens": 96, "ignore_eos": True}, read_timeout_seconds=300
            )
            batch_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_batch)
            while (await engine_stats(client))["running"] < 4:  # noqa: ASYNC110 (the batch holds every slot)
                await anyio.sleep(0.05)
            answer = await client.call_tool("llm_inference", {"prompt": "Say hi.", **GREEDY}, read_timeout_seconds=60)
            single = json.loads(answer.content[0].text)  # type: ignore[union-attr]
            assert not batch_done.is_set(), "the single call waited for the whole batch"
        after = (await engine_stats(client))["backend"]["sequence_preemptions"]
    assert after > before  # a batch member gave its slot back
    assert single["timings"]["queue_ms"] < 1000, single["timings"]
