"""Turn a request into what the core runs: prompt token ids, token budget, deadline.

Runs on the async side in a worker thread, never on the decode thread: rendering a chat template and
tokenizing a 200,000-character prompt take long enough to stall every running stream. llama.cpp's
vocabulary is read-only after load, so tokenizing beside a running decode is safe (llama-server does
the same from its HTTP threads). Everything that can fail per request happens here or at admission,
before the core registers a sequence.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable

from engine.errors import InvalidRequest, PromptTooLong
from engine.llama.chat_template import ChatTemplate
from engine.llama.cpp.constraints import ConstraintCompiler
from engine.llama.scheduling.prepared import PreparedRequest
from engine.llama.vocab import Vocab
from engine.request import GenerateRequest
from engine.schema_check import schema_validator
from engine.tool_native import HermesAnswerReader, hermes_request
from engine.tool_output import AnswerReader, ToolAnswerReader
from engine.tool_prompt import as_plain_request

logger = logging.getLogger(__name__)


class RequestPreparer:
    def __init__(
        self,
        vocab: Vocab,
        template: ChatTemplate,
        *,
        context_per_request: int,
        timeout: float,
        constraints: ConstraintCompiler | None = None,
    ) -> None:
        self._vocab = vocab
        self._template = template
        self._context = context_per_request
        self._timeout = timeout
        self._constraints = constraints

    def prepare(self, request_id: int, request: GenerateRequest, submitted_at: float) -> PreparedRequest:
        tokens = self.tokens(request)
        limit = self._context
        if len(tokens) >= limit:
            raise PromptTooLong(
                f"the prompt is {len(tokens)} tokens but each request's context holds {limit} tokens, "
                f"prompt and answer together: shorten the prompt below {limit - 1} tokens "
                "(or start the server with a larger --context)"
            )
        constraint = None
        if request.json_schema is not None or request.grammar is not None:
            if self._constraints is None:
                raise InvalidRequest("this engine cannot constrain output: drop json_schema and grammar")
            if request.json_schema is not None:
                schema_validator(request.json_schema)  # not a valid JSON Schema: refused before any work
            constraint = self._constraints.matcher(
                json_schema=request.json_schema, grammar=request.grammar, strict=request.json_schema_strict
            )
        return PreparedRequest(
            constraint=constraint,
            request_id=request_id,
            prompt_tokens=tokens,
            # The seed is chosen here when the call gave none, so that its receipt can name it.
            sampling=request.sampling
            if request.sampling.seed is not None
            else request.sampling.model_copy(update={"seed": secrets.randbelow(2**32 - 1)}),
            adapters=request.adapters,
            logprobs=request.logprobs,
            prompt_logprobs=request.prompt_logprobs,
            batch_id=request.batch_id,
            adapter_key=request.adapter_key,
            max_new_tokens=min(request.sampling.max_tokens, limit - len(tokens)),
            submitted_at=submitted_at,
            deadline=submitted_at + self._timeout,
        )

    def tool_plan(self, request: GenerateRequest) -> tuple[GenerateRequest, Callable[[], AnswerReader]]:
        """How a request with tools (or earlier calls) runs: in the model's own format where its chat
        template has one (tool_native.py), else in the generic one (tool_prompt.py); and the reader of
        its answer."""
        if not self._template.speaks_hermes:
            return as_plain_request(request), ToolAnswerReader
        # The template renders tools and earlier calls as markup, where control tokens are read as such:
        # none may come from the caller's text.
        shown = json.dumps(
            [t.model_dump() for t in request.tools]
            + [c.model_dump() for m in request.messages or () for c in m.tool_calls],
            ensure_ascii=False,
        )
        if self._vocab.tokenize(shown, add_special=False, parse_special=True) != self._vocab.tokenize(
            shown, add_special=False, parse_special=False
        ):
            raise InvalidRequest(
                "a tool's name, description or parameters, or an earlier call's arguments, contain the model's "
                "control tokens (such as <|im_start|>), which its chat template would read as markup: remove them"
            )
        planned = hermes_request(request)
        if planned.grammar is not None and self._constraints is not None:
            try:  # compiled once here (and cached for prepare())
                self._constraints.matcher(json_schema=None, grammar=planned.grammar)
            except InvalidRequest as exc:
                # A parameter schema llguidance cannot compile whole inside a grammar (a look-ahead regex):
                # the generic format enforces what it can of it and checks the rest after.
                logger.info("tools in the generic format: the model's own does not compile (%s)", exc)
                return as_plain_request(request), ToolAnswerReader
        return planned, HermesAnswerReader

    def tokens(self, request: GenerateRequest) -> list[int]:
        vocab = self._vocab
        if request.messages is not None:
            tokens: list[int] = []
            for text, is_markup in self._template.render(request.messages, request.tools):
                # Control tokens are parsed in the template's markup only, never in message contents.
                tokens += vocab.tokenize(text, add_special=False, parse_special=is_markup)
            if vocab.adds_bos and (not tokens or tokens[0] != vocab.bos_token):
                tokens.insert(0, vocab.bos_token)
        else:
            assert request.prompt is not None
            tokens = vocab.tokenize(request.prompt, add_special=True, parse_special=False)
        if not tokens:
            raise InvalidRequest("the input tokenizes to nothing: give a non-empty prompt or message")
        return tokens
