"""GET /health reports the engine's real state over real HTTP: 503 while starting, 200 when ready,
503 after an engine failure. The engine here runs on the fake runner, whose start and crash tests control."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import anyio
import pytest
import uvicorn

from engine import EngineConfig, EngineFailure, GenerateRequest
from engine.llama import LlamaEngine
from mcp_server.http_app import build_http_app
from tests.fake_runner import FakeRunner
from tests.http_server import free_port

pytestmark = pytest.mark.anyio


def get_health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc)


async def test_health_follows_the_engine_state() -> None:
    release = threading.Event()
    made: list[FakeRunner] = []

    def slow_runner(config: EngineConfig) -> FakeRunner:
        release.wait(10)  # the model is "loading" until the test says so
        made.append(FakeRunner(config))
        return made[-1]

    engine = LlamaEngine(EngineConfig(), runner_factory=slow_runner)
    app = build_http_app(engine)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    url = f"http://127.0.0.1:{port}/health"

    async def poll_until(status: str) -> tuple[int, dict]:
        with anyio.fail_after(10):
            while True:
                try:
                    code, body = await anyio.to_thread.run_sync(get_health, url)
                    if body["status"] == status:
                        return code, body
                except OSError:
                    pass  # not listening yet
                await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        code, body = await poll_until("starting")
        assert code == 503 and body["model"] is None
        release.set()
        code, body = await poll_until("ready")
        assert code == 200 and body["model"] == "fake.gguf"

        def crash(*_: object) -> None:
            raise RuntimeError("injected bug")

        # a bug in the core outside a step (a step's own faults are recovered from)
        made[0].kv_cells_used = crash  # type: ignore[method-assign]
        with pytest.raises(EngineFailure, match="internal error"):
            await engine.complete(GenerateRequest(prompt="x"))
        code, body = await poll_until("failed")
        assert code == 503
        server.should_exit = True
