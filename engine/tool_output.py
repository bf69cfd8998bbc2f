"""Reading a tool-calling answer (tool_prompt.py's JSON) while it is generated: the text of a
`{"response": …}` answer as text deltas, a `{"tool_calls": […]}` answer as call deltas (id and name
first, then the arguments' text as it grows, as OpenAI streams them), and at the end the result's
`tool_calls` and finish_reason "tool_calls".

The answer was held to its schema token by token, so it is JSON of a known shape; what is read here is
where each value starts and ends, one character at a time (`JsonCursor`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Protocol, Self

from engine.errors import OutputMismatch
from engine.info import RequestStatus
from engine.interface import GenerationStream
from engine.request import ToolCall, ToolFunction
from engine.result import GenerationResult, TextDelta, ToolCallDelta
from engine.schema_check import checked_output, schema_validator

Path = tuple[str | int, ...]


class JsonCursor:
    """Follows JSON text character by character and says where values start and end, by path (keys and
    array indexes from the top). Tolerant: it reads, it does not validate."""

    def __init__(self) -> None:
        self._stack: list[list[Any]] = []  # per open container: [kind "{" or "[", key or index, expects a key, path]
        self._in_string = False
        self._escaped = False
        self._string_is_key = False
        self._string_path: Path = ()
        self._key: list[str] = []
        self._scalar_path: Path | None = None

    def _here(self) -> Path:
        return tuple(frame[1] for frame in self._stack)

    def feed(self, ch: str) -> tuple[Path | None, list[Path]]:
        """(the path of a value this character starts, the paths of values it ends)."""
        if self._in_string:
            return None, self._string_char(ch)
        ended: list[Path] = []
        if self._scalar_path is not None and ch in ",}] \t\r\n":
            ended.append(self._scalar_path)
            self._scalar_path = None
        started: Path | None = None
        if ch == '"':
            self._in_string = True
            frame = self._stack[-1] if self._stack else None
            self._string_is_key = frame is not None and frame[0] == "{" and frame[2]
            self._key.clear()
            if not self._string_is_key:
                started = self._string_path = self._here()
        elif ch in "{[":
            started = self._here()
            self._stack.append([ch, "" if ch == "{" else 0, ch == "{", started])
        elif ch in "}]":
            if self._stack:
                ended.append(self._stack.pop()[3])
        elif ch == ":":
            if self._stack:
                self._stack[-1][2] = False
        elif ch == ",":
            if self._stack:
                frame = self._stack[-1]
                if frame[0] == "[":
                    frame[1] += 1
                else:
                    frame[2] = True
        elif ch not in " \t\r\n" and self._scalar_path is None:
            started = self._scalar_path = self._here()
        return started, ended

    def _string_char(self, ch: str) -> list[Path]:
        if self._escaped:
            self._escaped = False
        elif ch == "\\":
            self._escaped = True
        elif ch == '"':
            self._in_string = False
            if not self._string_is_key:
                return [self._string_path]
            try:
                self._stack[-1][1] = json.loads('"' + "".join(self._key) + '"')
            except ValueError:
                self._stack[-1][1] = "".join(self._key)
            return []
        if self._string_is_key:
            self._key.append(ch)
        return []


class ToolAnswerReader:
    """Feed the answer's text as it comes; get text and call deltas back."""

    def __init__(self) -> None:
        self._cursor = JsonCursor()
        self._raw: list[str] = []  # the characters of the watched value being read
        self._watching: Path | None = None
        self.response: list[str] = []  # the decoded text of a {"response": …} answer, so far
        self._response_sent = 0  # characters of it given out
        self.calls: list[dict[str, str]] = []  # id, name, arguments (text)

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        out_text: list[str] = []
        deltas: list[ToolCallDelta] = []
        for ch in text:
            started, ended = self._cursor.feed(ch)
            if started is not None and self._watching is None and _watched(started):
                self._watching, self._raw = started, []
            path = self._watching
            if path is None:
                continue
            done = path in ended
            self._raw.append(ch)
            if path == ("response",):
                out_text.append(self._response_text(final=done))
            elif path[-1] == "arguments":
                call = self._call(int(path[1]))
                call["arguments"] += ch
                if call["name"]:  # arguments before their name (not in tool_prompt's order) wait for it
                    deltas.append(ToolCallDelta(index=int(path[1]), arguments=ch))
            elif done:  # a name, whole
                call = self._call(int(path[1]))
                call["name"] = json.loads("".join(self._raw))
                deltas.append(ToolCallDelta(int(path[1]), call["arguments"], call["id"], call["name"]))
            if done:
                self._watching = None
        new = "".join(out_text)
        self.response.append(new)
        return new, _merged(deltas)

    def _call(self, index: int) -> dict[str, str]:
        while len(self.calls) <= index:
            self.calls.append({"id": "call_" + secrets.token_hex(12), "name": "", "arguments": ""})
        return self.calls[index]

    def _response_text(self, *, final: bool) -> str:
        """The decoded response string's new characters (an escape sequence waits until it is whole)."""
        raw = "".join(self._raw)[1:]  # after the opening quote
        if final:
            raw = raw[:-1]
        else:
            cut = raw.rfind("\\")
            if cut >= 0 and len(raw) - cut < (6 if raw[cut + 1 : cut + 2] == "u" else 2):
                raw = raw[:cut]
        try:
            decoded = json.loads('"' + raw + '"')
        except ValueError:
            return ""  # `\\` split oddly: later characters complete it
        if not final and decoded and "\ud800" <= decoded[-1] <= "\udbff":
            decoded = decoded[:-1]  # a surrogate pair's first half: wait for the second
        new, self._response_sent = decoded[self._response_sent :], len(decoded)
        return new

    def answer_text(self) -> str:
        """The answer's text: a response's, none beside calls."""
        return "" if self.tool_calls() else "".join(self.response)

    def tool_calls(self) -> list[ToolCall]:
        """The calls read whole (a call cut off by max_tokens is left out)."""
        return [ToolCall(**call) for call in self.calls if call["name"] and _whole_json(call["arguments"])]


