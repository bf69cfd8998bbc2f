"""Generation speed while other processes burn CPU: adaptive threads (the default) against --fixed-threads.

    .venv/bin/python -m bench.bench_busy_cpu            # writes bench/results/busy_cpu.md

Two MCP HTTP servers run side by side (one at a time is used; an idle llama.cpp sleeps). Per repeat,
for each server: one 128-token greedy call and 8 concurrent 64-token calls, on an idle machine and
then beside 1 and 2 processes that spin (`while True: pass`). Reported: median seconds and the ratio
busy / idle per server. The issue's bar: one busy neighbour costs a 128-token call at most 3x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import anyio
from mcp import Client

from tests.http_server import http_server

RESULTS = Path(__file__).parent / "results" / "busy_cpu.md"
SERVERS = {"adaptive (default)": [], "--fixed-threads": ["--fixed-threads"]}
SETTLE_S = 1.5  # the governor re-measures every second: let it see the neighbours first


@contextmanager
def burners(n: int) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(SETTLE_S if n else 0)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


async def one_call(client: Client, max_tokens: int) -> None:
    args = {"prompt": "Tell me a story.", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    result = await client.call_tool("llm_inference", args, read_timeout_seconds=600)
    if result.is_error:
        raise RuntimeError(result.content[0].text)  # type: ignore[union-attr]


async def timed(client: Client, concurrent: int, max_tokens: int) -> float:
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrent):
            tg.start_soon(one_call, client, max_tokens)
    return time.perf_counter() - start


WORKLOADS = {"1 call x 128 tokens": (1, 128), "8 calls x 64 tokens": (8, 64)}


async def main(repeats: int) -> None:
    times: dict[tuple[str, str, int], list[float]] = {}
    async with AsyncExitStack() as stack:
        clients = {}
        for name, args in SERVERS.items():
            base = stack.enter_context(http_server(*args))
            clients[name] = await stack.enter_async_context(Client(base + "/mcp"))
            await timed(clients[name], 1, 16)  # warm up
        for repeat in range(repeats):
            for neighbours in (0, 1, 2):
                with burners(neighbours):
                    for name, client in clients.items():
                        for workload, (concurrent, max_tokens) in WORKLOADS.items():
                            await timed(client, 1, 8)  # the governor samples on steps: wake it
                            t = await timed(client, concurrent, max_tokens)
                            times.setdefault((name, workload, neighbours), []).append(t)
            print(f"repeat {repeat + 1}/{repeats} done", file=sys.stderr)
    write(times, repeats)


def write(times: dict[tuple[str, str, int], list[float]], repeats: int) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        "# Generation beside CPU-burning processes",
        "",
        f"`python -m bench.bench_busy_cpu --repeats {repeats}` on this machine ({os.cpu_count()} cores). Median "
        "seconds; ratio = with neighbours / idle, same server. Neighbours: processes running "
        "`while True: pass`.",
        "",
        "| server | workload | idle s | 1 neighbour s | ratio | 2 neighbours s | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in SERVERS:
        for workload in WORKLOADS:
            idle, one, two = (med[(name, workload, n)] for n in (0, 1, 2))
            lines.append(
                f"| {name} | {workload} | {idle:.2f} | {one:.2f} | {one / idle:.2f}x | {two:.2f} | {two / idle:.2f}x |"
            )
    lines.append("")
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    anyio.run(main, parser.parse_args().repeats)
