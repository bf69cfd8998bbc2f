"""The llm_inference tool: arguments → engine request → streamed progress → result.

The tool's parameters are built from the engine's request models (engine/request.py): bounds and
descriptions have one source, so the tool and the engine cannot disagree.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from typing import Annotated, Any, get_args

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field, Strict, ValidationError
from pydantic.fields import FieldInfo

from engine import (
    AdapterRef,
    ChatMessage,
    EngineError,
    GenerateRequest,
    GenerationResult,
    InferenceEngine,
    RequestStatus,
    SamplingParams,
)
from mcp_server.arguments import describe
from mcp_server.keep_alive import keep_alive
from mcp_server.metrics import Metered, Metrics
from mcp_server.tools.schemas import InferenceResult

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.1  # progress notifications carry the new text at most this often

LLM_INFERENCE_DESCRIPTION = (
    "Generate text with the server's local language model. Give `prompt` for a single question or "
    "instruction, or `messages` for a conversation, optionally with `system` instructions. Returns the "
    "text with finish_reason, token usage and timings; progress notifications stream the text as it grows."
)

_request = GenerateRequest.model_fields
_message = ChatMessage.model_fields


def _from_field(field: FieldInfo, *, description: str | None = None, optional: bool = False) -> tuple[Any, Any]:
    """(annotation, default) for a tool parameter with the bounds of an engine model's field; `optional`
    makes it omittable (default None) although the engine's field is required or defaults to empty.

    Scalars are strict: `max_tokens: true` or `raw: "true"` is an error, not 1 token or True."""
    strict = [Strict()] if _is_scalar(field.annotation) else []
    extras = (*strict, *field.metadata)
    annotation = Annotated[(field.annotation, *extras)] if extras else field.annotation
    if optional:
        return Annotated[annotation | None, Field(description=description or field.description)], None
    return Annotated[annotation, Field(description=description or field.description)], field.default


def _is_scalar(annotation: Any) -> bool:
    return all(arg in (int, float, bool, str, type(None)) for arg in (get_args(annotation) or (annotation,)))


# name → (annotation, default), in the order agents see them
TOOL_PARAMETERS: dict[str, tuple[Any, Any]] = {
    "prompt": _from_field(
        _request["prompt"], description="A single user message. Give either prompt or messages, not both."
    ),
    "messages": _from_field(_request["messages"]),
    "system": _from_field(
        _message["content"], description="System instructions placed before the conversation.", optional=True
    ),
    "raw": (
        Annotated[
            bool, Strict(), Field(description="Send `prompt` verbatim as a text completion, without the chat template.")
        ],
        False,
    ),
    **{name: _from_field(field) for name, field in SamplingParams.model_fields.items()},
    "json_schema": _from_field(_request["json_schema"]),
    "json_schema_strict": _from_field(_request["json_schema_strict"]),
    "grammar": _from_field(_request["grammar"]),
    "logprobs": _from_field(_request["logprobs"]),
    "prompt_logprobs": _from_field(_request["prompt_logprobs"]),
    "adapters": _from_field(_request["adapters"], optional=True),
    "adapter": _from_field(
        AdapterRef.model_fields["name"],
        description="Shorthand for one adapter at scale 1.0 (instead of `adapters`).",
        optional=True,
    ),
}


TOOL_NAME = "llm_inference"


class RefusedCall(ToolError):
    """A call refused before it reached the engine (the server counts it in loramux_requests)."""


def engine_request(engine: InferenceEngine, arguments: dict[str, Any]) -> GenerateRequest:
    """The engine request for llm_inference's arguments; RefusedCall saying what is wrong."""
    try:
        request = _request_from(arguments)
    except ToolError as exc:
        raise RefusedCall(str(exc)) from exc.__cause__
    if (info := engine.model_info) is not None and (problem := info.capabilities.problem_with(request)):
        raise RefusedCall(problem)
    return request


def inference_result(engine: InferenceEngine, request: GenerateRequest, result: GenerationResult) -> InferenceResult:
    info = engine.model_info
    return InferenceResult(
        **result.model_dump(),
        model=info.name if info else "",
        adapters=list(request.adapters),
        json=parsed_json(request, result),
    )


def register(mcp: MCPServer, engine: InferenceEngine, metrics: Metrics) -> None:
    async def llm_inference(ctx: Context, **arguments: Any) -> InferenceResult:
        request = engine_request(engine, arguments)
        progress = _Progress(ctx, request.sampling.max_tokens)
        stream = metrics.generate(engine, request, "mcp", TOOL_NAME)
        error: EngineError | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(progress.keep_alive, stream)
                try:
                    async with stream:
                        async for delta in stream:
                            await progress.add(delta.text, delta.completion_tokens)
                except EngineError as exc:
                    error = exc
                finally:
                    tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            logger.debug("a request was cancelled by the client")
            raise  # leaving the stream's block has already aborted the engine request
        if error is not None:
            raise ToolError(str(error)) from error
        result = stream.result
        assert result is not None
        await progress.finish(result.usage.completion_tokens)
        return inference_result(engine, request, result)

    add_generation_tool(
        mcp,
        llm_inference,
        TOOL_PARAMETERS,
        InferenceResult,
        "Generate text with the local model",
        LLM_INFERENCE_DESCRIPTION,
    )


