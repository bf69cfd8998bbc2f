"""Calls that never go silent: a call held in a full queue gets a status progress notification at
least every 10 s (issue 10), on a real server over HTTP."""

from __future__ import annotations

import itertools
import json
import time
import urllib.request

import anyio
import pytest
from mcp import Client

from engine import RequestStatus
from tests.http_server import http_server

pytestmark = pytest.mark.anyio

HELD_S = 26.0


def running(base: str) -> int:
    with urllib.request.urlopen(base + "/health", timeout=5) as r:
        return json.load(r)["running"]


async def test_a_queued_call_gets_progress_at_least_every_10_s() -> None:
    with http_server("--max-sequences", "1", "--context", "8192") as base:
        notes: list[tuple[float, float, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            notes.append((time.monotonic(), progress, message))

        async with Client(base + "/mcp") as blocker, Client(base + "/mcp") as waiter:
            blocker_scope = anyio.CancelScope()
            results = []

            async def block() -> None:
                with blocker_scope:
                    long = {"prompt": "Write a very long essay.", "max_tokens": 8000, "ignore_eos": True}
                    await blocker.call_tool("llm_inference", long, read_timeout_seconds=120.0)

            async def wait() -> None:
                results.append(
                    await waiter.call_tool(
                        "llm_inference",
                        {"prompt": "Say hi.", "max_tokens": 8},
                        read_timeout_seconds=120.0,
                        progress_callback=on_progress,
                    )
                )

            with anyio.fail_after(HELD_S + 60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(block)
                    while running(base) == 0:  # noqa: ASYNC110 (polling another process)
                        await anyio.sleep(0.05)
                    started = time.monotonic()
                    tg.start_soon(wait)
                    await anyio.sleep(HELD_S)
                    blocker_scope.cancel()  # the blocker gives up: its sequence frees, the waiter runs
    (result,) = results
    assert not result.is_error, result.content
    assert result.structured_content["timings"]["queue_ms"] > (HELD_S - 1) * 1000  # type: ignore[index]
    waiting = [(t, p, m) for t, p, m in notes if p < 1]
    assert len(waiting) >= HELD_S // 10
    times = [started] + [t for t, _, _ in waiting]
    assert max(b - a for a, b in itertools.pairwise(times)) <= 10.0, times
    assert all(m == "queued, next in line" for _, _, m in waiting), waiting
    progress = [p for _, p, _ in notes]
    assert progress == sorted(set(progress)), progress  # strictly increasing, as MCP requires
    assert "".join(m or "" for _, p, m in notes if p >= 1)  # then the text, as always


def test_status_messages() -> None:
    assert RequestStatus("queued", ahead=3).describe() == "queued, 3 ahead"
    assert RequestStatus("queued").describe() == "queued, next in line"
    assert RequestStatus("reading", read=400, prompt=1000).describe() == "reading the prompt, 40%"
    assert RequestStatus("preparing").describe() == "preparing the prompt"
