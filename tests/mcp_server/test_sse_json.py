"""A streamed chunk is one SSE line for every client: the fuzz caught a NEL (U+0085) in generated text
splitting a `data:` line for a client that reads lines with str.splitlines (httpx's iter_lines)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from mcp_server.openai_api.completions import sse_json


@given(st.text())
def test_any_text_is_one_line_and_the_same_value(text: str) -> None:
    line = sse_json({"delta": text})
    assert len(line.splitlines()) <= 1 and json.loads(line) == {"delta": text}


def test_text_stays_utf8_but_line_breakers_are_escaped() -> None:
    assert sse_json("é\x85\u2028\u2029") == '"é\\u0085\\u2028\\u2029"'
