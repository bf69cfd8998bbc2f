"""HTTP security over a real `loramux --http`: Host/Origin on every route, the bearer token, the body limit."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.http_server import http_server_process

pytestmark = pytest.mark.anyio
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, subprocess.Popen]]:
    with http_server_process("--max-sequences", "2", "--auth-token", TOKEN) as running:
        yield running


def status_of(url: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None) -> tuple:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.mark.parametrize("path", ["/health", "/mcp", "/nowhere"])
def test_a_foreign_host_or_origin_is_refused_on_every_route(server: tuple, path: str) -> None:
    base, _ = server
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert status_of(base + path, headers={**auth, "Host": "evil.example"})[0] == 421
    assert status_of(base + path, headers={**auth, "Origin": "http://evil.example"})[0] == 403


def test_health_needs_no_token_and_hides_server_paths(server: tuple) -> None:
    base, _ = server
    code, _, body = status_of(base + "/health")
    health = json.loads(body)
    assert code == 200 and health["status"] == "ready"
    assert "/" not in health["model"]  # the file name, not the server's absolute path


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer"])
def test_a_missing_or_wrong_token_gets_401_with_a_bearer_challenge(server: tuple, authorization: str | None) -> None:
    base, _ = server
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if authorization:
        headers["Authorization"] = authorization
    code, response_headers, _ = status_of(base + "/mcp", "POST", headers, b"{}")
    assert code == 401
    challenge = response_headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    # the MCP spec's discovery: the challenge points at RFC 9728 metadata, readable without a token
    metadata_url = challenge.split('resource_metadata="')[1].rstrip('"')
    assert metadata_url == base + "/.well-known/oauth-protected-resource"
    code, _, body = status_of(metadata_url)
    assert code == 200 and json.loads(body)["resource"] == base + "/mcp"


async def test_the_right_token_opens_mcp(server: tuple) -> None:
    base, _ = server
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        async with streamable_http_client(base + "/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                result = await session.call_tool("llm_inference", {"prompt": "Hi", "max_tokens": 4})
                assert not result.is_error


def rss_kib(proc: subprocess.Popen) -> int:
    with open(f"/proc/{proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_50_mb_body_is_refused_without_the_server_reading_it(server: tuple) -> None:
    base, proc = server
    url = urlparse(base)
    before = rss_kib(proc)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        head = (
            f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{url.port}\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"x" * 65536)
        answer = sock.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert rss_kib(proc) - before < 10 * 1024  # it did not buffer 50 MB
