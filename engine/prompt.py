"""Turn a request's input into prompt tokens: raw text as is, chat messages through the chat template."""

from __future__ import annotations

from engine.backend import Backend
from engine.chat_template import ChatTemplate
from engine.errors import InvalidRequest
from engine.request import GenerateRequest


class PromptBuilder:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._template = ChatTemplate(
            backend.chat_template(),
            bos_token=backend.token_text(backend.bos_token),
            eos_token=backend.token_text(backend.eos_token),
        )

    def tokens(self, request: GenerateRequest) -> list[int]:
        backend = self._backend
        if request.messages is not None:
            tokens: list[int] = []
            for text, is_markup in self._template.render(request.messages):
                # Control tokens are parsed in the template's markup only, never in message contents.
                tokens += backend.tokenize(text, add_special=False, parse_special=is_markup)
            if backend.adds_bos and (not tokens or tokens[0] != backend.bos_token):
                tokens.insert(0, backend.bos_token)
        else:
            assert request.prompt is not None
            tokens = backend.tokenize(request.prompt, add_special=True, parse_special=False)
        if not tokens:
            raise InvalidRequest("the input tokenizes to nothing: give a non-empty prompt or message")
        return tokens
