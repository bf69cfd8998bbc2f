"""Constrained output (issue 10, item 1): JSON Schema and GBNF on the real model, in batches of 8, with
and without an adapter; over MCP (`json` in the result) and the OpenAI routes (`response_format`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import jsonschema
import openai
import pytest
from mcp import Client

from engine import (
    AdapterRef,
    ChatMessage,
    EngineConfig,
    GenerateRequest,
    InvalidRequest,
    OutputMismatch,
    SamplingParams,
)
from engine.config import default_adapter_dir
from engine.llama import LlamaEngine
from tests.http_server import http_server
from tests.schemas import varied_schemas

pytestmark = pytest.mark.anyio

ASK = (ChatMessage(role="user", content="Reply with a JSON value that fits the requested format."),)


@pytest.fixture(scope="module")
async def json_engine(anyio_backend: str) -> AsyncIterator[LlamaEngine]:
    async with LlamaEngine(EngineConfig(max_sequences=8, context_per_sequence=1024)) as eng:
        await eng.load_adapter("caps", "caps.gguf")
        yield eng


def constrained(
    schema: dict[str, Any] | None = None, *, adapter: str | None = None, strict: bool = False, **sampling: Any
) -> GenerateRequest:
    return GenerateRequest(
        messages=ASK,
        sampling=SamplingParams(**({"max_tokens": 400, "temperature": 0.0} | sampling)),
        adapters=(AdapterRef(name=adapter),) if adapter else (),
        json_schema=schema,
        json_schema_strict=strict,
    )


async def test_100_varied_schemas_give_valid_json_in_batches_of_8_with_and_without_an_adapter(
    json_engine: LlamaEngine,
) -> None:
    schemas = varied_schemas(100)
    outputs: dict[int, str] = {}

    async def one(i: int) -> None:
        result = await json_engine.complete(constrained(schemas[i], adapter="caps" if i % 2 else None))
        assert result.finish_reason == "stop", (schemas[i], result.text)
        outputs[i] = result.text

    for start in range(0, len(schemas), 8):  # 8 at a time: they share decode steps (both adapter groups)
        async with anyio.create_task_group() as tg:
            for i in range(start, min(start + 8, len(schemas))):
                tg.start_soon(one, i)
    for i, schema in enumerate(schemas):
        jsonschema.validate(json.loads(outputs[i]), schema)


async def test_constrained_greedy_output_is_the_same_alone_and_in_a_batch(json_engine: LlamaEngine) -> None:
    schemas = varied_schemas(8)
    alone = [(await json_engine.complete(constrained(s))).text for s in schemas]
    batched: dict[int, str] = {}

    async def one(i: int) -> None:
        batched[i] = (await json_engine.complete(constrained(schemas[i]))).text

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(one, i)
    assert [batched[i] for i in range(8)] == alone


async def test_sampled_constrained_output_is_valid_too(json_engine: LlamaEngine) -> None:
    schema = varied_schemas(3)[2]
    for seed in range(4):
        result = await json_engine.complete(constrained(schema, temperature=1.0, seed=seed))
        jsonschema.validate(json.loads(result.text), schema)


async def test_a_gbnf_grammar_is_followed(json_engine: LlamaEngine) -> None:
    request = GenerateRequest(messages=ASK, sampling=SamplingParams(temperature=0.0), grammar='root ::= "yes" | "no"')
    assert (await json_engine.complete(request)).text in ("yes", "no")


@pytest.mark.parametrize(
    ("schema", "grammar", "strict", "words"),
    [
        ({"type": "object", "if": {"required": ["a"]}}, None, True, '"if"'),  # strict: what cannot be enforced
        ({"type": "strng"}, None, False, "strng"),  # not a valid schema
        ({"type": "integer", "minimum": 5, "maximum": 3}, None, False, "minimum"),  # unsatisfiable
        ({"$ref": "#/definitions/nope"}, None, False, "/definitions/nope"),
        (None, "root ::= missing", False, "missing"),
    ],
)
async def test_an_invalid_or_unsupported_constraint_is_a_clear_error(
    json_engine: LlamaEngine, schema: dict[str, Any] | None, grammar: str | None, strict: bool, words: str
) -> None:
    request = GenerateRequest(messages=ASK, json_schema=schema, json_schema_strict=strict, grammar=grammar)
    with pytest.raises(InvalidRequest, match=r"json_schema|grammar") as caught:
        await json_engine.complete(request)
    assert words in str(caught.value) and len(str(caught.value)) < 500


async def test_keywords_that_cannot_be_enforced_are_checked_on_the_output(json_engine: LlamaEngine) -> None:
    """Not strict: `not` is not enforced token by token, so a string comes out, and the check of the output
    fails it naming `not`; `uniqueItems`, `if`/`then`, a look-around regex and `oneOf` run, and whatever
    comes out either satisfies the whole schema or is an error naming the keyword: never an invalid success."""
    with pytest.raises(OutputMismatch, match="`not`"):
        await json_engine.complete(constrained({"type": "string", "not": {"type": "string"}}))
    schemas = [
        {"type": "array", "items": {"type": "integer"}, "uniqueItems": True, "minItems": 2, "maxItems": 4},
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
         "if": {"properties": {"a": {"minimum": 10}}}, "then": {"properties": {"a": {"multipleOf": 2}}}},
        {"type": "string", "pattern": "^(?=.*x).{1,12}$"},
        {"$schema": "http://json-schema.org/schema", "oneOf": [{"type": "integer"}, {"type": "boolean"}]},
    ]  # fmt: skip
    for schema in schemas:
        try:
            result = await json_engine.complete(constrained(schema, max_tokens=60))
        except OutputMismatch as exc:
            assert any(f"`{k}`" in str(exc) for k in ("uniqueItems", "multipleOf", "pattern", "oneOf")), exc
        else:
            assert result.finish_reason == "stop"
            jsonschema.validate(json.loads(result.text), {k: v for k, v in schema.items() if k != "$schema"})


# -- over MCP and the OpenAI API ------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with http_server("--adapter", f"caps={default_adapter_dir() / 'caps.gguf'}") as url:
        yield url


async def test_the_tool_returns_the_parsed_value_and_says_when_max_tokens_cut_it(base_url: str) -> None:
    async with Client(base_url + "/mcp") as client:
        ok = await client.call_tool(
            "llm_inference",
            {"prompt": "Describe a person.", "json_schema": PERSON, "temperature": 0, "adapter": "caps"},
        )
        assert not ok.is_error, ok.content
        data = ok.structured_content
        assert data is not None and data["json"] == json.loads(data["text"])
        jsonschema.validate(data["json"], PERSON)
        cut = await client.call_tool(
            "llm_inference", {"prompt": "Describe a person.", "json_schema": PERSON, "max_tokens": 3}
        )
        assert cut.is_error and "cut off after 3 tokens" in cut.content[0].text  # type: ignore[union-attr]
        strict = {"prompt": "x", "json_schema": {"type": "object", "if": {}}, "json_schema_strict": True}
        bad = await client.call_tool("llm_inference", strict)
        assert bad.is_error and '"if"' in bad.content[0].text  # type: ignore[union-attr]
        broken = await client.call_tool(
            "llm_inference", {"prompt": "x", "json_schema": {"type": "string", "not": {"type": "string"}}}
        )
        assert broken.is_error and "`not`" in broken.content[0].text  # type: ignore[union-attr]
        plain = await client.call_tool("llm_inference", {"prompt": "Say hi.", "max_tokens": 4})
        assert plain.structured_content["json"] is None  # type: ignore[index]


def test_openai_response_format_json_schema_and_json_object(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    base = client.models.list().data[0].id
    answer = client.chat.completions.create(
        model=base,
        messages=[{"role": "user", "content": "Describe a person."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), PERSON)
    anything = client.chat.completions.create(
        model="caps",
        messages=[{"role": "user", "content": "Describe a city."}],
        response_format={"type": "json_object"},
        max_tokens=300,
        temperature=0,
    )
    assert isinstance(json.loads(anything.choices[0].message.content or ""), dict)
    # llama-server's form, which older instructor releases send: json_object with a schema
    shaped = client.chat.completions.create(
        model=base,
        messages=[{"role": "user", "content": "Describe a person."}],
        response_format={"type": "json_object", "schema": PERSON},  # type: ignore[typeddict-unknown-key]
        max_tokens=300,
    )
    jsonschema.validate(json.loads(shaped.choices[0].message.content or ""), PERSON)
    with pytest.raises(openai.BadRequestError, match='"if"'):
        client.chat.completions.create(
            model=base,
            messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"if": {}}, "strict": True}},
        )
