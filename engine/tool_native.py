"""Tool calling in a model's own format, for models whose chat template has one: Hermes' `<tool_call>`
blocks, which Qwen 2.5/3, Hermes 2/3, SmolLM3 and others are trained on. The template renders the
tools and earlier calls itself (the backend passes them); the answer is held by a grammar to text (with
tool_choice auto) or calls, each call's JSON to its function's parameter schema:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Read back by turning the blocks into the generic format's JSON for tool_output.ToolAnswerReader, so the
deltas and calls come out the same whatever the format. Pure Python: the backend decides which format
its template speaks (`speaks_hermes`).
"""

from __future__ import annotations

import json

from engine.request import GenerateRequest, NamedToolChoice, ToolCall
from engine.result import ToolCallDelta
from engine.tool_output import ToolAnswerReader
from engine.tool_prompt import call_schema

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# the JSON of a call on one line, as the generic format's (llguidance's layout options)
_LAYOUT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", ", "lenient": True}


def speaks_hermes(template_source: str) -> bool:
    """Whether a chat template renders tools and expects `<tool_call>` blocks back."""
    return "tools" in template_source and OPEN in template_source


def hermes_request(request: GenerateRequest) -> GenerateRequest:
    """The request as the backend runs it: tools and earlier calls left for the template to render (none
    with tool_choice 'none'), the answer held to the format by `grammar`."""
    if not request.calls_tools:
        return request.model_copy(update={"tools": ()})
    return request.model_copy(update={"grammar": hermes_grammar(request), "tool_choice": "auto"})


def hermes_grammar(request: GenerateRequest) -> str:
    """A Lark grammar (llguidance's dialect): free text or calls (auto), or calls only."""
    schema = call_schema(request) | {"x-guidance": _LAYOUT}
    calls = 'call ("\\n" call)*' if request.parallel_tool_calls else "call"
    must_call = request.tool_choice == "required" or isinstance(request.tool_choice, NamedToolChoice)
    start = "calls" if must_call else "calls | TEXT"
    return "\n".join(
        [
            f"start: {start}",
            f"calls: {calls}",
            f'call: "{OPEN}\\n" body "\\n{CLOSE}"',
            f"body: %json {json.dumps(schema)}",
            # text that does not open a call (it may mention one later; the model then answers in text)
            "TEXT: /[^<](?s:.)*/",
        ]
    )


class HermesAnswerReader:
    """`<tool_call>` blocks read as the generic format's `{"tool_calls": [...]}`; text before the first
    block is the answer's text."""

    def __init__(self) -> None:
        self._calls = ToolAnswerReader()
        self._pending = ""  # what may still be (part of) a tag
        self._in_call = False
        self._blocks = 0
        self.text: list[str] = []

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        self._pending += text
        out: list[str] = []
        deltas: list[ToolCallDelta] = []
        while True:
            tag = CLOSE if self._in_call else OPEN
            at = self._pending.find(tag)
            cut = at if at >= 0 else len(self._pending) - _partial_tag(self._pending, tag)
            piece, self._pending = self._pending[:cut], self._pending[cut:]
            if self._in_call:
                deltas += self._calls.feed(piece)[1]
            elif not self._blocks:
                out.append(piece)  # text before any call; between and after calls only whitespace
            if at < 0:
                break
            self._pending = self._pending[len(tag) :]
            if not self._in_call:
                deltas += self._calls.feed('{"tool_calls": [' if not self._blocks else ", ")[1]
            else:
                self._blocks += 1
            self._in_call = not self._in_call
        new = "".join(out)
        self.text.append(new)
        return new, deltas

    def tool_calls(self) -> list[ToolCall]:
        return self._calls.tool_calls()

    def answer_text(self) -> str:
        return "".join(self.text).strip() if self._blocks else "".join(self.text)


def _partial_tag(text: str, tag: str) -> int:
    """How many of `text`'s last characters could begin `tag` (held back until the next piece)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
