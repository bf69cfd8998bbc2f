"""Hostile input through the real MCP protocol: every tool over HTTP and stdio, and malformed JSON-RPC.

Each bad call must come back `isError` with a short message free of "pydantic", "Traceback" and server
paths; the server must neither crash nor hang, and a good call works afterwards. The number of fuzzed
calls (and of malformed frames) per case is LORAMUX_FUZZ_CALLS: 1,000 by default (2,000 tool calls per
suite run), 5,000 in `bash scripts/reliability.sh`.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client, StdioServerParameters

from tests import ROOT
from tests.fuzz_values import FUZZ_SETTINGS, json_values
from tests.http_server import http_server

SERVER_PATHS = (str(ROOT), sys.prefix, "site-packages")
TOOLS = ("llm_inference", "llm_batch", "list_adapters", "load_adapter", "unload_adapter")
KNOWN_ARGUMENTS = (
    "prompt", "messages", "system", "raw", "max_tokens", "temperature", "top_p", "top_k", "min_p",
    "repeat_penalty", "repeat_last_n", "seed", "stop", "ignore_eos", "adapters", "adapter", "name", "path",
    "logprobs", "prompt_logprobs", "items",
)  # fmt: skip
# -- what a model might send ------------------------------------------------------------------------------

message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "", "USER"]) | json_values},
    optional={"content": st.text(max_size=60) | json_values, "name": json_values},
)
good_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system"]), "content": st.text(min_size=1, max_size=60)}
)
# Near-valid values are where parsers break: right names, wrong types or bounds. max_tokens stays small
# when it is valid, so a call that happens to be good costs a few tokens, not a long generation.
argument_values = {
    "prompt": st.text(max_size=80) | st.text(max_size=80) | json_values,
    "messages": st.lists(message, max_size=3) | st.lists(good_message, min_size=1, max_size=3) | json_values,
    "max_tokens": st.integers(-3, 6) | st.sampled_from([2**31, 2**64, 1.5, "4", True]),
    "temperature": st.floats(-1, 3, allow_nan=False) | json_values,
    "adapters": st.lists(st.fixed_dictionaries({"name": json_values}, optional={"scale": json_values}), max_size=3)
    | json_values,
    "name": st.sampled_from(["caps", "short", "x"]) | st.text(max_size=30) | json_values,
    "path": st.sampled_from(["caps.gguf", "short.gguf", "/dev/zero", "/etc/passwd", "..", "", "x" * 5000])
    | json_values,
    "logprobs": st.integers(-1, 21) | json_values,
}
# a batch's items: prompts, item objects with right and wrong settings, noise; a few at most (each costs tokens)
argument_values["items"] = (
    st.lists(
        st.text(max_size=40)
        | st.fixed_dictionaries(
            {}, optional={name: argument_values.get(name, json_values) for name in ("prompt", "messages", "max_tokens")}
        ).map(lambda item: item | {"max_tokens": 2} if isinstance(item.get("max_tokens"), int) else item)
        | json_values,
        max_size=4,
    )
    | json_values
)


TOOL_ARGUMENTS = {
    "llm_inference": [a for a in KNOWN_ARGUMENTS if a not in ("name", "path", "items")],
    "llm_batch": [a for a in KNOWN_ARGUMENTS if a not in ("name", "path", "prompt", "messages")],
    "load_adapter": ["name", "path"],
    "unload_adapter": ["name"],
    "list_adapters": [],
}


@st.composite
def tool_calls(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """Mostly a real tool with its own argument names (wrong values are the interesting part), sometimes
    stray names or an unknown tool."""
    tool = draw(st.sampled_from(TOOLS) | st.sampled_from(TOOLS) | st.sampled_from(TOOLS) | st.text(max_size=20))
    own = TOOL_ARGUMENTS.get(tool, [])
    names = draw(st.lists(st.sampled_from(own), max_size=5, unique=True)) if own else []
    if draw(st.integers(0, 3)) == 0:  # a typo, another tool's argument, or noise
        names += draw(st.lists(st.sampled_from(KNOWN_ARGUMENTS) | st.text(max_size=12), min_size=1, max_size=2))
    arguments = {name: draw(argument_values.get(name, json_values)) for name in names}
    if tool in ("llm_inference", "llm_batch"):
        arguments["max_tokens"] = draw(argument_values["max_tokens"])
    return tool, arguments


def check_answer(result: Any, arguments: dict[str, Any]) -> None:
    if not result.is_error:
        for item in (result.structured_content or {}).get("results", []):  # llm_batch: each item's error
            if item.get("error") is not None:
                check_message(item["error"], arguments)
        return
    check_message(" ".join(getattr(block, "text", "") for block in result.content), arguments)


def check_message(text: str, arguments: dict[str, Any]) -> None:
    assert text, "an error with no message"
    assert len(text) < 500, text
    assert "pydantic" not in text.lower() and "Traceback" not in text, text
    sent = json.dumps(arguments)
    for path in SERVER_PATHS:
        assert path not in text or path in sent, f"a server path in: {text}"


# -- the clients live in a portal's event loop, so hypothesis can drive them from plain tests -----------------


@contextmanager
def connected(target: Any) -> Iterator[tuple[anyio.from_thread.BlockingPortal, Client]]:
    with anyio.from_thread.start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(Client(target, mode="legacy")) as client:
            yield portal, client


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    with http_server("--max-sequences", "4") as base:
        yield base


@pytest.fixture(scope="module")
def http_client(http_base: str) -> Iterator[tuple[anyio.from_thread.BlockingPortal, Client]]:
    with connected(http_base + "/mcp") as pair:
        yield pair


@pytest.fixture(scope="module")
def stdio_client() -> Iterator[tuple[anyio.from_thread.BlockingPortal, Client]]:
    with connected(StdioServerParameters(command=sys.executable, args=["-m", "mcp_server"], cwd=str(ROOT))) as pair:
        yield pair


def _call(pair: tuple[anyio.from_thread.BlockingPortal, Client], tool: str, arguments: dict[str, Any]) -> Any:
    portal, client = pair

    async def call() -> Any:
        with anyio.fail_after(60):  # a hang is a failure, not a stuck suite
            return await client.call_tool(tool, arguments, read_timeout_seconds=60)

    return portal.call(call)


def _good_call_works(pair: tuple[anyio.from_thread.BlockingPortal, Client]) -> None:
    result = _call(pair, "llm_inference", {"prompt": "Say hi.", "max_tokens": 4})
    assert not result.is_error, result.content


@pytest.mark.parametrize("transport", ["http", "stdio"])
def test_fuzzed_tool_calls_get_clear_errors_and_the_server_serves_on(
    transport: str, request: pytest.FixtureRequest
) -> None:
    pair = request.getfixturevalue(f"{transport}_client")

    seen: Counter[tuple[str, bool]] = Counter()  # (tool, is_error)

    @FUZZ_SETTINGS
    @given(tool_calls())
    def fuzz(call: tuple[str, dict[str, Any]]) -> None:
        tool, arguments = call
        result = _call(pair, tool, arguments)
        check_answer(result, arguments)
        seen[(tool if tool in TOOLS else "unknown tool", bool(result.is_error))] += 1

    fuzz()
    _good_call_works(pair)
    print(f"\nfuzzed calls over {transport}: {dict(seen)}")
    # the fuzzer reached every tool, and both refusals and calls that went through
    assert {tool for tool, _ in seen} >= {*TOOLS, "unknown tool"}
    assert sum(n for (_, error), n in seen.items() if error) > 0
    assert sum(n for (_, error), n in seen.items() if not error) > 0


# -- malformed JSON-RPC --------------------------------------------------------------------------------------

frames = (
    st.binary(max_size=200)
    | st.text(max_size=200).map(str.encode)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.fixed_dictionaries(
        {"jsonrpc": st.sampled_from(["2.0", "1.0", 2]) | json_values, "method": st.sampled_from(
            ["tools/call", "tools/list", "initialize", "ping", "resources/read", "nope", ""]) | json_values},
        optional={"id": json_values, "params": json_values},
    ).map(lambda v: json.dumps(v).encode())
)  # fmt: skip


def test_malformed_json_rpc_over_http_is_refused_and_the_server_serves_on(
    http_base: str, http_client: tuple[anyio.from_thread.BlockingPortal, Client]
) -> None:
    with httpx2.Client(timeout=30) as http:
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "f", "version": "1"}}
        opened = http.post(
            http_base + "/mcp",
            headers=headers,
            json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init},
        )
        session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}

        @FUZZ_SETTINGS
        @given(frames, st.booleans())
        def fuzz(body: bytes, in_session: bool) -> None:
            response = http.post(http_base + "/mcp", headers=headers | (session if in_session else {}), content=body)
            assert response.status_code < 500, (body, response.status_code, response.text[:300])
            assert "Traceback" not in response.text

        fuzz()
    _good_call_works(http_client)


def test_malformed_json_rpc_over_stdio_is_survived(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with log.open("wb") as stderr:  # a file: an undrained pipe would fill up and block the server
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )
    assert proc.stdin is not None and proc.stdout is not None
    try:

        def send(line: bytes) -> None:
            proc.stdin.write(line.replace(b"\n", b" ") + b"\n")  # one frame per line, as the transport reads
            proc.stdin.flush()

        received = bytearray()  # read from the pipe ourselves: select() cannot see a BufferedReader's buffer

        def next_line() -> bytes:
            while b"\n" not in received:
                ready, _, _ = select.select([proc.stdout], [], [], 60)
                assert ready, "the server hangs"
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                assert chunk, "the server stopped answering"
                received.extend(chunk)
            line, _, rest = bytes(received).partition(b"\n")
            received[:] = rest
            return line

        def ping(request_id: int) -> None:
            """A good request after garbage is answered (skipping whatever the garbage got back)."""
            send(json.dumps({"jsonrpc": "2.0", "id": f"ping-{request_id}", "method": "ping"}).encode())
            while json.loads(next_line()).get("id") != f"ping-{request_id}":
                pass

        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "f", "version": "1"}}
        send(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}).encode())
        send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
        counter = iter(range(10**9))

        @FUZZ_SETTINGS
        @given(st.lists(frames, min_size=1, max_size=3))
        def fuzz(lines: list[bytes]) -> None:
            for line in lines:
                send(line)
            ping(next(counter))

        fuzz()
        assert proc.poll() is None
    finally:
        proc.stdin.close()
        proc.wait(timeout=15)
        proc.stdout.close()
    text = log.read_text(errors="replace")
    assert proc.returncode == 0 and "Traceback" not in text, text[-2000:]
