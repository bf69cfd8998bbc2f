"""The adapter tools over real MCP transports (stdio subprocess and HTTP)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from tests.adapter_factory import write_lora
from tests.http_server import http_server

pytestmark = pytest.mark.anyio
PROMPT = {"prompt": "Tell me a short story about a dragon.", "max_tokens": 20, "temperature": 0}


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("mcp_adapters")
    for i in range(2):
        write_lora(d / f"lora{i}.gguf", seed=i, strength=0.05)
    (d / "garbage.gguf").write_bytes(b"not a gguf at all")
    return d


def server_args(adapter_dir: Path) -> list[str]:
    return ["--adapter-dir", str(adapter_dir), "--adapter", f"pre={adapter_dir / 'lora0.gguf'}", "--max-sequences", "4"]


@pytest.fixture(scope="module")
def http_url(adapter_dir: Path) -> Iterator[str]:
    with http_server(*server_args(adapter_dir)) as base:
        yield base + "/mcp"


async def call(client: Client, tool: str, args: dict) -> dict:
    result = await client.call_tool(tool, args, read_timeout_seconds=60)
    assert not result.is_error, result.content
    return result.structured_content  # type: ignore[return-value]


async def error_of(client: Client, tool: str, args: dict) -> str:
    result = await client.call_tool(tool, args, read_timeout_seconds=60)
    assert result.is_error, (tool, args)
    # and the server keeps serving
    assert (await call(client, "llm_inference", {"prompt": "hi", "max_tokens": 2}))["usage"]["completion_tokens"]
    return result.content[0].text  # type: ignore[union-attr]


async def check_adapter_tools(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert {"llm_inference", "list_adapters", "load_adapter", "unload_adapter"} <= set(tools)
    assert tools["list_adapters"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert tools["unload_adapter"].annotations.destructive_hint is True  # type: ignore[union-attr]
    assert "adapters" in tools["llm_inference"].input_schema["properties"]

    listing = await call(client, "list_adapters", {})
    assert listing["base_model"]["architecture"] == "llama"
    assert [a["name"] for a in listing["adapters"]] == ["pre"]
    assert {"lora0.gguf", "lora1.gguf"} <= set(listing["available_files"])

    loaded = await call(client, "load_adapter", {"name": "one", "path": "lora1.gguf"})
    assert loaded["newly_loaded"] and loaded["adapter"]["rank"] == 8
    again = await call(client, "load_adapter", {"name": "one", "path": "lora1.gguf"})
    assert not again["newly_loaded"]

    base = await call(client, "llm_inference", PROMPT)
    with_one = await call(client, "llm_inference", {**PROMPT, "adapter": "one"})
    mixed = await call(
        client, "llm_inference", {**PROMPT, "adapters": [{"name": "one"}, {"name": "pre", "scale": 0.5}]}
    )
    assert with_one["adapters"] == [{"name": "one", "scale": 1.0}]
    assert len({base["text"], with_one["text"], mixed["text"]}) == 3

    assert "no adapter named 'nope'" in await error_of(client, "llm_inference", {**PROMPT, "adapter": "nope"})
    assert "not both" in await error_of(client, "llm_inference", {**PROMPT, "adapter": "one", "adapters": []})
    assert "not a GGUF file" in await error_of(client, "load_adapter", {"name": "g", "path": "garbage.gguf"})
    assert "not inside an adapter directory" in await error_of(
        client, "load_adapter", {"name": "p", "path": "/etc/passwd"}
    )
    assert "'..' is not allowed" in await error_of(client, "load_adapter", {"name": "p", "path": "../x.gguf"})
    long_name = await error_of(client, "load_adapter", {"name": "n" * 100_000, "path": "lora1.gguf"})
    assert "`name` must have at most 64 characters" in long_name and len(long_name) < 500
    unknown = await error_of(client, "llm_inference", {**PROMPT, "adapter": "a" * 64})
    assert "no adapter named" in unknown and len(unknown) < 500

    # unloading while a request uses the adapter is refused; afterwards it succeeds
    async with anyio.create_task_group() as tg:
        started = anyio.Event()

        async def on_progress(*_: object) -> None:
            started.set()

        async def long_call() -> None:
            await client.call_tool(
                "llm_inference",
                {**PROMPT, "adapter": "one", "max_tokens": 200, "ignore_eos": True},
                read_timeout_seconds=120,
                progress_callback=on_progress,
            )

        tg.start_soon(long_call)
        await started.wait()
        refused = await client.call_tool("unload_adapter", {"name": "one"})
        assert refused.is_error and "used by 1" in refused.content[0].text  # type: ignore[union-attr]
    done = await call(client, "unload_adapter", {"name": "one"})
    assert done["unloaded"] and done["requests_served"] >= 3
    assert [a["name"] for a in (await call(client, "list_adapters", {}))["adapters"]] == ["pre"]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_adapter_tools_over_stdio(adapter_dir: Path, mode: str) -> None:
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_server", *server_args(adapter_dir)])
    async with Client(params, mode=mode) as client:  # type: ignore[arg-type]
        await check_adapter_tools(client)


async def test_adapter_tools_over_http(http_url: str) -> None:
    async with Client(http_url) as client:
        await check_adapter_tools(client)
