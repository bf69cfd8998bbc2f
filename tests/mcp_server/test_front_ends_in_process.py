"""The MCP tools and the OpenAI routes in-process, against a scripted fake `InferenceEngine` (tests/fake_engine.py):
no model, no subprocess, milliseconds each. What they check is the front ends' own work: arguments to
engine requests, engine answers and errors to tool results and OpenAI objects, capabilities honoured.
The same paths on the real model, over real transports, are in tests/e2e/."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from mcp import Client
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from engine import AdapterRef, Capabilities, InvalidRequest
from mcp_server.http_app import build_http_app
from mcp_server.metrics import Metrics
from mcp_server.tools.server import build_server
from tests.fake_engine import MODEL, FakeEngine

pytestmark = pytest.mark.anyio


@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    async with FakeEngine() as fake:
        yield fake


@pytest.fixture
async def mcp(engine: FakeEngine) -> AsyncIterator[Client]:
    async with Client(build_server(engine)) as client:
        yield client


@pytest.fixture
async def http(engine: FakeEngine) -> AsyncIterator[httpx2.AsyncClient]:
    app = build_http_app(engine)  # its lifespan (engine start, MCP sessions) is not run: the fixture started it
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://127.0.0.1") as client:
        yield client


def text_of(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


# -- MCP tools ---------------------------------------------------------------------------------------------


async def test_llm_inference_turns_arguments_into_the_engine_request(mcp: Client, engine: FakeEngine) -> None:
    await engine.load_adapter("caps", "caps.gguf")
    result = await mcp.call_tool(
        "llm_inference",
        {"prompt": "Hi", "max_tokens": 3, "temperature": 0, "adapters": [{"name": "caps", "scale": 0.5}]},
    )
    assert not result.is_error, text_of(result)
    assert result.structured_content["text"] == "one two three"
    assert result.structured_content["finish_reason"] == "length"
    (request,) = engine.requests
    assert request.sampling.max_tokens == 3 and request.sampling.temperature == 0
    assert request.adapters == (AdapterRef(name="caps", scale=0.5),) and request.messages[-1].content == "Hi"


async def test_tool_errors_are_the_engines_words(mcp: Client, engine: FakeEngine) -> None:
    engine.fail_with = InvalidRequest("the prompt is too long for this test")
    result = await mcp.call_tool("llm_inference", {"prompt": "Hi"})
    assert result.is_error and "too long for this test" in text_of(result)
    result = await mcp.call_tool("llm_inference", {"prompt": "Hi", "adapter": "nope"})
    assert result.is_error and "no adapter named 'nope'" in text_of(result)
    result = await mcp.call_tool("llm_inference", {"prompt": "Hi", "PROMPT": "x"})
    assert result.is_error and "unknown argument `PROMPT`" in text_of(result)


async def test_the_tool_honours_the_engines_capabilities(mcp: Client, engine: FakeEngine) -> None:
    for name in ("a", "b", "c"):
        await engine.load_adapter(name, f"{name}.gguf")
    three = [{"name": n} for n in ("a", "b", "c")]
    result = await mcp.call_tool("llm_inference", {"prompt": "Hi", "adapters": three})
    assert result.is_error and "at most 2 adapters" in text_of(result)
    result = await mcp.call_tool("llm_inference", {"prompt": "Hi", "json_schema": {"type": "integer"}})
    assert result.is_error and "cannot constrain output" in text_of(result)
    assert engine.requests == []  # refused before the engine saw them


async def test_adapter_tools_over_the_engine(mcp: Client, engine: FakeEngine) -> None:
    loaded = await mcp.call_tool("load_adapter", {"name": "caps", "path": "caps.gguf"})
    assert not loaded.is_error and loaded.structured_content["adapter"]["name"] == "caps"
    listing = await mcp.call_tool("list_adapters", {})
    assert [a["name"] for a in listing.structured_content["adapters"]] == ["caps"]
    assert not (await mcp.call_tool("unload_adapter", {"name": "caps"})).is_error
    gone = await mcp.call_tool("unload_adapter", {"name": "caps"})
    assert gone.is_error and "no adapter named 'caps'" in text_of(gone)
    bad = await mcp.call_tool("load_adapter", {"name": "x", "path": "/etc/passwd"})
    assert bad.is_error and "not an adapter file" in text_of(bad)


# -- OpenAI routes ------------------------------------------------------------------------------------------


CHAT = {"model": MODEL.name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


async def test_chat_completion_whole_and_streamed(http: httpx2.AsyncClient, engine: FakeEngine) -> None:
    answer = await http.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["choices"][0]["message"]["content"] == "one two three four"
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 4
    streamed = await http.post("/v1/chat/completions", json=CHAT | {"stream": True})
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(
        json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1] if json.loads(e)["choices"]
    )
    assert text == "one two three four"


async def test_model_names_an_adapter_or_is_a_404(http: httpx2.AsyncClient, engine: FakeEngine) -> None:
    await engine.load_adapter("caps", "caps.gguf")
    assert (await http.post("/v1/chat/completions", json=CHAT | {"model": "caps"})).status_code == 200
    assert engine.requests[-1].adapters == (AdapterRef(name="caps"),)
    missing = await http.post("/v1/chat/completions", json=CHAT | {"model": "gpt-4o"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert MODEL.name in missing.json()["error"]["message"]


async def test_openai_routes_honour_capabilities_and_errors(http: httpx2.AsyncClient, engine: FakeEngine) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}}
    refused = await http.post("/v1/chat/completions", json=CHAT | {"response_format": schema})
    assert refused.status_code == 400 and "cannot constrain output" in refused.json()["error"]["message"]
    engine.fail_with = InvalidRequest("scripted failure")
    failed = await http.post("/v1/chat/completions", json=CHAT)
    assert failed.status_code == 400 and failed.json()["error"]["message"] == "scripted failure"
    streamed = await http.post("/v1/chat/completions", json=CHAT | {"stream": True})
    assert streamed.status_code == 200 and '"scripted failure"' in streamed.text and "data: [DONE]" in streamed.text
    for method, path, status in (("GET", "/v1/chat/completions", 405), ("POST", "/v1/embeddings", 404)):
        answer = await http.request(method, path)
        assert answer.status_code == status and set(answer.json()["error"]) == {"message", "type", "param", "code"}


async def test_models_list_the_base_and_adapters(http: httpx2.AsyncClient, engine: FakeEngine) -> None:
    await engine.load_adapter("caps", "caps.gguf")
    listed = (await http.get("/v1/models")).json()["data"]
    assert [m["id"] for m in listed] == [MODEL.name, "caps"] and listed[1]["parent"] == MODEL.name
    assert (await http.get("/v1/models/caps")).json()["id"] == "caps"


async def test_capabilities_reach_health(http: httpx2.AsyncClient, engine: FakeEngine) -> None:
    health = (await http.get("/health")).json()
    assert (
        health["status"] == "ready"
        and health["capabilities"] == Capabilities(max_adapters_per_request=2, constrained_output=False).model_dump()
    )


async def test_tool_schemas_fit_the_engines_capabilities(mcp: Client) -> None:
    """The fake engine mixes at most 2 adapters and cannot constrain output: llm_inference says so."""
    tools = {tool.name: tool for tool in (await mcp.list_tools()).tools}
    properties = tools["llm_inference"].input_schema["properties"]
    arrays = [o for o in properties["adapters"]["anyOf"] if o.get("type") == "array"]
    assert arrays and arrays[0]["maxItems"] == 2
    assert properties["json_schema"]["description"].startswith("Not available on this server's engine.")
    assert not properties["prompt"]["description"].startswith("Not available")


# -- every request counted, those refused before the engine too ----------------------------------------------


def refused(text: str, interface: str, endpoint: str, outcome: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "loramux_requests_total" and labels == {
                "interface": interface, "endpoint": endpoint, "outcome": outcome, "adapter_set": "none"
            }:  # fmt: skip
                return sample.value
    return 0.0


async def test_openai_refusals_before_the_engine_are_counted(engine: FakeEngine) -> None:
    app = build_http_app(engine, auth_token="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    transport = httpx2.ASGITransport(app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=auth) as http:
        assert (await http.post("/v1/chat/completions", json=CHAT | {"frobnicate": 1})).status_code == 400
        assert (await http.post("/v1/chat/completions", json=CHAT | {"model": "gpt-4o"})).status_code == 404
        assert (await http.post("/v1/completions", content=b"{not json")).status_code == 400
        assert (await http.get("/v1/chat/completions")).status_code == 405  # the router's own refusal
        big = b"x" * (5 << 20)
        assert (await http.post("/v1/chat/completions", content=big)).status_code == 413  # the body limit's
        anonymous = {"Authorization": "Bearer wrong"}
        assert (await http.post("/v1/chat/completions", json=CHAT, headers=anonymous)).status_code == 401
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200  # counted as it was before
        text = (await http.get("/metrics")).text
    assert refused(text, "openai", "/v1/chat/completions", "invalid") == 3  # field, method, size
    # the unknown model reached the engine (an adapter of that name?): counted there, under its name
    assert 'adapter_set="gpt-4o",endpoint="/v1/chat/completions",interface="openai",outcome="invalid"} 1.0' in text
    assert refused(text, "openai", "/v1/completions", "invalid") == 1
    assert refused(text, "openai", "/v1/chat/completions", "unauthorized") == 1
    assert 'outcome="length"' in text  # the good request, once, with its adapter set


async def test_mcp_refusals_before_the_engine_are_counted(engine: FakeEngine) -> None:
    metrics = Metrics(engine)
    async with Client(build_server(engine, metrics=metrics)) as mcp:
        assert (await mcp.call_tool("llm_inference", {"prompt": "Hi", "PROMPT": "x"})).is_error  # unknown argument
        assert (await mcp.call_tool("llm_inference", {"prompt": "Hi", "temperature": 9})).is_error  # out of bounds
        assert (await mcp.call_tool("llm_inference", {"messages": [], "prompt": "x"})).is_error  # the tool's own
        assert (await mcp.call_tool("llm_inference", {"prompt": "Hi", "json_schema": {}})).is_error  # capability
        assert (await mcp.call_tool("list_adapters", {"x": 1})).is_error  # not a generation call: not counted
        assert not (await mcp.call_tool("llm_inference", {"prompt": "Hi", "max_tokens": 2})).is_error
    text = generate_latest(metrics.registry).decode()
    assert refused(text, "mcp", "llm_inference", "invalid") == 4
    assert engine.requests and len(engine.requests) == 1  # only the good call reached the engine