def _whole_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _watched(path: Path) -> bool:
    return path == ("response",) or (
        len(path) == 3 and path[0] == "tool_calls" and isinstance(path[1], int) and path[2] in ("name", "arguments")
    )


def _merged(deltas: list[ToolCallDelta]) -> list[ToolCallDelta]:
    """One delta per call per feed: argument characters joined."""
    merged: list[ToolCallDelta] = []
    for d in deltas:
        last = merged[-1] if merged else None
        if last is not None and last.index == d.index and d.id is None and last.id is None:
            merged[-1] = ToolCallDelta(last.index, last.arguments + d.arguments, last.id, last.name)
        else:
            merged.append(d)
    return merged


class AnswerReader(Protocol):
    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]: ...
    def tool_calls(self) -> list[ToolCall]: ...
    def answer_text(self) -> str: ...


class ToolCallStream:
    """A GenerationStream over another one whose request asked for a tool-calling answer: its deltas and
    result, read as text and tool calls by the answer's format's reader (made once the inner stream has
    been entered: a backend may choose the format then), each call's arguments checked against its
    function's parameters at the end."""

    def __init__(
        self,
        inner: GenerationStream,
        tools: tuple[ToolFunction, ...],
        reader: Callable[[], AnswerReader] = ToolAnswerReader,
    ) -> None:
        self._inner = inner
        self._tools = {tool.name: tool for tool in tools}
        self._make_reader = reader
        self._reader: AnswerReader = ToolAnswerReader()
        self.result: GenerationResult | None = None

    async def __aenter__(self) -> Self:
        for tool in self._tools.values():  # refused with the function's name (the answer's schema is the engine's)
            if tool.parameters is not None:
                schema_validator(tool.parameters, what=f"the `parameters` of tool {tool.name!r}")
        await self._inner.__aenter__()
        self._reader = self._make_reader()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)

    def abort(self) -> None:
        self._inner.abort()

    def status(self) -> RequestStatus:
        return self._inner.status()

    def __aiter__(self) -> AsyncIterator[TextDelta]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[TextDelta]:
        async for delta in self._inner:
            text, calls = self._reader.feed(delta.text)
            if text or calls or delta.logprobs or delta.prompt_logprobs:
                yield TextDelta(
                    text, delta.completion_tokens, delta.at, tuple(calls), delta.logprobs, delta.prompt_logprobs
                )
        result = self._inner.result
        assert result is not None
        calls = self._reader.tool_calls()
        for call in calls:
            await self._check(call)
        finish = "tool_calls" if calls and result.finish_reason == "stop" else result.finish_reason
        update = {"text": self._reader.answer_text(), "tool_calls": calls or None, "finish_reason": finish}
        self.result = result.model_copy(update=update)

    async def _check(self, call: ToolCall) -> None:
        """A call's arguments against its function's whole schema (the grammar enforced what it could)."""
        tool = self._tools.get(call.name)
        if tool is None or tool.parameters is None:
            return
        if (problem := await checked_output(tool.parameters, call.arguments)) is not None:
            raise OutputMismatch(f"the arguments of the call of {call.name}: {problem}")
