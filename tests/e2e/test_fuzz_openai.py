"""Hostile requests to every OpenAI route of a real `loramux --http` (real model, real HTTP on 127.0.0.1).

hypothesis draws a route and method (right ones mostly, wrong ones too) and a body: near-valid chat and
completion requests with hostile values (wrong types and bounds, huge strings, control tokens, unknown
fields with huge names), hostile schemas (deep, pathological patterns, recursive refs, nonsense), raw
bytes, nesting thousands deep, adapter loads of hostile files and paths, and requests that use a
numerically broken adapter beside good ones. Some streams are dropped by the client mid-answer.

Every answer must be a success or an OpenAI error object under 1 kB with a 4xx status (or the documented
503/504), never another 5xx; in-stream errors too. Afterwards the server serves normally and nothing is
left running. Examples per run: LORAMUX_FUZZ_CALLS (1,000 by default; 5,000 in scripts/reliability.sh).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz_values import CALLS, FUZZ_SETTINGS, json_values
from tests.hostile_inputs import BASE_MODEL, MAX_ERROR_BYTES, hostile_adapter_dir, loud_adapter, nested_schema_text
from tests.http_server import http_server

DOCUMENTED_5XX = (503, 504)  # stopping / the request timeout

# -- what a hostile client sends ------------------------------------------------------------------------

hostile_schemas = st.sampled_from(
    [
        {"type": "string", "pattern": "^a{99999999}$"},
        {"type": "string", "pattern": "(a|aa)*b{1000}c{1000}"},
        {"type": "string", "pattern": "[" * 50},
        {"$ref": "#"},
        {"$ref": "#/definitions/x", "definitions": {"x": {"$ref": "#/definitions/x"}}},
        {"type": "array", "items": {"type": "integer"}, "minItems": 10**9},
        {"type": "string", "minLength": 10**9},
        {"type": "integer", "minimum": 10, "maximum": 1},
        {"enum": [f"v{i}" * 30 for i in range(3000)]},
        {"type": "object", "properties": {f"p{i}": {"type": "number"} for i in range(500)}},
        {"oneOf": [{"type": "string"}] * 200},
        {"type": "nonsense"},
        {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object"},
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        {"type": None, "$ref": {"x\u0080": {"\u0080" * 60: None}}},  # llguidance panics on this $ref
    ]
) | st.dictionaries(st.sampled_from(["type", "properties", "items", "pattern", "enum", "$ref", "x"]), json_values)
tool_call = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["call_1", ""]) | json_values,
        "type": st.just("function") | json_values,
        "function": st.fixed_dictionaries(
            {"name": st.sampled_from(["f", "bad name!"]) | json_values, "arguments": st.sampled_from(["{}", "{"])}
        )
        | json_values,
    }
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | json_values},
        optional={
            "content": st.text(max_size=60) | json_values,
            "name": json_values,
            "tool_calls": st.lists(tool_call, max_size=2) | json_values,
            "tool_call_id": st.sampled_from(["call_1", "x" * 200]) | json_values,
        },
    ),
    max_size=3,
) | st.just([{"role": "user", "content": "Say hi."}])
tools = st.lists(
    st.builds(
        lambda name, schema: {"type": "function", "function": {"name": name, "parameters": schema}},
        st.sampled_from(["f", "g", "bad name!", "x" * 70]),
        hostile_schemas,
    ),
    max_size=3,
)
adapters = st.sampled_from([[{"name": "loud", "scale": 4.0}], [{"name": "caps"}], [{"name": "nope"}], []]) | json_values
# name → (values a client means, hostile values)
fields: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "model": (st.sampled_from([BASE_MODEL, "caps", "loud"]), st.sampled_from(["gpt-4o", "m" * 300]) | json_values),
    "temperature": (st.floats(0, 2), st.floats(-1, 3, allow_nan=False) | json_values),
    "top_p": (st.floats(0.1, 1), st.floats(-1, 2, allow_nan=False) | json_values),
    "stream": (st.booleans(), json_values),
    "stream_options": (st.just({"include_usage": True}), json_values),
    "stop": (
        st.lists(st.text(min_size=1, max_size=8), max_size=3),
        st.lists(st.text(max_size=8), max_size=20) | json_values,
    ),
    "seed": (st.integers(0, 2**32 - 2), st.integers(-(2**40), 2**40) | json_values),
    "n": (st.just(1), st.integers(-1, 3) | json_values),
    "logprobs": (st.sampled_from([False, True, 0, 3, 20]), json_values),
    "top_logprobs": (st.integers(0, 20), json_values),
    "echo": (st.booleans(), json_values),
    "logit_bias": (st.just({}), json_values),
    "tools": (tools, json_values | st.lists(json_values, max_size=2)),
    "tool_choice": (
        st.sampled_from(["auto", "none", "required", {"type": "function", "function": {"name": "f"}}]),
        json_values,
    ),
    "parallel_tool_calls": (st.booleans(), json_values),
    "response_format": (
        st.builds(
            lambda schema: {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}, hostile_schemas
        )
        | st.just({"type": "json_object"}),
        json_values,
    ),
    "json_schema": (hostile_schemas, json_values),
    "grammar": (
        st.sampled_from(['root ::= "a"', "root ::= [", 'root ::= "a"{99999999}', "start: /x{99999}/"]),
        json_values,
    ),
    "adapters": (
        st.sampled_from([[{"name": "loud", "scale": 4.0}], [{"name": "caps"}], [{"name": "nope"}], []]),
        json_values,
    ),
    "ignore_eos": (st.booleans(), json_values),
    "x" * 10_000: (json_values, json_values),
}
adapter_loads = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["c2", "nan", "loop", "x" * 65, "bad name!"]) | json_values,
        "path": st.sampled_from(
            ["caps.gguf", "nan_alpha.gguf", "self.gguf", "ping.gguf", "/etc/passwd", "../x", "p" * 1024, ""]
        )
        | json_values,
    },
)


def _request_body(draw: st.DrawFn, chat: bool) -> bytes:
    """A request with a few fields a client means and, in most examples, one or two hostile ones."""
    meant = draw(st.lists(st.sampled_from(sorted(fields)), max_size=4, unique=True))
    hostile = draw(st.lists(st.sampled_from(sorted(fields)), max_size=2, unique=True)) if draw(st.booleans()) else []
    body: dict[str, Any] = {"model": BASE_MODEL, "max_tokens": draw(st.integers(1, 6)), "stream": draw(st.booleans())}
    if chat:
        body["messages"] = draw(st.just([{"role": "user", "content": "Say hi."}]) | messages)
    else:
        body["prompt"] = draw(st.text(min_size=1, max_size=80) | json_values)
    body |= {name: draw(fields[name][0]) for name in meant}
    body |= {name: draw(fields[name][1]) for name in hostile}
    if draw(st.integers(0, 9)) == 0:
        body["max_tokens"] = draw(st.integers(-2, 0) | st.sampled_from([2**31, 2**64, 1.5, "4", True, None]))
    return json.dumps(body).encode()


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes | None, bool]:
    """(method, path, body, drop the stream early)."""
    kind = draw(
        st.sampled_from(["chat", "chat", "chat", "completion", "completion", "load", "unload", "get", "raw", "deep"])
    )
    drop = draw(st.booleans())
    if kind in ("chat", "completion"):
        path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        return draw(st.sampled_from(["POST"] * 9 + ["GET"])), path, _request_body(draw, kind == "chat"), drop
    if kind == "load":
        return "POST", "/v1/adapters", json.dumps(draw(adapter_loads)).encode(), drop
    if kind == "unload":
        name = draw(st.sampled_from(["c2", "caps", "nope", "%2e%2e", "x" * 300]) | st.text(max_size=20))
        return "DELETE", "/v1/adapters/" + quote(name, safe=""), None, drop
    if kind == "get":
        path = draw(
            st.sampled_from(
                ["/v1/models", "/v1/adapters", f"/v1/models/{BASE_MODEL}", "/v1/models/x", "/v1/embeddings"]
            )
        )
        return draw(st.sampled_from(["GET", "GET", "POST", "PUT", "DELETE", "PATCH"])), path, None, drop
    if kind == "raw":
        path = draw(st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/adapters"]))
        return "POST", path, draw(st.binary(max_size=300) | st.text(max_size=300).map(str.encode)), drop
    depth = draw(st.sampled_from([70, 500, 3000]))
    schema = nested_schema_text(depth, draw(st.sampled_from(["items", "properties"])))
    bodies = [
        b"[" * depth + b"]" * depth,
        f'{{"model": "{BASE_MODEL}", "prompt": "Hi", "max_tokens": 2, "json_schema": {schema}}}'.encode(),
    ]
    return "POST", draw(st.sampled_from(["/v1/completions", "/v1/adapters"])), draw(st.sampled_from(bodies)), drop


# -- checking answers ---------------------------------------------------------------------------------------


def check_error_object(status: int, raw: bytes, sent: tuple[str, str, bytes | None, bool]) -> None:
    assert status < 500 or status in DOCUMENTED_5XX, (status, raw[:300], sent[:2], (sent[2] or b"")[:300])
    assert len(raw) < MAX_ERROR_BYTES, (status, len(raw), raw[:300])
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"] and "Traceback" not in error["message"], error


def check_stream(response: httpx2.Response, sent: tuple[str, str, bytes | None, bool]) -> str:
    """Read an SSE answer (or its first lines, when dropping it): each in-stream error is a bounded
    OpenAI error object; a whole stream ends in [DONE]."""
    drop = sent[3]
    last = ""
    for n, line in enumerate(response.iter_lines()):
        if not line.startswith("data: "):
            continue
        last = line[6:]
        if last != "[DONE]" and "error" in (event := json.loads(last)):
            check_error_object(400, json.dumps(event).encode(), sent)
            if event["error"]["code"] == "server_error":
                raise AssertionError(f"a server error inside a stream: {event}")
        if drop and n >= 2:
            return "dropped"
    assert last == "[DONE]", last
    return "streamed"


def send(http: httpx2.Client, base: str, sent: tuple[str, str, bytes | None, bool]) -> str:
    method, path, body, _ = sent
    headers = {"Content-Type": "application/json"}
    with http.stream(method, base + path, content=body, headers=headers) as response:
        if response.status_code >= 400:
            check_error_object(response.status_code, response.read(), sent)
            return str(response.status_code)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return check_stream(response, sent)
        raw = response.read()
        assert isinstance(json.loads(raw), dict), (response.status_code, raw[:300], sent)
        return str(response.status_code)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    adapters = hostile_adapter_dir(tmp_path_factory.mktemp("fuzz") / "adapters")
    loud = loud_adapter(adapters / "loud.gguf")
    with http_server(
        "--max-sequences", "4", "--adapter-dir", str(adapters), "--adapter", f"caps={adapters / 'caps.gguf'}",
        "--adapter", f"loud={loud}",
    ) as url:  # fmt: skip
        yield url


def test_fuzzed_openai_requests_get_bounded_openai_errors_and_the_server_serves_on(base_url: str) -> None:
    seen: Counter[str] = Counter()
    with httpx2.Client(timeout=120) as http:

        @FUZZ_SETTINGS
        @given(requests())
        def fuzz(sent: tuple[str, str, bytes | None, bool]) -> None:
            seen[send(http, base_url, sent)] += 1

        fuzz()
        # the server serves normally afterwards: a generation, the adapters, and nothing left running
        answer = http.post(
            base_url + "/v1/chat/completions",
            json={"model": BASE_MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4},
        )
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"], answer.text
        assert http.get(base_url + "/v1/adapters").status_code == 200
        deadline = time.monotonic() + 10
        while (health := http.get(base_url + "/health").json())["running"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert health["status"] == "ready" and health["running"] == 0, health
    print(f"\nfuzzed OpenAI requests: {CALLS}, answers: {dict(seen)}")
    # the fuzzer reached refusals, whole answers and streams, not only one kind
    assert seen["400"] and seen["200"] and seen["streamed"] + seen["dropped"], seen
