"""Ray Serve's own cost per hop on this machine, with no loramux code: the floor under issue 22's goal
"TTFT added by the hop ≤ 5 ms" (bench_ray.py measures loramux's; this measures what Serve itself adds).

A Starlette app streams one SSE event. A plain HTTP client measures the time to its first byte (a fresh
connection per request, as bench_ray.py's TTFT client does; p50 and p90 after a warm-up):

- plain uvicorn serving the app: the baseline, what one process pays;
- the app as a Serve ingress deployment behind Serve's proxy, streaming the event itself, and relaying it
  from a second deployment through a streaming handle (loramux's shape: proxy → ingress → engine replica);
- the same with Serve's direct ingress (`RAY_SERVE_ENABLE_DIRECT_INGRESS=1`, experimental in Ray 2.60:
  the ingress replica takes HTTP on its own port, no proxy).

Each Serve arm runs in a child process with a Ray instance of its own (the direct-ingress switch is read
when Ray starts), one after the other; run it on a quiet machine.

    .venv/bin/python -m bench.bench_serve_floor     # writes bench/results/serve_floor.md (+ .json)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from bench.report import run_stamp, save_report

RESULTS = Path(__file__).parent / "results"
WARM_UP = 20
PATHS = {"/": "the ingress streams", "/relay": "the ingress relays a handle stream"}


def time_to_first_byte(port: int, path: str, requests: int) -> list[float]:
    """Milliseconds to the first byte of each response, warm-up dropped."""
    out = []
    for _ in range(requests + WARM_UP):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        started = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        response.read(1)
        out.append((time.perf_counter() - started) * 1000)
        response.read()
        conn.close()
    return out[WARM_UP:]


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": statistics.median(ordered), "p90": ordered[int(0.9 * len(ordered))], "n": len(ordered)}


def one_event_app(relay: Any = None) -> Starlette:
    """`/` streams one SSE event; `/relay` streams what a handle's stream yields (when given one)."""

    async def own(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"data: first\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    async def relayed(request: Request) -> StreamingResponse:
        items = relay.options(stream=True, method_name="stream").remote(3)

        async def body() -> AsyncIterator[bytes]:
            async for item in items:
                yield f"data: {item}\n\n".encode()

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/", own), Route("/relay", relayed)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def plain_arm(requests: int) -> dict[str, Any]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(one_event_app(), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        return {"/": summary(time_to_first_byte(port, "/", requests))}
    finally:
        server.should_exit = True
        thread.join()


def serve_arm(direct: bool, requests: int) -> dict[str, Any]:
    """In a child process: a Ray instance, the two deployments, both paths measured."""
    port = free_port()
    if direct:  # the ingress replica binds the one port of the range (its end is exclusive)
        os.environ |= {
            "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),
        }
    import ray
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Engine:
        async def stream(self, n: int) -> AsyncIterator[int]:
            for i in range(n):
                yield i

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress()
    class Ingress:
        def __init__(self, engine: Any) -> None:
            self._app = one_event_app(engine)

        def __serve_build_asgi_app__(self) -> Any:
            return self._app

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        proxy_port = free_port() if direct else port
        serve.start(http_options={"host": "127.0.0.1", "port": proxy_port})
        serve.run(Ingress.bind(Engine.bind()), name="floor", route_prefix="/")
        time.sleep(2)  # direct ingress: the replica opens its port after it is ready
        return {path: summary(time_to_first_byte(port, path, requests)) for path in PATHS}
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--arm", choices=["proxy", "direct"], help=argparse.SUPPRESS)  # the child's
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(serve_arm(args.arm == "direct", args.requests)))
        return
    results: dict[str, Any] = {"plain uvicorn": plain_arm(args.requests)}
    for arm, name in (("proxy", "Serve's proxy"), ("direct", "Serve's direct ingress")):
        child = subprocess.run(
            [sys.executable, "-m", "bench.bench_serve_floor", "--arm", arm, "--requests", str(args.requests)],
            capture_output=True,
            text=True,
            check=True,
        )
        results[name] = json.loads(child.stdout.strip().splitlines()[-1])
    (RESULTS / "serve_floor.json").write_text(json.dumps(results, indent=1))
    base = results["plain uvicorn"]["/"]["p50"]
    lines = [
        "# Ray Serve's own hops, without loramux",
        "",
        f"{run_stamp()}; `python -m bench.bench_serve_floor`. Time to the first byte of a one-event SSE stream,",
        f"a fresh connection per request, {args.requests} requests per row after {WARM_UP} of warm-up; no model",
        "loaded, nothing else running. The floor under issue 22's goal (TTFT added by the hops ≤ 5 ms).",
        "",
        "| path | p50 ms | p90 ms | added to plain uvicorn (p50) |",
        "|---|---|---|---|",
        f"| plain uvicorn | {base:.2f} | {results['plain uvicorn']['/']['p90']:.2f} | – |",
    ]
    for name in ("Serve's proxy", "Serve's direct ingress"):
        for path, what in PATHS.items():
            row = results[name][path]
            lines.append(f"| {name}: {what} | {row['p50']:.2f} | {row['p90']:.2f} | +{row['p50'] - base:.2f} ms |")
    relay = results["Serve's proxy"]["/relay"]["p50"] - base
    lines += [
        "",
        f"loramux's shape (proxy → ingress → engine replica) costs **+{relay:.1f} ms** here before any loramux",
        "code runs and with no model decoding beside it: the 5 ms goal is below Ray Serve's own floor on this",
        "machine. Direct ingress (experimental) takes the proxy out.",
    ]
    save_report(RESULTS / "serve_floor.md", lines)


if __name__ == "__main__":
    main()
