"""Tool calling on /v1/chat/completions, driven by the official `openai` client (unmodified) against a
spawned `loramux --http`: forced and required calls, a streamed call assembled from its deltas, a round
trip with the tool's result, and 100 varied parameter schemas (half with an adapter) whose arguments
must validate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
from jsonschema import Draft202012Validator

from tests import ROOT
from tests.e2e.test_openai import BASE_MODEL
from tests.http_server import http_server
from tests.tool_schemas import tool_schemas

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone.",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 200}


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    with http_server("--max-sequences", "8") as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def valid_for(tool: dict[str, Any], arguments: str) -> list[str]:
    schema = tool["function"]["parameters"]
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [e.message for e in validator.iter_errors(json.loads(arguments))]


def test_a_named_function_is_called_with_valid_arguments(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=BASE_MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        **GREEDY,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert calls and all(c.type == "function" and c.function.name == "get_time" for c in calls)
    assert all(c.id.startswith("call_") for c in calls) and len({c.id for c in calls}) == len(calls)
    assert not valid_for(TIME, calls[0].function.arguments)


def test_required_makes_a_call_and_parallel_false_makes_one(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=BASE_MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,
        **GREEDY,
    )
    calls = answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason == "tool_calls" and calls is not None and len(calls) == 1
    tool = {"get_weather": WEATHER, "get_time": TIME}[calls[0].function.name]
    assert not valid_for(tool, calls[0].function.arguments)


def test_a_streamed_call_assembles_to_the_same_call(client: openai.OpenAI) -> None:
    asked: dict[str, Any] = {"model": BASE_MODEL, "messages": ASK, "tools": [WEATHER], "tool_choice": "required"}
    whole = client.chat.completions.create(**asked, parallel_tool_calls=False, **GREEDY)
    chunks = list(client.chat.completions.create(**asked, parallel_tool_calls=False, stream=True, **GREEDY))
    pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert len(pieces) > 2, "the arguments arrive in pieces, as OpenAI streams them"
    first = pieces[0]
    assert first.index == 0 and first.id and first.type == "function" and first.function.name == "get_weather"
    assert all(p.id is None and p.function.name is None for p in pieces[1:])
    arguments = "".join(p.function.arguments or "" for p in pieces)
    assert arguments == whole.choices[0].message.tool_calls[0].function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # the SDK's own stream helper assembles the same call
    with client.chat.completions.stream(**asked, parallel_tool_calls=False, **GREEDY) as stream:
        for _ in stream:
            pass
        assembled = stream.get_final_completion().choices[0].message.tool_calls
    assert assembled and assembled[0].function.arguments == arguments


def test_a_round_trip_ends_in_text(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=BASE_MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False, **GREEDY
    )
    message = first.choices[0].message
    assert message.tool_calls
    conversation = [
        *ASK,
        message.model_dump(exclude_none=True),  # sent back as the SDK returned it
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "Sunny, 21 degrees."},
    ]
    answer = client.chat.completions.create(
        model=BASE_MODEL, messages=conversation, tools=[WEATHER], tool_choice="none", **GREEDY
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls


def test_auto_answers_in_text_or_calls(client: openai.OpenAI) -> None:
    for ask in (ASK, [{"role": "user", "content": "Say hello to me."}]):
        chunks = list(
            client.chat.completions.create(model=BASE_MODEL, messages=ask, tools=[WEATHER], stream=True, **GREEDY)
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
        finish = chunks[-1].choices[0].finish_reason
        assert (finish == "tool_calls" and calls and not text) or (finish in ("stop", "length") and not calls), finish
        assert "{" not in text[:1], "text answers arrive as text, not as the JSON they are generated in"


def test_100_varied_parameter_schemas_give_valid_arguments(client: openai.OpenAI) -> None:
    tools = tool_schemas(100)

    def call(i: int) -> tuple[str | None, str]:
        tool = tools[i]
        answer = client.chat.completions.create(
            model="caps" if i % 2 else BASE_MODEL,  # half through an adapter (loaded on first use)
            messages=[{"role": "user", "content": f"Please do task number {i}."}],
            tools=[tool],
            tool_choice={"type": "function", "function": {"name": tool["function"]["name"]}},
            parallel_tool_calls=False,
            temperature=0,
            max_tokens=300,
        )
        calls = answer.choices[0].message.tool_calls
        return (calls[0].function.arguments if calls else None), answer.choices[0].finish_reason

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(len(tools))))
    problems = {}
    for i, (arguments, finish) in enumerate(results):
        if arguments is None:
            problems[i] = f"no call ({finish})"
        elif errors := valid_for(tools[i], arguments):
            problems[i] = f"{arguments}: {errors[0]}"
    assert not problems, problems


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "not among the tools",
        ),
        ({"tool_choice": "required"}, "needs tools"),
        ({"tools": [WEATHER, WEATHER]}, "unique"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "not both"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]},
            "the `parameters` of tool 'f' is not a valid JSON Schema",
        ),
    ],
)
def test_wrong_tool_requests_are_400(client: openai.OpenAI, args: dict[str, Any], words: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=BASE_MODEL, messages=ASK, **args)
    error = caught.value.body
    assert isinstance(error, dict) and words in json.dumps(error), error


def test_a_model_with_its_own_tool_format_calls_through_it() -> None:
    """`--chat-template` with Hermes' `<tool_call>` blocks (Qwen 2.5's): the same OpenAI answers."""
    template = ROOT / "tests/fixtures/templates/hermes_tools.jinja"
    with http_server("--max-sequences", "2", "--chat-template", str(template)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        asked: dict[str, Any] = {"model": BASE_MODEL, "messages": ASK, "tools": [WEATHER], "tool_choice": "required"}
        whole = client.chat.completions.create(**asked, parallel_tool_calls=False, **GREEDY)
        calls = whole.choices[0].message.tool_calls
        assert whole.choices[0].finish_reason == "tool_calls" and calls and len(calls) == 1
        assert not valid_for(WEATHER, calls[0].function.arguments)
        chunks = list(client.chat.completions.create(**asked, parallel_tool_calls=False, stream=True, **GREEDY))
        pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
        assert pieces[0].function.name == "get_weather"
        assert "".join(p.function.arguments or "" for p in pieces) == calls[0].function.arguments
