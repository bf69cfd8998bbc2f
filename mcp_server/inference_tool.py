"""The llm_inference tool: validate arguments, run the engine request, stream progress, format the result."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field, ValidationError

from engine import AdapterRef, ChatMessage, Engine, EngineError, GenerateRequest, SamplingParams
from mcp_server.schemas import InferenceResult

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.1  # progress notifications carry the new text at most this often

LLM_INFERENCE_DESCRIPTION = (
    "Generate text with the server's local language model. Give `prompt` for a single question or "
    "instruction, or `messages` for a conversation, optionally with `system` instructions. Returns the "
    "text with finish_reason, token usage and timings; progress notifications stream the text as it grows."
)


def register(mcp: MCPServer, engine: Engine) -> None:
    @mcp.tool(
        title="Generate text with the local model",
        description=LLM_INFERENCE_DESCRIPTION,
        annotations=ToolAnnotations(
            read_only_hint=True, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        ),
    )
    async def llm_inference(
        ctx: Context,
        prompt: Annotated[
            str | None,
            Field(
                min_length=1,
                max_length=200_000,
                description="A single user message. Give either prompt or messages, not both.",
            ),
        ] = None,
        messages: Annotated[
            list[ChatMessage] | None,
            Field(
                min_length=1,
                max_length=512,
                description="A whole conversation, oldest first; the model answers the last user turn.",
            ),
        ] = None,
        system: Annotated[
            str | None,
            Field(max_length=50_000, description="System instructions placed before the conversation."),
        ] = None,
        raw: Annotated[
            bool,
            Field(description="Send `prompt` verbatim as a text completion, without the chat template."),
        ] = False,
        max_tokens: Annotated[int, Field(ge=1, le=8192, description="Most tokens to generate.")] = 256,
        temperature: Annotated[
            float, Field(ge=0.0, le=2.0, description="Randomness; 0 gives deterministic (greedy) output.")
        ] = 0.7,
        top_p: Annotated[float, Field(gt=0.0, le=1.0, description="Nucleus sampling mass.")] = 0.95,
        top_k: Annotated[int, Field(ge=0, le=1000, description="Sample among the k likeliest tokens; 0 = off.")] = 40,
        min_p: Annotated[
            float, Field(ge=0.0, le=1.0, description="Drop tokens below this share of the likeliest one.")
        ] = 0.05,
        repeat_penalty: Annotated[
            float, Field(ge=0.5, le=2.0, description="Penalty on recently used tokens; 1.0 = off.")
        ] = 1.1,
        seed: Annotated[int | None, Field(ge=0, le=2**32 - 2, description="Fix for reproducible sampling.")] = None,
        stop: Annotated[
            list[Annotated[str, Field(min_length=1, max_length=200)]] | None,
            Field(max_length=16, description="Strings that end generation; they are not included in the text."),
        ] = None,
        ignore_eos: Annotated[
            bool, Field(description="Keep generating past the model's end token (benchmarks).")
        ] = False,
        adapters: Annotated[
            list[AdapterRef] | None,
            Field(
                max_length=8,
                description="LoRA adapters to apply, each with a scale; several mix. Omit for the base model. "
                "list_adapters shows what is loaded.",
            ),
        ] = None,
        adapter: Annotated[
            str | None,
            Field(max_length=64, description="Shorthand for one adapter at scale 1.0 (instead of `adapters`)."),
        ] = None,
    ) -> InferenceResult:
        request = _request(
            prompt=prompt,
            messages=messages,
            system=system,
            raw=raw,
            adapters=_adapter_refs(adapters, adapter),
            sampling=dict(
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                min_p=min_p,
                repeat_penalty=repeat_penalty,
                seed=seed,
                stop=tuple(stop or ()),
                ignore_eos=ignore_eos,
            ),
        )
        try:
            async with engine.generate(request) as stream:
                pending: list[str] = []
                last_report = float("-inf")  # the first text goes out at once
                async for delta in stream:
                    pending.append(delta.text)
                    now = time.monotonic()
                    if now - last_report >= PROGRESS_INTERVAL_S:
                        # Send only the new text: resending all of it grows quadratically.
                        await ctx.report_progress(delta.completion_tokens, max_tokens, "".join(pending))
                        pending.clear()
                        last_report = now
        except anyio.get_cancelled_exc_class():
            logger.info("request %d cancelled by the client", stream.request_id)
            raise  # leaving the stream's block has already aborted the engine request
        except EngineError as exc:
            raise ToolError(str(exc)) from exc
        result = stream.result
        assert result is not None
        return InferenceResult(
            text=result.text,
            finish_reason=result.finish_reason,
            model=Path(engine.config.model_path).name,
            adapters=list(request.adapters),
            usage=result.usage,
            timings=result.timings,
        )


def _adapter_refs(adapters: list[AdapterRef] | None, adapter: str | None) -> tuple[AdapterRef, ...]:
    if adapters is not None and adapter is not None:
        raise ToolError("give `adapter` (one name) or `adapters` (a list with scales), not both")
    try:
        if adapter is not None:
            return (AdapterRef(name=adapter),)
        return tuple(AdapterRef(name=a.name, scale=a.scale) for a in adapters or ())
    except ValidationError as exc:
        raise ToolError(f"invalid adapter: {exc.errors()[0]['msg']}") from exc


def _request(
    *,
    prompt: str | None,
    messages: list[ChatMessage] | None,
    system: str | None,
    raw: bool,
    adapters: tuple[AdapterRef, ...],
    sampling: dict,
) -> GenerateRequest:
    """Turn the tool's arguments into an engine request, with errors an agent can act on."""
    if (prompt is None) == (messages is None):
        raise ToolError("give exactly one of `prompt` (a single message) or `messages` (a conversation)")
    if raw and (messages is not None or system is not None):
        raise ToolError("`raw` applies to `prompt` alone: drop `messages` and `system`, or set raw to false")
    try:
        params = SamplingParams(**sampling)
        if raw:
            return GenerateRequest(prompt=prompt, sampling=params, adapters=adapters)
        chat = list(messages or ())
        if prompt is not None:
            chat = [ChatMessage(role="user", content=prompt)]
        if system is not None:
            if chat and chat[0].role == "system":
                raise ToolError("`system` was given and `messages` already starts with a system message: keep one")
            chat.insert(0, ChatMessage(role="system", content=system))
        return GenerateRequest(messages=tuple(chat), sampling=params, adapters=adapters)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in exc.errors())
        raise ToolError(f"invalid request: {problems}") from exc
