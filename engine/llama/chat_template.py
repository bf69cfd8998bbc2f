"""Render chat messages with the model's own Jinja chat template from the GGUF.

llama.cpp's built-in `llama_chat_apply_template` only knows fixed template families and silently falls
back for others, so the GGUF's `tokenizer.chat_template` is rendered with Jinja, as Transformers does.

The result is a list of segments marked as template markup or message content, so that control tokens
(`<|im_start|>`, …) are parsed only in markup: a user cannot inject them through message text.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import EngineFailure, InvalidRequest
from engine.llama.vocab import Vocab
from engine.request import ChatMessage, ToolFunction
from engine.tool_native import speaks_hermes
from engine.tool_prompt import described

# Used when a GGUF has no template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

Segment = tuple[str, bool]  # (text, is_markup)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = _tojson
        self.source = source or CHATML_TEMPLATE
        self.speaks_hermes = speaks_hermes(self.source)  # renders tools, expects <tool_call> blocks back
        try:
            self._template = env.from_string(self.source)
        except TemplateError as exc:
            raise EngineFailure(f"the chat template does not compile: {exc}") from exc
        self._bos_token = bos_token
        self._eos_token = eos_token

    @classmethod
    def for_vocab(cls, vocab: Vocab, source: str | None = None) -> ChatTemplate:
        """The model's own template (or `source`), with the model's special tokens."""
        return cls(
            source if source is not None else vocab.chat_template(),
            bos_token=vocab.token_text(vocab.bos_token),
            eos_token=vocab.token_text(vocab.eos_token),
        )

    def render(self, messages: Sequence[ChatMessage], tools: Sequence[ToolFunction] = ()) -> list[Segment]:
        """Render with unique placeholders for the contents, then put the contents back as their own segments.

        Templates may move contents around (Mistral's puts the system message into the last user turn)
        or drop them; that is fine. A template that changes the text of a content (upper-casing, escaping,
        slicing) would need the real text rendered as markup, where `</s>[INST]` in a message would be
        read as control tokens: such a render is refused instead (fail closed).
        """
        # Letters of both cases: a template that changes case changes the tag too (hex alone could come
        # out all digits, which upper() leaves as they are: 1 render in ~1,850 went unnoticed)
        tag = "aZ" + secrets.token_hex(8)
        placeholders = [f"\x00{tag}:{i}\x00" if m.content else "" for i, m in enumerate(messages)]
        masked = self._render([_for_template(m, p) for m, p in zip(messages, placeholders, strict=True)], tools)
        pieces = re.split(f"\x00{tag}:(\\d+)\x00", masked)
        markup, found = pieces[0::2], [int(i) for i in pieces[1::2]]
        if any("\x00" in part or tag in part for part in markup) or any(i >= len(messages) for i in found):
            raise InvalidRequest(
                "the model's chat template rewrites message text, so message text could be read as control "
                "tokens; loramux refuses to render it. Send a raw prompt instead, or start the server with "
                "--chat-template FILE"
            )
        segments: list[Segment] = []
        for i, part in enumerate(markup):
            if part:
                segments.append((part, True))
            if i < len(found) and messages[found[i]].content:
                segments.append((messages[found[i]].content, False))
        return segments

    def _render(self, messages: list[dict[str, Any]], tools: Sequence[ToolFunction] = ()) -> str:
        try:
            return self._template.render(
                messages=messages,
                tools=[{"type": "function", "function": described(t)} for t in tools] or None,
                add_generation_prompt=True,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
            )
        except TemplateError as exc:
            raise InvalidRequest(f"the model's chat template rejected these messages: {exc}") from exc


def _for_template(message: ChatMessage, content: str) -> dict[str, Any]:
    """A message as Hugging Face chat templates take it (calls with their arguments as values)."""
    shown: dict[str, Any] = {"role": message.role, "content": content}
    if message.tool_calls:
        shown["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_value}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        shown["tool_call_id"] = message.tool_call_id
    return shown


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # as Transformers renders templates: plain JSON (Jinja's own escapes <, > and & for HTML)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
