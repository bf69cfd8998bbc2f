"""Tool calling for any chat model, as llama.cpp's generic format does it (models whose template has a
format of their own: tool_native.py): the functions are described in the system message, and the
answer is one JSON object, held token by token to a schema made of the functions' parameter schemas:

    {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}   a call (or several)
    {"response": "It is sunny."}                                                   text (tool_choice auto)

So a call's `arguments` are always JSON for that function's parameters. Earlier turns are written the
same way: an assistant's calls as that JSON, a tool's result as a user message naming the function. Pure
Python over the request types: every backend can use it; tool_output.py reads the answer back.
"""

from __future__ import annotations

import json
from typing import Any

from engine.request import ChatMessage, GenerateRequest, NamedToolChoice, ToolFunction

ANY_OBJECT: dict[str, Any] = {"type": "object"}


def mentions_tools(request: GenerateRequest) -> bool:
    """Whether the request has tools, or a conversation with calls or their results, to write as text."""
    return bool(request.tools) or any(m.tool_calls or m.role == "tool" for m in request.messages or ())


def as_plain_request(request: GenerateRequest) -> GenerateRequest:
    """The same request with its tools written into the conversation and the answer's schema as its
    `json_schema` (tool_choice 'none': the conversation only, free text)."""
    messages = plain_messages(request.messages or ())
    update: dict[str, Any] = {"tools": (), "tool_choice": "auto", "parallel_tool_calls": True}
    if request.calls_tools:
        messages = with_tool_instructions(messages, request)
        update |= {
            "json_schema": answer_schema(request),
            "json_schema_strict": any(t.strict for t in request.tools),
        }
    return request.model_copy(update=update | {"messages": messages})


def plain_messages(messages: tuple[ChatMessage, ...]) -> tuple[ChatMessage, ...]:
    """Earlier calls and their results as text any chat template renders."""
    names = {call.id: call.name for m in messages for call in m.tool_calls}
    plain = []
    for m in messages:
        if m.tool_calls:
            calls = [{"name": c.name, "arguments": c.arguments_value} for c in m.tool_calls]
            plain.append(ChatMessage(role="assistant", content=json.dumps({"tool_calls": calls}, ensure_ascii=False)))
        elif m.role == "tool":
            name = names.get(m.tool_call_id or "", "a function")
            plain.append(ChatMessage(role="user", content=f"Result of {name}: {m.content}"))
        else:
            plain.append(m)
    return tuple(plain)


def with_tool_instructions(messages: tuple[ChatMessage, ...], request: GenerateRequest) -> tuple[ChatMessage, ...]:
    """The tools' description, after the system message's own text (or as a new first system message)."""
    instructions = _instructions(request)
    if messages and messages[0].role == "system":
        first = ChatMessage(role="system", content=messages[0].content + "\n\n" + instructions)
        return (first, *messages[1:])
    return (ChatMessage(role="system", content=instructions), *messages)


def _instructions(request: GenerateRequest) -> str:
    tools = [described(t) for t in _callable(request)]
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    call = '{"tool_calls": [{"name": "<function name>", "arguments": {<arguments>}}]}'
    if isinstance(request.tool_choice, NamedToolChoice):
        how = f"Call the function {request.tool_choice.name}. Answer only with JSON: {call}"
    elif request.tool_choice == "required":
        how = f"Call one of these functions. Answer only with JSON: {call}"
    else:
        how = (
            f"To call functions, answer only with JSON: {call}\n"
            'To answer the user directly, answer only with JSON: {"response": "<your answer>"}'
        )
    many = "" if request.parallel_tool_calls else " Call one function at a time."
    return f"You can call these functions:\n{listing}\n\n{how}{many}"


def described(tool: ToolFunction) -> dict[str, Any]:
    """A function as prompts show it: name, description, parameters."""
    described: dict[str, Any] = {"name": tool.name}
    if tool.description:
        described["description"] = tool.description
    described["parameters"] = tool.parameters or ANY_OBJECT
    return described


def _callable(request: GenerateRequest) -> list[ToolFunction]:
    if isinstance(request.tool_choice, NamedToolChoice):
        return [t for t in request.tools if t.name == request.tool_choice.name]
    return list(request.tools)


def answer_schema(request: GenerateRequest) -> dict[str, Any]:
    """The JSON Schema of the answer."""
    call = call_schema(request)
    defs = call.pop("$defs")
    array: dict[str, Any] = {"type": "array", "items": call, "minItems": 1}
    if not request.parallel_tool_calls:
        array["maxItems"] = 1
    answer: dict[str, Any] = _object(tool_calls=array)
    if request.tool_choice == "auto":
        answer = {"anyOf": [answer, _object(response={"type": "string"})]}
    return answer | {"$defs": defs}


def call_schema(request: GenerateRequest) -> dict[str, Any]:
    """The JSON Schema of one call, `{"name": …, "arguments": …}`, of a function the request may call. Each
    function's parameters sit under `$defs` whole, their own `$ref`s rewritten to point there, so schemas
    with `$defs` (pydantic's) keep working."""
    tools = _callable(request)
    defs = {f"tool_{i}": _rebased(_parameters(t), f"#/$defs/tool_{i}") for i, t in enumerate(tools)}
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": {"$ref": f"#/$defs/tool_{i}"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for i, t in enumerate(tools)
    ]
    return (calls[0] if len(calls) == 1 else {"anyOf": calls}) | {"$defs": defs}


def _parameters(tool: ToolFunction) -> dict[str, Any]:
    # placed inside another schema: its own dialect and base URI would not hold there
    schema = {k: v for k, v in (tool.parameters or ANY_OBJECT).items() if k not in ("$schema", "$id")}
    return _closed(schema)


# keywords that let an object have properties beyond `properties`: such an object is left as it is
_OPEN_OBJECT = ("additionalProperties", "patternProperties", "unevaluatedProperties", "minProperties", "propertyNames")


def _closed(schema: Any) -> Any:
    """Objects that list their properties and say nothing of others get no others, as llama.cpp's
    json-schema-to-grammar generates them: a model otherwise invents properties until max_tokens (seen
    here in 5 of 100 tool schemas). A stricter output still validates against the caller's schema."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if isinstance(schema.get("properties"), dict) and not any(k in schema for k in _OPEN_OBJECT):
        closed["additionalProperties"] = False
    return closed


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _rebased(schema: Any, root: str) -> Any:
    """`schema` with every local `$ref` ("#…") pointing under `root`, where the schema is placed."""
    if isinstance(schema, dict):
        return {
            key: root + value[1:] if key == "$ref" and isinstance(value, str) and value.startswith("#")
            else _rebased(value, root)
            for key, value in schema.items()
        }  # fmt: skip
    if isinstance(schema, list):
        return [_rebased(item, root) for item in schema]
    return schema
