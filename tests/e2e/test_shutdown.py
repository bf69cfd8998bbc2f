"""SIGTERM with calls in flight, a killed stdio client, and a client that drops its HTTP stream.

Real server processes on the real model, real SDK clients over real pipes and real HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest
from mcp import Client

from tests.http_server import http_server, http_server_process, server_log
from tests.stdio_process import process_transport, start_stdio_server

pytestmark = pytest.mark.anyio

GRACE_S = 3.0
SHORT = {"prompt": "Say hello.", "max_tokens": 64, "ignore_eos": True}  # about a second
LONG = {"prompt": "Tell a very long story.", "max_tokens": 6000, "ignore_eos": True}  # minutes


async def _in_flight_calls(client: Client, all_generating: anyio.Event) -> list[tuple[bool, Any]]:
    """Two calls that can finish within the grace period and two that cannot; `all_generating` is set
    once each of the four has sent progress (the signal is sent then)."""
    results: list[tuple[bool, Any]] = []
    generating: set[int] = set()

    async def call(index: int, arguments: dict) -> None:
        async def on_progress(_value: float, _total: float | None, _message: str | None) -> None:
            generating.add(index)
            if len(generating) == 4:
                all_generating.set()

        result = await client.call_tool(
            "llm_inference", arguments, read_timeout_seconds=60, progress_callback=on_progress
        )
        results.append((arguments is SHORT, result))

    async with anyio.create_task_group() as tg:
        for index, arguments in enumerate((SHORT, LONG, SHORT, LONG)):
            tg.start_soon(call, index, arguments)
    return results


def _check_answers(results: list[tuple[bool, Any]]) -> None:
    assert len(results) == 4
    for short, result in results:
        text = result.content[0].text
        if short:  # finished within the grace period: its full result
            assert not result.is_error, text
            assert result.structured_content["usage"]["completion_tokens"] == SHORT["max_tokens"]
        else:  # ended at its end, with a clear error
            assert result.is_error, text
            assert "shutting down" in text and f"did not finish within {GRACE_S:g} s" in text, text


async def _check_refused(client: Client) -> None:
    """A new call while draining gets a clear tool error."""
    late = await client.call_tool("llm_inference", SHORT, read_timeout_seconds=30)
    assert late.is_error and "shutting down" in late.content[0].text


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_sigterm_over_http_lets_calls_finish_then_ends_the_rest_and_exits_0(mode: str) -> None:
    with http_server_process("--shutdown-grace", str(GRACE_S)) as (base, proc):
        started = anyio.Event()
        async with Client(base + "/mcp", mode=mode) as client:
            async with anyio.create_task_group() as tg:

                async def sigterm_when_started() -> None:
                    await started.wait()
                    proc.send_signal(signal.SIGTERM)
                    nonlocal signalled_at
                    signalled_at = time.monotonic()
                    await anyio.sleep(0.5)
                    # draining: readiness says 503, a new call in an open session gets a clear error,
                    # and a new session is refused
                    async with httpx2.AsyncClient() as http:
                        health = await http.get(base + "/health")
                    assert health.status_code == 503 and health.json()["status"] == "stopping"
                    await _check_refused(client)
                    async with httpx2.AsyncClient() as http:
                        refused = await http.post(
                            base + "/mcp",
                            json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
                            headers={"Accept": "application/json, text/event-stream"},
                        )
                    assert refused.status_code == 503 and "shutting down" in refused.text

                signalled_at = 0.0
                tg.start_soon(sigterm_when_started)
                results = await _in_flight_calls(client, started)
        _check_answers(results)
        code = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=GRACE_S + 5))
        assert code == 0
        assert time.monotonic() - signalled_at < GRACE_S + 5
        log = server_log(proc)
        assert "Traceback" not in log, log
        assert "SIGTERM: taking no new calls" in log


async def test_sigterm_over_stdio_lets_calls_finish_then_ends_the_rest_and_exits_0() -> None:
    process = await start_stdio_server("--shutdown-grace", str(GRACE_S))
    async with process:
        started = anyio.Event()
        async with Client(process_transport(process)) as client:
            async with anyio.create_task_group() as tg:

                async def sigterm_when_started() -> None:
                    await started.wait()
                    process.send_signal(signal.SIGTERM)

                tg.start_soon(sigterm_when_started)
                results = await _in_flight_calls(client, started)
            signalled_at = time.monotonic()
            _check_answers(results)
            with anyio.fail_after(GRACE_S + 5):
                code = await process.wait()
        assert code == 0
        assert time.monotonic() - signalled_at < GRACE_S + 5
        log = await _read_all(process.stderr)
        assert "Traceback" not in log, log
        assert "SIGTERM: taking no new calls" in log


def test_a_killed_stdio_client_ends_the_server_quietly_with_exit_0() -> None:
    """The client dies mid-generation: its pipes close (stdout's read end first, so the server's next
    progress write meets a broken pipe). One log line, exit 0, no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    def send(message: dict) -> None:
        proc.stdin.write(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")
        proc.stdin.flush()

    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    send({"id": 1, "method": "initialize", "params": init})
    assert b'"id":1' in proc.stdout.readline()
    send({"method": "notifications/initialized"})
    send(
        {
            "id": 2,
            "method": "tools/call",
            "params": {"name": "llm_inference", "arguments": LONG, "_meta": {"progressToken": 1}},
        }
    )
    assert b"notifications/progress" in proc.stdout.readline()  # generating
    os.set_blocking(proc.stderr.fileno(), False)
    log_before = proc.stderr.read() or b""
    proc.stdout.close()
    time.sleep(0.5)
    proc.stdin.close()
    code = proc.wait(timeout=15)
    os.set_blocking(proc.stderr.fileno(), True)
    log_after = proc.stderr.read().decode()
    proc.stderr.close()
    assert code == 0, log_after
    assert b"Traceback" not in log_before and "Traceback" not in log_after, log_after
    assert len(log_after.strip().splitlines()) == 1, log_after
    assert "the MCP client closed the connection" in log_after


def _open_session(http: httpx2.Client, base: str) -> dict[str, str]:
    headers = {"Accept": "application/json, text/event-stream"}
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    opened = http.post(
        base + "/mcp", headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}
    )
    headers |= {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    http.post(base + "/mcp", headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return headers


def _long_call(request_id: int) -> dict:
    call = {"name": "llm_inference", "arguments": LONG, "_meta": {"progressToken": request_id}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": call}


def _wait_until_idle(base: str, since: float) -> None:
    while _health(base)["running"] != 0:
        assert time.monotonic() - since < 2.0, "the abandoned request is still running"
        time.sleep(0.05)


def test_an_http_client_that_drops_its_stream_frees_its_sequence_within_2_s() -> None:
    """No notifications/cancelled: the client just closes the SSE response mid-generation."""
    with http_server() as base, httpx2.Client(timeout=30) as http:
        headers = _open_session(http, base)
        with http.stream("POST", base + "/mcp", headers=headers, json=_long_call(2)) as response:
            events = (line for line in response.iter_lines() if line.startswith("data:"))
            for _ in range(3):  # progress: it is generating
                next(events)
            assert _health(base)["running"] == 1
        _wait_until_idle(base, since=time.monotonic())
        # the session and the server still serve
        call = {"name": "llm_inference", "arguments": SHORT}
        again = http.post(
            base + "/mcp", headers=headers, json={"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": call}
        )
        assert '"isError":false' in again.text.replace(" ", "")


def test_deleting_an_mcp_session_aborts_its_running_calls() -> None:
    with http_server() as base, httpx2.Client(timeout=30) as http:
        headers = _open_session(http, base)
        with http.stream("POST", base + "/mcp", headers=headers, json=_long_call(2)) as response:
            events = (line for line in response.iter_lines() if line.startswith("data:"))
            next(events)
            assert _health(base)["running"] == 1
            with httpx2.Client(timeout=30) as other:
                assert other.delete(base + "/mcp", headers=headers).status_code == 200
            _wait_until_idle(base, since=time.monotonic())


def _health(base: str) -> dict:
    with urllib.request.urlopen(base + "/health", timeout=5) as r:
        return json.load(r)


async def _read_available(stream: anyio.abc.ByteReceiveStream | None) -> str:
    data = b""
    assert stream is not None
    with anyio.move_on_after(0.2):
        while True:
            data += await stream.receive()
    return data.decode(errors="replace")


async def _read_all(stream: anyio.abc.ByteReceiveStream | None) -> str:
    data = b""
    assert stream is not None
    try:
        while True:
            data += await stream.receive()
    except anyio.EndOfStream:
        pass
    return data.decode(errors="replace")
