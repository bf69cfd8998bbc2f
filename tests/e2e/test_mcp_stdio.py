"""MCP over a spawned stdio subprocess, as Claude Desktop runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mcp import Client, StdioServerParameters

from tests.mcp_checks import ALL_CHECKS

pytestmark = pytest.mark.anyio

SERVER = StdioServerParameters(command=sys.executable, args=["-m", "mcp_server", "--max-sequences", "4"])


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_stdio_server_serves_the_tool(mode: str) -> None:
    async with Client(SERVER, mode=mode) as client:  # type: ignore[arg-type]
        for check in ALL_CHECKS:
            await check(client)


def test_stdout_carries_only_json_rpc() -> None:
    """Drive the server by hand over raw pipes and parse every byte it writes to stdout."""
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "llm_inference", "arguments": {"prompt": "Hello!", "max_tokens": 16}},
        },
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_server", "--log-level", "DEBUG"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    for m in messages:
        proc.stdin.write((json.dumps(m) + "\n").encode())
    proc.stdin.flush()
    lines = []
    while True:
        line = proc.stdout.readline()
        assert line, "the server closed stdout before answering"
        lines.append(line)
        if json.loads(line).get("id") == 2:
            break
    answer = json.loads(lines[-1])
    rest, stderr = proc.communicate(timeout=30)  # closes stdin: the server exits
    lines += rest.splitlines(keepends=True)
    for line in lines:
        assert json.loads(line)["jsonrpc"] == "2.0", line
    assert answer["result"]["structuredContent"]["text"]
    assert proc.returncode == 0
    assert stderr  # logs went to stderr
