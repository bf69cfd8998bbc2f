"""Tool calling's two pure halves: the answer's schema and prompt (tool_prompt.py), and reading the answer
back while it streams (tool_output.py), split at every possible place."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from engine.request import ChatMessage, GenerateRequest, NamedToolChoice, ToolCall, ToolFunction
from engine.tool_output import ToolAnswerReader
from engine.tool_prompt import answer_schema, as_plain_request, mentions_tools

PYDANTIC_LIKE = {
    "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    "type": "object",
    "properties": {"where": {"$ref": "#/$defs/Place"}, "days": {"type": "integer"}},
    "required": ["where"],
}
TOOLS = (ToolFunction(name="forecast", parameters=PYDANTIC_LIKE), ToolFunction(name="now"))
ASK = (ChatMessage(role="user", content="Weather?"),)


def request(**more: Any) -> GenerateRequest:
    return GenerateRequest(messages=ASK, tools=TOOLS, **more)


def test_the_answer_schema_takes_calls_and_refuses_what_the_parameters_refuse() -> None:
    validator = Draft202012Validator(answer_schema(request()))
    call = {"name": "forecast", "arguments": {"where": {"city": "Paris"}, "days": 2}}
    assert validator.is_valid({"tool_calls": [call, {"name": "now", "arguments": {}}]})
    assert validator.is_valid({"response": "Sunny."})  # auto: text too
    assert not validator.is_valid({"tool_calls": [{"name": "forecast", "arguments": {"where": {}}}]})  # $ref kept
    assert not validator.is_valid({"tool_calls": [call | {"arguments": {"where": {"city": "P"}, "extra": 1}}]})
    assert not validator.is_valid({"tool_calls": [{"name": "other", "arguments": {}}]})
    assert not validator.is_valid({"tool_calls": []})


def test_choices_narrow_the_answer() -> None:
    required = Draft202012Validator(answer_schema(request(tool_choice="required", parallel_tool_calls=False)))
    assert not required.is_valid({"response": "Sunny."})
    two = {"tool_calls": [{"name": "now", "arguments": {}}] * 2}
    assert not required.is_valid(two)
    named = Draft202012Validator(answer_schema(request(tool_choice=NamedToolChoice(name="now"))))
    assert named.is_valid(two) and not named.is_valid({"tool_calls": [{"name": "forecast", "arguments": {}}]})


def test_the_plain_request_describes_the_tools_and_writes_earlier_calls_as_text() -> None:
    history = (
        *ASK,
        ChatMessage(role="assistant", tool_calls=(ToolCall(id="c1", name="now", arguments="{}"),)),
        ChatMessage(role="tool", tool_call_id="c1", content="12:00"),
    )
    plain = as_plain_request(GenerateRequest(messages=history, tools=TOOLS))
    assert plain.json_schema is not None and not plain.tools and not mentions_tools(plain)
    assert plain.messages is not None
    assert plain.messages[0].role == "system" and '"name": "forecast"' in plain.messages[0].content
    assert json.loads(plain.messages[2].content) == {"tool_calls": [{"name": "now", "arguments": {}}]}
    assert plain.messages[3] == ChatMessage(role="user", content="Result of now: 12:00")
    unchosen = as_plain_request(GenerateRequest(messages=history, tools=TOOLS, tool_choice="none"))
    assert unchosen.json_schema is None and unchosen.messages is not None and len(unchosen.messages) == 3


def test_requests_that_cannot_call_are_refused() -> None:
    with pytest.raises(ValueError, match="not among the tools"):
        request(tool_choice=NamedToolChoice(name="missing"))
    with pytest.raises(ValueError, match="tools need `messages`"):
        GenerateRequest(prompt="hi", tools=TOOLS)
    with pytest.raises(ValueError, match="tool_call_id"):
        ChatMessage(role="tool", content="12:00")


answers = st.one_of(
    st.builds(lambda text: {"response": text}, st.text()),
    st.builds(
        lambda calls: {"tool_calls": calls},
        st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                    "arguments": st.dictionaries(
                        st.text(max_size=5), st.recursive(st.none() | st.integers() | st.text(), st.lists), max_size=3
                    ),
                }
            ),
            min_size=1,
            max_size=3,
        ),
    ),
)


@given(answers, st.lists(st.integers(1, 7), min_size=1), st.booleans())
def test_an_answer_read_in_pieces_gives_its_text_and_calls(
    answer: dict[str, Any], cuts: list[int], ascii: bool
) -> None:
    text = json.dumps(answer, ensure_ascii=ascii)
    reader = ToolAnswerReader()
    content, arguments, names = [], {}, {}
    at, i = 0, 0
    while at < len(text):
        piece = text[at : at + cuts[i % len(cuts)]]
        at, i = at + len(piece), i + 1
        new_text, deltas = reader.feed(piece)
        content.append(new_text)
        for d in deltas:
            if d.id is not None:
                assert d.index not in names
                names[d.index] = d.name
            arguments[d.index] = arguments.get(d.index, "") + d.arguments
    assert "".join(content) == answer.get("response", "")
    calls = answer.get("tool_calls", [])
    assert [names[i] for i in range(len(calls))] == [c["name"] for c in calls]
    assert [json.loads(arguments[i]) for i in range(len(calls))] == [c["arguments"] for c in calls]
    assert [json.loads(c.arguments) for c in reader.tool_calls()] == [c["arguments"] for c in calls]
