"""Turn a request into what the core runs: prompt token ids, token budget, deadline.

Runs on the async side in a worker thread, never on the decode thread: rendering a chat template and
tokenizing a 200,000-character prompt take long enough to stall every running stream. llama.cpp's
vocabulary is read-only after load, so tokenizing beside a running decode is safe (llama-server does
the same from its HTTP threads). Everything that can fail per request happens here or at admission,
before the core registers a sequence.
"""

from __future__ import annotations

import secrets

from engine.errors import InvalidRequest, PromptTooLong
from engine.llama.chat_template import ChatTemplate
from engine.llama.cpp.constraints import ConstraintCompiler
from engine.llama.scheduling.prepared import PreparedRequest
from engine.llama.vocab import Vocab
from engine.request import GenerateRequest
from engine.schema_check import schema_validator


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

    def tokens(self, request: GenerateRequest) -> list[int]:
        vocab = self._vocab
        if request.messages is not None:
            tokens: list[int] = []
            for text, is_markup in self._template.render(request.messages):
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
