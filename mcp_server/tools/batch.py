"""The llm_batch tool: many prompts or conversations in one call, decoded concurrently, answered in order.

An agent that calls tools one after another (Claude Desktop does) gets nothing from batching with
llm_inference; handing over 50 items at once fills the decode steps. Items take llm_inference's
arguments; settings given beside `items` apply to every item, an item's own override them. An item that
fails (refused, cut JSON, an engine error) is an error in its place; the others are unaffected. Items
are fed to the engine a window at a time (twice its sequence slots), so a batch of hundreds
never fills the engine's queue; the engine keeps a batch to half the slots while others' requests wait
(engine/llama/scheduling/scheduler.py), so other callers are not starved. Progress says k of n items
done; cancelling the call cancels every item.
"""

from __future__ import annotations

import inspect
import secrets
import time
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, WithJsonSchema, create_model

from engine import EngineError, InferenceEngine, Usage
from engine.errors import bounded
from mcp_server.arguments import describe
from mcp_server.metrics import Metrics
from mcp_server.tools.inference import (
    TOOL_PARAMETERS,
    RefusedCall,
    add_generation_tool,
    engine_request,
    inference_result,
)
from mcp_server.tools.schemas import InferenceResult

TOOL_NAME = "llm_batch"
MAX_ITEMS = 500
# Items in the engine at once: the running ones and as many again queued behind them. Items of equal
# length (a batch's often are) finish in the same step and free every slot at once; with only a few
# queued, the rest of the slots idled until the event loop submitted more (the batch ran at 0.93x the
# speed of the same items sent as concurrent calls, which all wait in the engine). Queued batch items
# never delay other callers: the scheduler admits requests from outside batches first.
WINDOW_SLOTS = 2

LLM_BATCH_DESCRIPTION = (
    "Run many independent generations at once (up to 500): classify, summarise or extract over a list. "
    "`items` holds prompts (strings) or objects with llm_inference's arguments (`prompt` or `messages`, and "
    "any setting for that item alone); settings given beside `items` apply to every item. Items are decoded "
    "concurrently and answered in order; an item that fails carries its error without failing the rest. "
    "Progress notifications count the items done."
)

_ITEM_ONLY = ("prompt", "messages")
# an item: llm_inference's arguments, every one optional (absent = the batch's setting)
BatchItem = create_model(  # type: ignore[call-overload]
    "BatchItem",
    __config__=ConfigDict(extra="forbid"),
    **{name: (annotation | None, None) for name, (annotation, _) in TOOL_PARAMETERS.items()},
)


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its `$defs` written in place (they do not recurse): it goes inside the tool's."""
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if isinstance(ref := node.get("$ref"), str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return inline(schema)


# Items are taken as plain JSON and checked one by one (a wrong item is that item's error, not the
# call's); agents still see every item's full schema.
ITEMS_SCHEMA = _inlined(TypeAdapter(list[str | BatchItem]).json_schema())  # type: ignore[valid-type]


class BatchItemResult(BaseModel):
    index: int = Field(description="The item's place in `items`, from 0.")
    result: InferenceResult | None = Field(None, description="What llm_inference would have returned for it.")
    error: str | None = Field(None, description="Why this item failed (the others are unaffected).")


class BatchResult(BaseModel):
    results: list[BatchItemResult] = Field(description="One per item, in the items' order.")
    succeeded: int
    failed: int
    usage: Usage = Field(description="The items' tokens, summed.")
    total_ms: float = Field(description="The whole batch, from the call to its last item.")


def register(mcp: MCPServer, engine: InferenceEngine, metrics: Metrics) -> None:
    async def llm_batch(ctx: Context, items: list[Any], **shared: Any) -> BatchResult:
        started = time.monotonic()
        batch_id = secrets.token_hex(8)
        outcomes: list[BatchItemResult | None] = [None] * len(items)
        info = engine.model_info
        window = anyio.Semaphore((info.max_running_requests if info else 8) * WINDOW_SLOTS)
        done = 0

        async def run(index: int, item: Any) -> None:
            nonlocal done
            async with window:
                outcomes[index] = await _one(engine, metrics, index, item, shared, batch_id)
            done += 1
            await ctx.report_progress(done, len(items), f"{done} of {len(items)} items done")

        async with anyio.create_task_group() as tg:  # cancelling the call cancels every item
            for index, item in enumerate(items):
                tg.start_soon(run, index, item)
        results = [r for r in outcomes if r is not None]
        ok = [r.result for r in results if r.result is not None]
        return BatchResult(
            results=results,
            succeeded=len(ok),
            failed=len(results) - len(ok),
            usage=Usage(
                prompt_tokens=sum(r.usage.prompt_tokens for r in ok),
                completion_tokens=sum(r.usage.completion_tokens for r in ok),
                total_tokens=sum(r.usage.total_tokens for r in ok),
            ),
            total_ms=(time.monotonic() - started) * 1000,
        )

    items_annotation = Annotated[
        list[Any],
        Field(
            min_length=1,
            max_length=MAX_ITEMS,
            description="The items: a prompt (string), or an object with `prompt` or `messages` and any of "
            "llm_inference's settings for that item alone.",
        ),
        WithJsonSchema(ITEMS_SCHEMA | {"minItems": 1, "maxItems": MAX_ITEMS}),
    ]
    shared_settings = {name: spec for name, spec in TOOL_PARAMETERS.items() if name not in _ITEM_ONLY}
    add_generation_tool(
        mcp,
        llm_batch,
        {"items": (items_annotation, inspect.Parameter.empty)} | shared_settings,
        BatchResult,
        "Generate for many inputs at once",
        LLM_BATCH_DESCRIPTION,
    )


def _arguments(item: Any, shared: dict[str, Any]) -> dict[str, Any]:
    """llm_inference's arguments for one item: the batch's settings, then the item's own; RefusedCall
    naming what is wrong with the item."""
    try:
        own = (
            {"prompt": item} if isinstance(item, str) else BatchItem.model_validate(item).model_dump(exclude_none=True)
        )
    except ValidationError as exc:
        raise RefusedCall(describe(exc)) from exc
    arguments = {name: shared.get(name, default) for name, (_, default) in TOOL_PARAMETERS.items()}
    return arguments | {name: None for name in _ITEM_ONLY} | own


async def _one(
    engine: InferenceEngine, metrics: Metrics, index: int, item: Any, shared: dict[str, Any], batch_id: str
) -> BatchItemResult:
    try:
        request = engine_request(engine, _arguments(item, shared)).model_copy(update={"batch_id": batch_id})
    except RefusedCall as exc:
        metrics.refused("mcp", TOOL_NAME, "invalid")
        return BatchItemResult(index=index, error=bounded(str(exc)))
    stream = metrics.generate(engine, request, "mcp", TOOL_NAME)
    try:
        async with stream:
            async for _ in stream:
                pass
        assert stream.result is not None
        return BatchItemResult(index=index, result=inference_result(engine, request, stream.result))
    except (EngineError, ToolError) as exc:
        return BatchItemResult(index=index, error=bounded(str(exc)))  # whatever input a message quotes
