"""After `notifications/cancelled` the server sends no response for that request (the MCP spec: the
receiver SHOULD NOT respond), on stdio and on streamable HTTP; the engine request is aborted. Driven by
raw clients, so nothing between the test and the wire answers or drops messages for it."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import threading
import time
from typing import Any

import httpx2

from tests.http_server import http_server

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
LONG_CALL = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "llm_inference", "arguments": {"prompt": "Count", "max_tokens": 2000, "ignore_eos": True}},
}
CANCEL = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2, "reason": "test"}}
PING = {"jsonrpc": "2.0", "id": 3, "method": "ping"}


def test_stdio_sends_nothing_for_a_cancelled_call() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdin is not None and proc.stdout is not None

    def send(message: dict[str, Any]) -> None:
        proc.stdin.write((json.dumps(message) + "\n").encode())  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]

    def read_for(seconds: float) -> list[dict[str, Any]]:
        messages, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            if select.select([proc.stdout], [], [], 0.05)[0]:
                messages.append(json.loads(proc.stdout.readline()))  # type: ignore[union-attr]
        return messages

    try:
        send(INITIALIZE)
        assert any(m.get("id") == 1 for m in read_for(10))
        send(INITIALIZED)
        send(LONG_CALL)
        time.sleep(1.0)  # the call is decoding (2,000 tokens take far longer)
        send(CANCEL)
        send(PING)
        after = read_for(3)
        assert {"jsonrpc": "2.0", "id": 3, "result": {}} in after
        assert not [m for m in after if m.get("id") == 2]
    finally:
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_http_ends_a_cancelled_calls_stream_without_an_answer() -> None:
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    with http_server() as base, httpx2.Client(timeout=60) as http:
        url = base + "/mcp"
        init = http.post(url, headers=headers, json=INITIALIZE)
        headers |= {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
        http.post(url, headers=headers, json=INITIALIZED)
        events: list[str] = []

        def call() -> None:
            with http.stream("POST", url, headers=headers, json=LONG_CALL) as response:
                events.extend(line for line in response.iter_lines() if line.startswith("data:"))
                events.append("ended")

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(1.0)
        assert http.post(url, headers=headers, json=CANCEL).status_code == 202
        caller.join(20)
        assert events and events[-1] == "ended", "the call's stream did not end"
        answers = [json.loads(e[5:]) for e in events[:-1]]
        assert not [m for m in answers if m.get("id") == 2], answers  # progress notifications only
        time.sleep(0.5)
        assert http.get(base + "/health").json()["running"] == 0  # the engine request was aborted
        assert http.post(url, headers=headers, json=PING).status_code == 200
