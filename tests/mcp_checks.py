"""Checks run against a connected MCP client, whatever the transport and protocol mode."""

from __future__ import annotations

import json
import time
from importlib.metadata import version

import anyio
import pytest
from mcp import Client, MCPError

from engine import SamplingParams


async def engine_stats(client: Client) -> dict:
    result = await client.read_resource("loramux://stats")
    return json.loads(result.contents[0].text)  # type: ignore[union-attr]


async def check_server_info_and_only_real_capabilities(client: Client) -> None:
    assert client.server_info is not None and client.server_info.version == version("loramux")
    capabilities = client.server_capabilities
    assert capabilities.tools is not None and capabilities.resources is not None
    assert capabilities.prompts is None  # none are offered, so none are advertised
    with pytest.raises(MCPError):
        await client.list_prompts()


async def check_tool_is_listed_with_its_schema(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    tool = tools["llm_inference"]
    props = tool.input_schema["properties"]
    assert {"prompt", "messages", "system", "max_tokens", "temperature", "top_p", "top_k", "min_p", "stop"} <= set(
        props
    )
    assert "ctx" not in props
    assert props["max_tokens"]["maximum"] == SamplingParams.model_fields["max_tokens"].metadata[1].le
    assert props["max_tokens"]["description"] == SamplingParams.model_fields["max_tokens"].description
    assert tool.output_schema is not None
    assert {"text", "finish_reason", "usage", "timings"} <= set(tool.output_schema["properties"])
    assert tool.annotations is not None and tool.annotations.read_only_hint is True


async def check_call_returns_text_and_structured_content_with_progress(client: Client) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    result = await client.call_tool(
        "llm_inference",
        {"prompt": "Tell me about the ocean.", "max_tokens": 48, "temperature": 0, "ignore_eos": True},
        read_timeout_seconds=60.0,
        progress_callback=on_progress,
    )
    assert not result.is_error
    data = result.structured_content
    assert data is not None and data["text"] and data["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 48
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + 48
    assert json.loads(result.content[0].text)["text"] == data["text"]  # type: ignore[union-attr]
    assert len(progress) >= 2
    values = [p[0] for p in progress]
    assert values == sorted(set(values))  # strictly increasing
    # a client that assembles the answer from progress messages gets all of it, to the last token
    assert "".join(p[2] or "" for p in progress) == data["text"]
    assert values[-1] == data["usage"]["completion_tokens"]


async def check_cancelled_call_frees_its_sequence(client: Client) -> None:
    before = await engine_stats(client)
    with pytest.raises(MCPError):
        await client.call_tool(
            "llm_inference",
            {"prompt": "Write a very long essay.", "max_tokens": 4000, "ignore_eos": True},
            read_timeout_seconds=1.5,
        )
    deadline = time.monotonic() + 10
    stats = await engine_stats(client)
    while stats["running"] or stats["waiting"]:
        assert time.monotonic() < deadline, f"the cancelled request still runs: {stats}"
        await anyio.sleep(0.1)
        stats = await engine_stats(client)
    # the request was aborted, not run until its context filled up
    assert stats["requests_cancelled"] == before["requests_cancelled"] + 1
    assert stats["requests_finished"] == before["requests_finished"]
    assert stats["backend"]["kv_cells_used"] == 0


async def check_invalid_arguments_give_clear_errors(client: Client) -> None:
    cases = [
        ({"prompt": "hi", "messages": [{"role": "user", "content": "x"}]}, "exactly one of"),
        ({}, "exactly one of"),
        ({"prompt": "hi", "temperature": 9}, "temperature"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ({"prompt": "hi", "stop": [""]}, "stop"),
        ({"messages": [{"role": "user", "content": "x"}], "raw": True}, "raw"),
        # strict: no silent coercion, no silently ignored typos
        ({"prompt": "hi", "max_tokens": True}, "`max_tokens` must be a valid integer (given True)"),
        ({"prompt": "hi", "raw": "true"}, "`raw` must be a valid boolean (given 'true')"),
        ({"PROMPT": "hi"}, "unknown argument `PROMPT`; valid arguments: prompt, messages"),
        ({"prompt ": "hi"}, "unknown argument `prompt `"),
        ({"prompt": "hi", "adapters": [{"name": "a", "scale": "1"}]}, "`adapters.0.scale` must be a valid number"),
        ({"prompt": "x" * 300_000}, "`prompt` must have at most 200000 characters (given 'xxx"),
    ]
    for args, expected in cases:
        result = await client.call_tool("llm_inference", args)
        assert result.is_error, args
        text = result.content[0].text  # type: ignore[union-attr]
        assert expected in text, (args, text)
        assert len(text) < 500 and "pydantic" not in text and "Traceback" not in text, text
    ok = await client.call_tool("llm_inference", {"prompt": "hi", "max_tokens": 4})
    assert not ok.is_error  # and the server keeps serving


async def check_concurrent_calls_are_batched(client: Client) -> None:
    before = (await engine_stats(client))["sequences_per_step"]
    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(
                client.call_tool, "llm_inference", {"prompt": f"Say {i}.", "max_tokens": 16, "ignore_eos": True}
            )
    after = (await engine_stats(client))["sequences_per_step"]
    multi = sum(after.get(k, 0) - before.get(k, 0) for k in after if int(k) > 1)
    assert multi > 0


async def check_logprobs_come_with_the_result(client: Client) -> None:
    result = await client.call_tool(
        "llm_inference",
        {"prompt": "Hi", "raw": True, "max_tokens": 4, "temperature": 0, "logprobs": 2, "prompt_logprobs": True},
        read_timeout_seconds=60.0,
    )
    assert not result.is_error and result.structured_content is not None
    data = result.structured_content
    assert "".join(t["token"] for t in data["logprobs"]) == data["text"]
    assert all(len(t["top"]) == 2 and t["top"][0]["logprob"] == t["logprob"] for t in data["logprobs"])
    assert (
        data["prompt_logprobs"][0]["logprob"] is None and len(data["prompt_logprobs"]) == data["usage"]["prompt_tokens"]
    )


ALL_CHECKS = [
    check_server_info_and_only_real_capabilities,
    check_tool_is_listed_with_its_schema,
    check_call_returns_text_and_structured_content_with_progress,
    check_invalid_arguments_give_clear_errors,
    check_concurrent_calls_are_batched,
    check_cancelled_call_frees_its_sequence,
    check_logprobs_come_with_the_result,
]
