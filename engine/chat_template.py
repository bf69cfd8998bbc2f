"""Render chat messages with the model's own Jinja chat template from the GGUF.

llama.cpp's built-in `llama_chat_apply_template` only knows fixed template families and silently falls
back for others, so the GGUF's `tokenizer.chat_template` is rendered with Jinja, as Transformers does.

The result is a list of segments marked as template markup or message content, so that control tokens
(`<|im_start|>`, …) are parsed only in markup: a user cannot inject them through message text.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Sequence
from datetime import datetime

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import InvalidRequest
from engine.request import ChatMessage

logger = logging.getLogger(__name__)

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
        self.source = source or CHATML_TEMPLATE
        self._template = env.from_string(self.source)
        self._bos_token = bos_token
        self._eos_token = eos_token

    def render(self, messages: Sequence[ChatMessage]) -> list[Segment]:
        # Render with unique placeholders for the contents, then put the contents back as their own segments.
        tag = secrets.token_hex(8)
        placeholders = [f"\x00{tag}:{i}\x00" for i in range(len(messages))]
        masked = self._render([{"role": m.role, "content": p} for m, p in zip(messages, placeholders, strict=True)])
        pieces = re.split(f"\x00{tag}:(\\d+)\x00", masked)
        found = [int(i) for i in pieces[1::2]]
        if found != list(range(len(messages))):
            # The template transforms or reorders contents: fall back to rendering them in place.
            logger.warning("chat template rewrites message contents; rendering without content isolation")
            return [(self._render([m.model_dump() for m in messages]), True)]
        segments: list[Segment] = []
        for i, markup in enumerate(pieces[0::2]):
            if markup:
                segments.append((markup, True))
            if i < len(messages) and messages[i].content:
                segments.append((messages[i].content, False))
        return segments

    def _render(self, messages: list[dict[str, str]]) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
            )
        except TemplateError as exc:
            raise InvalidRequest(f"the model's chat template rejected these messages: {exc}") from exc
