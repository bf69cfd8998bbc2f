"""POST /v1/completions and /v1/chat/completions: an OpenAI request → an engine request → a JSON answer
or a stream of chunks in OpenAI's format.

The engine request is the same one the MCP tool makes, so both kinds of callers share decode steps. A
client that goes away aborts its request: a stream's response watches for the disconnect, and a
non-streamed answer is generated while another task waits for it.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from engine import (
    AdapterListing,
    AdapterRef,
    ChatMessage,
    EngineError,
    GenerateRequest,
    GenerationResult,
    InferenceEngine,
    ModelInfo,
    RequestStatus,
    SamplingParams,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    UnknownAdapter,
)
from mcp_server.keep_alive import keep_alive
from mcp_server.metrics import Metered, Metrics, refusal_outcome
from mcp_server.openai_api.errors import OpenAIError, from_engine, invalid, model_not_found, read_json
from mcp_server.openai_api.schemas import ChatCompletionRequest, CompletionRequest, Message

logger = logging.getLogger(__name__)

# Omitted max_tokens on chat means "until the model stops or the context is full", as OpenAI's does.
UNTIL_CONTEXT_FULL = SamplingParams.model_fields["max_tokens"].metadata[-1].le


class Completions:
    def __init__(self, engine: InferenceEngine, metrics: Metrics) -> None:
        self._engine = engine
        self._metrics = metrics

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, CompletionRequest, _TextFormat())

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, ChatCompletionRequest, _ChatFormat())

    async def _serve(
        self, request: Request, model: type[CompletionRequest | ChatCompletionRequest], fmt: _Format
    ) -> Response:
        try:
            try:
                body = await read_json(request)
                try:
                    req = model.model_validate(body)
                except ValidationError as exc:
                    raise invalid(exc) from None
                engine_request = await self._engine_request(req)
            except OpenAIError as exc:  # refused before the engine: counted here (the engine's are below)
                self._metrics.refused("openai", request.url.path, refusal_outcome(exc.status))
                raise
            stream = self._metrics.generate(self._engine, engine_request, "openai", request.url.path)
            try:
                await stream.__aenter__()
            except UnknownAdapter as exc:
                if not req.adapters and req.model not in model_names((await self._model_info()).name):
                    await self._require_model(req.model)  # `model` named no loaded adapter: a 404 naming it
                raise from_engine(exc) from None
            except EngineError as exc:
                raise from_engine(exc) from None
        except OpenAIError as exc:
            return exc.response()
        if isinstance(fmt, _TextFormat) and isinstance(req, CompletionRequest) and req.echo:
            fmt.echo = req.text
        answer = _Answer(fmt, req.model, include_usage=bool(req.stream_options and req.stream_options.include_usage))
        if req.stream:
            return _EventStream(stream, answer.chunks(stream))
        return await _until_disconnect(request, stream, answer.whole)

    async def _engine_request(self, req: CompletionRequest | ChatCompletionRequest) -> GenerateRequest:
        adapters = await self._adapters_for(req)
        sampling_fields = req.sampling_fields()
        if isinstance(req, ChatCompletionRequest):
            sampling_fields["max_tokens"] = req.token_limit or UNTIL_CONTEXT_FULL
        elif req.max_tokens is not None:
            sampling_fields["max_tokens"] = req.max_tokens
        try:
            sampling = SamplingParams(**sampling_fields)
            output_options = {
                "json_schema": req.output_schema,
                "json_schema_strict": req.output_schema_strict,
                "grammar": req.grammar,
                **req.logprob_fields(),
            }
            if isinstance(req, CompletionRequest):
                request = GenerateRequest(prompt=req.text, sampling=sampling, adapters=adapters, **output_options)
            else:
                request = GenerateRequest(
                    messages=_chat(req.messages),
                    sampling=sampling,
                    adapters=adapters,
                    **output_options,
                    **req.tool_fields(),
                )
        except ValidationError as exc:
            raise invalid(exc) from None
        if (info := self._engine.model_info) is not None and (problem := info.capabilities.problem_with(request)):
            raise OpenAIError(400, problem)
        return request

    async def _adapters_for(self, req: CompletionRequest | ChatCompletionRequest) -> tuple[AdapterRef, ...]:
        """`model` names the base model or one loaded adapter (as vLLM serves LoRA); `adapters` mixes.

        An adapter's name goes to the engine as it is: the engine knows what is loaded, and its
        UnknownAdapter becomes the 404 `model_not_found` (see `_serve`)."""
        info = await self._model_info()
        if req.model in model_names(info.name):
            return tuple(req.adapters or ())
        if req.adapters:
            await self._require_model(req.model)  # an unknown model is a 404 first
            raise OpenAIError(
                400,
                f"model {req.model!r} is an adapter and `adapters` was given too: name the base model in `model` "
                "to mix adapters with `adapters`, or drop `adapters`",
                param="adapters",
            )
        try:
            return (AdapterRef(name=req.model),)
        except ValidationError:  # not even an adapter's name
            raise model_not_found(req.model, await self._known_models()) from None

    async def _require_model(self, model: str) -> None:
        """Raise the 404 for a `model` that names neither the base model nor a loaded adapter."""
        if model not in (known := await self._known_models()):
            raise model_not_found(model, known)

    async def _known_models(self) -> list[str]:
        listing = await self._listing()
        return [listing.base_model.name, *(a.name for a in listing.adapters)]

    async def _listing(self) -> AdapterListing:
        try:
            return await self._engine.list_adapters()
        except EngineError as exc:
            raise from_engine(exc) from None

    async def _model_info(self) -> ModelInfo:
        info = self._engine.model_info
        if info is None:  # still loading: list_adapters waits for the model (or says why there is none)
            try:
                info = (await self._engine.list_adapters()).base_model
            except EngineError as exc:
                raise from_engine(exc) from None
        return info


# Characters JSON may leave raw but that str.splitlines() (and SSE clients built on it, like httpx's
# iter_lines) takes for line ends: raw, they would cut an event's `data:` line in two.
_LINE_BREAKING = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def sse_json(value: Any) -> str:
    """JSON for one SSE `data:` line: UTF-8 text as is, but never a character that some client splits lines at."""
    return json.dumps(value, ensure_ascii=False).translate(_LINE_BREAKING)


def model_names(base: str) -> tuple[str, ...]:
    """What `model` may say for the base model: its id in /v1/models, or that without ".gguf"."""
    return (base, base.removesuffix(".gguf"))


def _chat(messages: list[Message]) -> tuple[ChatMessage, ...]:
    # OpenAI's "developer" role is the newer name of "system".
    return tuple(
        ChatMessage(
            role="system" if m.role == "developer" else m.role,
            content=m.text,
            tool_calls=m.calls,
            tool_call_id=m.tool_call_id,
        )
        for m in messages
    )


# -- answers --------------------------------------------------------------------------------------------


class _Format:
    """How one endpoint spells its objects."""

    object: str
    chunk_object: str
    id_prefix: str

    def choice(self, result: GenerationResult) -> dict[str, Any]: ...
    def delta(self, text: str, first: bool, finish_reason: str | None) -> dict[str, Any]: ...
    def logprobs(self, tokens: Sequence[TokenLogprob], text_start: int = 0) -> dict[str, Any]: ...


class _TextFormat(_Format):
    """/v1/completions. `echo`: the prompt comes first in the text (and its tokens' logprobs, when asked)."""

    object = chunk_object = "text_completion"
    id_prefix = "cmpl-"

    def __init__(self, echo: str | None = None) -> None:
        self.echo = echo

    def choice(self, result: GenerationResult) -> dict[str, Any]:
        prefix = self.echo or ""
        choice = self.delta(prefix + result.text, False, _finish_reason(result))
        if result.logprobs is not None:
            choice["logprobs"] = self.logprobs([*(result.prompt_logprobs or ()), *result.logprobs])
        return choice

    def delta(self, text: str, first: bool, finish_reason: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def logprobs(self, tokens: Sequence[TokenLogprob], text_start: int = 0) -> dict[str, Any]:
        """OpenAI's legacy form: parallel lists, and each token's offset in the choice's text."""
        offsets, at = [], text_start
        for t in tokens:
            offsets.append(at)
            at += len(t.token)
        return {
            "tokens": [t.token for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{a.token: a.logprob for a in t.top} if t.logprob is not None else None for t in tokens],
            "text_offset": offsets,
        }


class _ChatFormat(_Format):
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def choice(self, result: GenerationResult) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": result.text, "refusal": None}
        if result.tool_calls:
            message["content"] = result.text or None
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in result.tool_calls
            ]
        logprobs = self.logprobs(result.logprobs) if result.logprobs is not None else None
        return {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": _finish_reason(result)}

    def delta(self, text: str, first: bool, finish_reason: str | None) -> dict[str, Any]:
        delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {}
        if text and not first:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def logprobs(self, tokens: Sequence[TokenLogprob], text_start: int = 0) -> dict[str, Any]:
        return {"content": [_chat_logprob(t) | {"top_logprobs": [_chat_logprob(a) for a in t.top]} for t in tokens]}

    def tool_call_delta(self, calls: tuple[ToolCallDelta, ...]) -> dict[str, Any]:
        """OpenAI's pieces of calls: the first of each with its id, type and name, then arguments text."""
        pieces = []
        for c in calls:
            if c.id is not None:
                function = {"name": c.name, "arguments": c.arguments}
                pieces.append({"index": c.index, "id": c.id, "type": "function", "function": function})
            else:
                pieces.append({"index": c.index, "function": {"arguments": c.arguments}})
        return {"index": 0, "delta": {"tool_calls": pieces}, "logprobs": None, "finish_reason": None}


def _chat_logprob(token: TokenLogprob | TopLogprob) -> dict[str, Any]:
    return {"token": token.token, "logprob": token.logprob, "bytes": list(token.bytes)}


def _finish_reason(result: GenerationResult) -> str:
    # "cancelled" only reaches a caller that is gone; OpenAI has no such reason
    return result.finish_reason if result.finish_reason in ("length", "tool_calls") else "stop"


class _Answer:
    def __init__(self, fmt: _Format, model: str, *, include_usage: bool) -> None:
        self._fmt = fmt
        self._model = model
        self._include_usage = include_usage
        self._id = fmt.id_prefix + secrets.token_hex(12)
        self._created = int(time.time())

    def _envelope(self, object: str) -> dict[str, Any]:
        return {"id": self._id, "object": object, "created": self._created, "model": self._model}

    async def whole(self, stream: Metered) -> dict[str, Any]:
        async for _ in stream:
            pass
        result = stream.result
        assert result is not None
        return (
            self._envelope(self._fmt.object)
            | {
                "choices": [self._fmt.choice(result)],
                "usage": _usage(result),
            }
            | _provenance(result)
        )

    async def chunks(self, stream: Metered) -> AsyncIterator[str]:
        """The stream's events, serialized. A token's chunk is a template filled with its text: every
        chunk of a stream is the same object but for the text, and this runs once per token per client."""
        usage: dict[str, Any] = {"usage": None} if self._include_usage else {}
        fmt = self._fmt

        def chunk(choice: dict[str, Any], **more: Any) -> str:
            return sse_json(self._envelope(fmt.chunk_object) | {"choices": [choice]} | usage | more)

        prefix, _, suffix = chunk(fmt.delta(_HOLE, False, None)).partition(json.dumps(_HOLE))
        first = True
        if isinstance(fmt, _ChatFormat):  # the role comes first, before any token, as OpenAI sends it
            yield chunk(fmt.delta("", True, None))
            first = False
        echo = fmt.echo if isinstance(fmt, _TextFormat) else None
        offset = 0  # where the next token's text starts in the choice's text (completions' text_offset)
        async for delta in stream:
            if echo is not None:  # the prompt, with its tokens' logprobs when asked (they come with the first delta)
                yield chunk(fmt.delta(echo, False, None) | _scored(fmt, delta.prompt_logprobs, 0))
                offset, echo = len(echo), None
            if delta.tool_calls:
                assert isinstance(fmt, _ChatFormat)
                yield chunk(fmt.tool_call_delta(delta.tool_calls))
            if delta.logprobs:
                yield chunk(fmt.delta(delta.text, first, None) | _scored(fmt, delta.logprobs, offset))
                offset += sum(len(t.token) for t in delta.logprobs)
                first = False
                continue
            if not delta.text:
                continue
            if first:
                yield chunk(fmt.delta(delta.text, True, None))
                first = False
            else:
                yield prefix + sse_json(delta.text) + suffix
        if echo is not None:
            yield chunk(fmt.delta(echo, False, None))
        result = stream.result
        assert result is not None
        yield chunk(fmt.delta("", first, _finish_reason(result)), **_provenance(result))
        if self._include_usage:
            yield json.dumps(self._envelope(fmt.chunk_object) | {"choices": [], "usage": _usage(result)})


def _scored(fmt: _Format, tokens: Sequence[TokenLogprob], text_start: int) -> dict[str, Any]:
    return {"logprobs": fmt.logprobs(tokens, text_start)} if tokens else {}


_HOLE = "\x00hole\x00"  # a text no token produces, replaced by each token's text


def _provenance(result: GenerationResult) -> dict[str, Any]:
    """OpenAI's `system_fingerprint` (the model file, by hash) and loramux's receipt: the adapters by hash,
    the seed used and the sampling in force, enough to replay the request exactly."""
    receipt = result.receipt
    return {"system_fingerprint": "loramux-" + receipt.model_sha256[:16], "receipt": receipt.model_dump(mode="json")}


def _usage(result: GenerationResult) -> dict[str, int]:
    return result.usage.model_dump()


# -- delivery -------------------------------------------------------------------------------------------


async def _until_disconnect(
    request: Request, stream: Metered, answer: Callable[[Metered], Awaitable[dict[str, Any]]]
) -> Response:
    """Generate the whole answer, unless the client goes away first: then abort the request."""
    body: dict[str, Any] | None = None
    error: OpenAIError | None = None

    async def generate(scope: anyio.CancelScope) -> None:
        nonlocal body, error
        try:
            body = await answer(stream)
        except EngineError as exc:
            error = from_engine(exc)
        scope.cancel()

    async def watch(scope: anyio.CancelScope) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        logger.info("an OpenAI client disconnected before its answer: the request was aborted")
        scope.cancel()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(generate, tg.cancel_scope)
            tg.start_soon(watch, tg.cancel_scope)
    finally:
        await stream.__aexit__(None, None, None)
    if error is not None:
        return error.response()
    if body is None:  # the client is gone; nobody reads this
        return Response(status_code=499)
    return JSONResponse(body)


class _EventStream(StreamingResponse):
    """Server-sent events in OpenAI's format, ending in `data: [DONE]`. However the response ends
    (finished, client gone before or during it), leaving it aborts the engine request."""

    def __init__(self, stream: Metered, chunks: AsyncIterator[str]) -> None:
        self._generation = stream
        super().__init__(self._events(chunks), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _events(self, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {chunk}\n\n"
        except EngineError as exc:  # after the status line: the error goes in the stream, as OpenAI does
            yield f"data: {json.dumps(from_engine(exc).event())}\n\n"
        yield "data: [DONE]\n\n"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._generation.__aexit__(None, None, None)

    async def stream_response(self, send: Send) -> None:
        """Starlette's, plus an SSE comment (`: queued, 2 ahead`) at least every KEEP_ALIVE_S while the
        request has no text yet, so proxies and clients with idle timeouts keep the stream open.
        Clients ignore comment lines."""
        lock = anyio.Lock()  # one ASGI send at a time
        last_sent = time.monotonic()

        async def body(chunk: bytes) -> None:
            nonlocal last_sent
            async with lock:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                last_sent = time.monotonic()

        async def comment(status: RequestStatus) -> None:
            await body(f": {status.describe()}\n\n".encode())

        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_alive, self._generation, lambda: last_sent, comment)
            async for chunk in self.body_iterator:
                await body(chunk.encode() if isinstance(chunk, str) else bytes(chunk))
            tg.cancel_scope.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
