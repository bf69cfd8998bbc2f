"""64 concurrent MCP sessions over HTTP, each making calls back to back: none lost, memory flat.

LORAMUX_LOAD_ROUNDS rounds (CI: 1; `bash scripts/reliability.sh`: 3). Every call must get its full
answer (the default queue holds 64 waiting calls beside 8 running ones, so none is refused as busy).
The server's resident memory after the last round may exceed that after the first by at most
RSS_GROWTH_MB: a leak of even a few KB per call over hundreds of calls would show.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.http_server import http_server_process

pytestmark = pytest.mark.anyio

SESSIONS = 64
CALLS_PER_SESSION = 3
ROUNDS = int(os.environ.get("LORAMUX_LOAD_ROUNDS", "1"))
RSS_GROWTH_MB = 20


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def session(base: str, index: int, answers: list[int]) -> None:
    async with Client(base + "/mcp") as client:
        for call in range(CALLS_PER_SESSION):
            result = await client.call_tool(
                "llm_inference",
                {"prompt": f"Session {index}, call {call}: say a word.", "max_tokens": 8},
                read_timeout_seconds=300,
            )
            assert not result.is_error, result.content
            assert result.structured_content["usage"]["completion_tokens"] >= 1
            answers.append(index)


async def test_64_concurrent_sessions_lose_no_call_and_keep_memory_flat() -> None:
    with http_server_process() as (base, proc):
        rss: list[float] = []
        for round_ in range(ROUNDS + 1):  # round 0 warms up (first sessions, lazy allocations)
            answers: list[int] = []
            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                for index in range(SESSIONS):
                    tg.start_soon(session, base, index, answers)
            assert len(answers) == SESSIONS * CALLS_PER_SESSION
            rss.append(rss_mb(proc.pid))
            print(f"round {round_}: {len(answers)} calls in {time.monotonic() - started:.1f} s, RSS {rss[-1]:.0f} MB")
        assert proc.poll() is None
        assert rss[-1] - rss[1 if ROUNDS > 1 else 0] < RSS_GROWTH_MB, rss
