"""The MCP tool's arguments come from the engine's request models: bounds and descriptions cannot drift."""

from __future__ import annotations

import re

import pytest
from mcp import Client

from engine import AdapterRef, ChatMessage, EngineConfig, GenerateRequest, SamplingParams
from engine.llama import LlamaEngine
from mcp_server.tools.server import build_server
from tests import ROOT
from tests.fake_runner import FakeRunner

pytestmark = pytest.mark.anyio
CONSTRAINTS = ("minimum", "maximum", "exclusiveMinimum", "minLength", "maxLength", "minItems", "maxItems")


async def tool_schemas() -> dict[str, dict]:
    engine = LlamaEngine(EngineConfig(), runner_factory=FakeRunner)  # type: ignore[arg-type]
    async with Client(build_server(engine)) as client:
        return {t.name: t.input_schema for t in (await client.list_tools()).tools}


def constraints(schema: dict) -> dict:
    if "anyOf" in schema:  # optional in the tool: the non-null branch carries the bounds
        schema = {**schema, **next(s for s in schema["anyOf"] if s.get("type") != "null")}
    return {k: schema[k] for k in CONSTRAINTS if k in schema}


async def test_sampling_parameters_match_the_engine_exactly() -> None:
    props = (await tool_schemas())["llm_inference"]["properties"]
    engine_props = SamplingParams.model_json_schema()["properties"]
    assert set(engine_props) <= set(props)
    for name, engine_schema in engine_props.items():
        assert constraints(props[name]) == constraints(engine_schema), name
        assert props[name]["description"] == engine_schema["description"], name
        assert props[name].get("default") == engine_schema.get("default"), name


async def test_input_bounds_match_the_engine() -> None:
    props = (await tool_schemas())["llm_inference"]["properties"]
    request = GenerateRequest.model_json_schema()["properties"]
    for name in ("prompt", "messages", "adapters"):
        assert constraints(props[name]) == constraints(request[name]), name
    assert constraints(props["system"])["maxLength"] == ChatMessage.model_fields["content"].metadata[0].max_length
    assert constraints(props["adapter"]) == constraints(AdapterRef.model_json_schema()["properties"]["name"])


async def test_the_readme_documents_every_tool_parameter() -> None:
    props = (await tool_schemas())["llm_inference"]["properties"]
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## The tool: `llm_inference`") :]
    documented = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE))
    assert set(props) <= documented, f"the README's tool table lacks {sorted(set(props) - documented)}"
