"""PEFT and mlx-lm folders through real clients: MCP over stdio and the OpenAI routes over HTTP, with
loading on first use, pins, versions and compare-and-swap, and the residency budget's metrics."""

from __future__ import annotations

import shutil
import sys
import urllib.request
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from tests.e2e.test_openai import http
from tests.http_server import http_server
from tests.peft_factory import FIXTURES

pytestmark = pytest.mark.anyio
PROMPT = {"prompt": "Write two sentences about the sea.", "max_tokens": 24, "temperature": 0}


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folders")
    for name in ("peft_lora", "peft_rslora", "mlx_lora", "reference"):
        shutil.copytree(FIXTURES / name, root / name)
    return root


def args(adapter_dir: Path, cache: Path) -> list[str]:
    return ["--adapter-dir", str(adapter_dir), "--adapter-cache-dir", str(cache), "--max-sequences", "4",
            "--max-loaded-adapters", "2"]  # fmt: skip


async def call(client: Client, tool: str, arguments: dict) -> dict:
    result = await client.call_tool(tool, arguments, read_timeout_seconds=60)
    assert not result.is_error, result.content
    return result.structured_content  # type: ignore[return-value]


async def test_folders_over_mcp_stdio(adapter_dir: Path, tmp_path: Path) -> None:
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_server", *args(adapter_dir, tmp_path)])
    async with Client(params) as client:
        loaded = await call(client, "load_adapter", {"name": "p", "path": "peft_lora", "pin": True})
        info = loaded["adapter"]
        assert (
            info["source_format"] == "peft"
            and info["pinned"]
            and set(info["source_sha256"])
            == {
                "adapter_config.json",
                "adapter_model.safetensors",
            }
        )
        from_folder = await call(client, "llm_inference", {**PROMPT, "adapter": "p"})
        # the folder's own name loads it on first use; the budget (2) evicts the idle, unpinned one
        await call(client, "load_adapter", {"name": "ref", "path": "reference/peft_lora.gguf"})
        from_mlx = await call(client, "llm_inference", {**PROMPT, "adapter": "mlx_lora"})
        listing = await call(client, "list_adapters", {})
        assert sorted(a["name"] for a in listing["adapters"]) == ["mlx_lora", "p"]
        assert {"peft_lora/", "mlx_lora/", "reference/peft_lora.gguf"} <= set(listing["available_files"])
        assert listing["max_loaded_adapters"] == 2 and listing["auto_load"]
        assert from_mlx["text"] == from_folder["text"]  # the mlx folder holds peft_lora's weights, transposed
        refused = await client.call_tool(
            "load_adapter", {"name": "p", "path": "peft_rslora", "expect_sha256": "0" * 64}
        )
        assert refused.is_error and "not at the expected" in refused.content[0].text  # type: ignore[union-attr]
        swapped = await call(
            client, "load_adapter", {"name": "p", "path": "peft_rslora", "expect_sha256": info["sha256"]}
        )
        assert swapped["adapter"]["version"] == 2 and swapped["replaced_sha256"] == info["sha256"]
        assert swapped["adapter"]["pinned"]  # a new version keeps the pin


def test_folders_over_the_openai_routes(adapter_dir: Path, tmp_path: Path) -> None:
    with http_server(*args(adapter_dir, tmp_path)) as base:
        status, loaded = http("POST", base + "/v1/adapters", {"name": "r", "path": "peft_rslora"})
        assert status == 201 and loaded["adapter"]["source_format"] == "peft"
        status, body = http(
            "POST", base + "/v1/adapters", {"name": "r", "path": "peft_lora", "expect_sha256": "f" * 64}
        )
        assert status == 409 and body["error"]["code"] == "adapter_version_mismatch"
        chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}
        status, answer = http("POST", base + "/v1/chat/completions", {**chat, "model": "mlx_lora"})  # first use
        assert status == 200 and answer["model"] == "mlx_lora"
        status, body = http("POST", base + "/v1/chat/completions", {**chat, "model": "nowhere"})
        assert status == 404 and body["error"]["code"] == "model_not_found"
        status, _ = http("POST", base + "/v1/chat/completions", {**chat, "model": "peft_lora"})  # evicts r
        assert status == 200
        metrics = urllib.request.urlopen(base + "/metrics").read().decode()
        assert "loramux_adapter_first_use_loads_total 2.0" in metrics
        assert "loramux_adapter_evictions_total 1.0" in metrics