def add_generation_tool(
    mcp: MCPServer,
    function: Any,
    parameters: dict[str, tuple[Any, Any]],
    result: type,
    title: str,
    description: str,
) -> None:
    """Register `function(ctx, **arguments)` as a read-only tool whose parameters (name → (annotation,
    default)) and result type make its published input and output schemas."""
    signature = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)]
    signature += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
        for name, (annotation, default) in parameters.items()
    ]
    function.__signature__ = inspect.Signature(signature, return_annotation=result)
    function.__annotations__ = {p.name: p.annotation for p in signature} | {"return": result}
    mcp.tool(
        title=title,
        description=description,
        annotations=ToolAnnotations(
            read_only_hint=True, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        ),
    )(function)


class _Progress:
    """Progress notifications carrying the new text, at most every PROGRESS_INTERVAL_S; the last one
    carries whatever text is left and equals the final completion token count.

    Before any text (queued behind other calls, reading a long prompt), a notification at least every
    KEEP_ALIVE_S says what is happening ("queued, 3 ahead"), so clients that reset their timeout on
    progress never give up on a call that is merely waiting. Those have progress below 1 (½, ⅔, ¾, …:
    progress must grow), text ones the completion token count (≥ 1)."""

    def __init__(self, ctx: Context, total: int) -> None:
        self._ctx = ctx
        self._total = total
        self._pending: list[str] = []
        self._last_report = time.monotonic()
        self._text_sent = False
        self._reported = 0
        self._beats = 0
        self._lock = anyio.Lock()  # keep-alive and text notifications must go out in progress order

    async def add(self, text: str, completion_tokens: int) -> None:
        self._pending.append(text)
        if not self._text_sent or time.monotonic() - self._last_report >= PROGRESS_INTERVAL_S:
            await self._send(completion_tokens)  # the first text goes out at once

    async def finish(self, completion_tokens: int) -> None:
        if completion_tokens > self._reported or self._pending:
            await self._send(completion_tokens)

    async def _send(self, completion_tokens: int) -> None:
        async with self._lock:
            # Send only the new text: resending all of it grows quadratically.
            await self._ctx.report_progress(completion_tokens, self._total, "".join(self._pending))
            self._pending.clear()
            self._reported = completion_tokens
            self._text_sent = True
            self._last_report = time.monotonic()

    async def keep_alive(self, stream: Metered) -> None:
        await keep_alive(stream, lambda: self._last_report, self._beat)

    async def _beat(self, status: RequestStatus) -> None:
        async with self._lock:
            if self._text_sent:  # the text overtook this status
                return
            self._beats += 1
            await self._ctx.report_progress(self._beats / (self._beats + 1), self._total, status.describe())
            self._last_report = time.monotonic()


def parsed_json(request: GenerateRequest, result: GenerationResult) -> Any:
    """The value a json_schema request's text holds; a clear error where the text was cut short."""
    if request.json_schema is None:
        return None
    if result.finish_reason == "length":
        raise ToolError(
            f"the JSON was cut off after {result.usage.completion_tokens} tokens (max_tokens or the context) "
            "before it was complete: raise max_tokens, or ask for less"
        )
    try:
        return json.loads(result.text)
    except ValueError:
        raise ToolError("the output stopped (at a stop string?) before the JSON was complete: drop `stop`") from None


def _request_from(arguments: dict[str, Any]) -> GenerateRequest:
    """Turn the tool's arguments into an engine request, with errors an agent can act on."""
    prompt, messages, system = arguments["prompt"], arguments["messages"], arguments["system"]
    if (prompt is None) == (messages is None):
        raise ToolError("give exactly one of `prompt` (a single message) or `messages` (a conversation)")
    if arguments["raw"] and (messages is not None or system is not None):
        raise ToolError("`raw` applies to `prompt` alone: drop `messages` and `system`, or set raw to false")
    if arguments["adapter"] is not None and arguments["adapters"] is not None:
        raise ToolError("give `adapter` (one name) or `adapters` (a list with scales), not both")
    adapters = arguments["adapters"] or ()
    if arguments["adapter"] is not None:
        adapters = (AdapterRef(name=arguments["adapter"]),)
    output_options = {
        "json_schema": arguments["json_schema"],
        "json_schema_strict": arguments["json_schema_strict"],
        "grammar": arguments["grammar"],
        "logprobs": arguments["logprobs"],
        "prompt_logprobs": arguments["prompt_logprobs"],
    }
    try:
        sampling = SamplingParams(**{name: arguments[name] for name in SamplingParams.model_fields})
        if arguments["raw"]:
            return GenerateRequest(prompt=prompt, sampling=sampling, adapters=adapters, **output_options)
        chat = [ChatMessage(role="user", content=prompt)] if prompt is not None else list(messages)
        if system is not None:
            if chat[0].role == "system":
                raise ToolError("`system` was given and `messages` already starts with a system message: keep one")
            chat.insert(0, ChatMessage(role="system", content=system))
        return GenerateRequest(messages=tuple(chat), sampling=sampling, adapters=adapters, **output_options)
    except ValidationError as exc:
        raise ToolError(describe(exc)) from exc
