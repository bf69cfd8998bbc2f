"""MCP over streamable HTTP on 127.0.0.1, against a spawned `loramux --http`."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
from mcp import Client

from tests.http_server import http_server
from tests.mcp_checks import ALL_CHECKS

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with http_server("--max-sequences", "4") as url:
        yield url


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_http_server_serves_the_tool(base_url: str, mode: str) -> None:
    async with Client(base_url + "/mcp", mode=mode) as client:  # type: ignore[arg-type]
        for check in ALL_CHECKS:
            await check(client)


def test_health_reports_model_and_load(base_url: str) -> None:
    with urllib.request.urlopen(base_url + "/health", timeout=5) as r:
        health = json.load(r)
    assert health["status"] == "ready"
    assert health["model"].endswith(".gguf")
    assert (health["backend"], health["gpu_layers"]) == ("CPU", 0) or health["gpu_layers"] > 0
    assert health["mixed_adapter_sets"] is True  # setup.sh builds llama.cpp with loramux's patch
    assert {"running", "waiting", "steps", "tokens_generated", "sequences_per_step"} <= set(health)


def test_foreign_host_header_is_refused(base_url: str) -> None:
    """DNS-rebinding protection: a page on another origin cannot drive a localhost server."""
    req = urllib.request.Request(
        base_url + "/mcp",
        data=b"{}",
        method="POST",
        headers={"Host": "evil.example", "Content-Type": "application/json", "Accept": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 421
    info.value.close()
