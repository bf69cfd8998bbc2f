"""`loramux --http --replicas 2` on a local Ray: the same MCP and OpenAI front end behind Ray Serve's proxy,
two llama replicas routed by adapter set. Compared with one process (`loramux --http`) side by side."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families

from tests.http_server import http_server, http_server_process
from tests.mcp_checks import ALL_CHECKS

pytestmark = pytest.mark.anyio

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def ray_server() -> Iterator[tuple[str, subprocess.Popen]]:
    with http_server_process("--replicas", "2", "--max-sequences", "4") as server:
        yield server


@pytest.fixture(scope="module")
def ray_url(ray_server: tuple[str, subprocess.Popen]) -> str:
    return ray_server[0]


@pytest.fixture(scope="module")
def one_url() -> Iterator[str]:
    with http_server("--max-sequences", "4") as url:
        yield url


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def _metrics(base: str) -> dict[str, list]:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_every_mcp_check_passes_through_the_replicas(ray_url: str, mode: str) -> None:
    """Progress before the result, a dropped call freeing its replica's sequence, batching, errors: as in
    one process, for 2026-era clients and 2025-era ones (served statelessly)."""
    async with Client(ray_url + "/mcp", mode=mode) as client:  # type: ignore[arg-type]
        for check in ALL_CHECKS:
            await check(client)


async def _mcp_text(base: str, args: dict) -> str:
    async with Client(base + "/mcp") as client:
        result = await client.call_tool("llm_inference", args, read_timeout_seconds=60.0)
        assert not result.is_error, result.content
        assert result.structured_content is not None
        return result.structured_content["text"]


def _openai_stream_text(base: str, **kwargs: object) -> str:
    client = openai.OpenAI(base_url=base + "/v1", api_key="none")
    stream = client.chat.completions.create(model=MODEL, stream=True, **kwargs)  # type: ignore[call-overload]
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


async def test_seeded_text_is_the_same_as_in_one_process(ray_url: str, one_url: str) -> None:
    args = {"prompt": "Write a line about rivers.", "max_tokens": 24, "temperature": 0.9, "seed": 11}
    mcp_texts = [await _mcp_text(url, args) for url in (ray_url, one_url)]
    assert mcp_texts[0] == mcp_texts[1] and mcp_texts[0]
    chat = {"messages": [{"role": "user", "content": "Name three birds."}], "max_tokens": 24, "temperature": 0.9}
    streamed = [_openai_stream_text(url, seed=5, **chat) for url in (ray_url, one_url)]
    assert streamed[0] == streamed[1] and streamed[0]


async def test_adapters_are_one_catalogue_across_replicas(ray_url: str, one_url: str) -> None:
    texts = []
    for url in (ray_url, one_url):
        async with Client(url + "/mcp") as client:
            loaded = await client.call_tool("load_adapter", {"name": "caps", "path": "caps.gguf"})
            assert not loaded.is_error, loaded.content
            args = {"prompt": "Say hello.", "max_tokens": 12, "temperature": 0, "adapters": [{"name": "caps"}]}
            calls = [await client.call_tool("llm_inference", args) for _ in range(4)]
            assert all(not c.is_error for c in calls)
            texts.append({c.structured_content["text"] for c in calls})  # type: ignore[index]
            listing = (await client.call_tool("list_adapters", {})).structured_content
            assert listing is not None
            (caps,) = [a for a in listing["adapters"] if a["name"] == "caps"]
            assert caps["requests_served"] == 4
            if url == ray_url:  # which replicas hold it: the one it was loaded on and any that served it
                assert 1 <= len(caps["replicas"]) <= 2
            unloaded = await client.call_tool("unload_adapter", {"name": "caps"})
            assert not unloaded.is_error and unloaded.structured_content["requests_served"] == 4  # type: ignore[index]
            listing = (await client.call_tool("list_adapters", {})).structured_content
            assert listing is not None and listing["adapters"] == []
    assert texts[0] == texts[1] and len(texts[0]) == 1  # the same bytes on every replica, greedy: one text


def test_health_and_metrics_cover_every_replica(ray_url: str) -> None:
    health = _get(ray_url + "/health")
    assert health["status"] == "ready" and health["replicas"] == {"ready": 2, "wanted": 2}
    assert "2 Ray Serve replicas" in health["backend"]
    metrics = _metrics(ray_url)
    replicas = {s.labels["replica"] for s in metrics["loramux_replica_requests_running"]}
    assert len(replicas) == 2
    assert {(s.labels["state"], s.value) for s in metrics["loramux_replicas"]} == {("ready", 2), ("wanted", 2)}
    (info,) = metrics["vllm:lora_requests_info"]
    assert {"running_lora_adapters", "waiting_lora_adapters", "max_lora"} <= set(info.labels)
    assert "vllm:num_requests_waiting" in metrics and "vllm:kv_cache_usage_perc" in metrics


def _engine_replica_pids(server: subprocess.Popen) -> list[int]:
    """The engine replicas of this server's Ray (its descendants: ray.init started Ray under it)."""
    parents: dict[int, int] = {}
    titles: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                titles[int(proc.name)] = (proc / "cmdline").read_bytes().decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue

    def descends(pid: int) -> bool:
        while pid > 1:
            if pid == server.pid:
                return True
            pid = parents.get(pid, 0)
        return False

    return sorted(p for p, title in titles.items() if "ServeReplica:loramux:engine" in title and descends(p))


def test_a_killed_replica_fails_only_its_own_requests(ray_server: tuple[str, subprocess.Popen]) -> None:
    """Kill -9 one replica while both generate: its streams end with a clear error, the other's finish,
    nothing hangs; new requests succeed at once (on the other replica), and Ray restarts the dead one."""
    ray_url, server = ray_server
    assert len(_engine_replica_pids(server)) == 2
    client = openai.OpenAI(base_url=ray_url + "/v1", api_key="none", max_retries=0, timeout=120)
    outcomes: list[str] = []

    def stream(i: int) -> None:
        try:
            chunks = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Count to {1000 + i}."}],
                max_tokens=400,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            outcomes.append(finish[-1] if finish else "cut without a reason")
        except openai.APIError as exc:
            outcomes.append(f"error: {exc.message}")

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while True:  # both replicas generating, so the kill hits some streams and spares others
        running = [s.value for s in _metrics(ray_url)["loramux_replica_requests_running"]]
        if len(running) == 2 and min(running) > 0:
            break
        assert time.monotonic() < deadline, (running, outcomes)
        time.sleep(0.1)
    victim = _engine_replica_pids(server)[0]
    os.kill(victim, signal.SIGKILL)
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a stream hung"
    errors = [o for o in outcomes if o.startswith("error")]
    assert errors and "length" in outcomes, outcomes
    assert all("replica" in e and "retry" in e for e in errors), errors
    assert "cut without a reason" not in outcomes
    assert _openai_stream_text(ray_url, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    # Health may still count the dead replica as ready for a moment (Ray's controller has not noticed),
    # so wait for a new replica process too, not only for the victim to be gone.
    deadline = time.monotonic() + 90
    while True:
        pids = _engine_replica_pids(server)
        if victim not in pids and len(pids) == 2 and _get(ray_url + "/health")["replicas"]["ready"] == 2:
            break
        assert time.monotonic() < deadline, f"the killed replica was not restarted: {pids}"
        time.sleep(0.5)
