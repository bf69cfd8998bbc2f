"""llm_batch against the same items sent as concurrent llm_inference calls, and what a batch costs
another caller. One run, one engine, interleaved rounds:

    .venv/bin/python -m bench.bench_batch          # writes bench/results/batch.md

- throughput: 64 items (distinct prompts, greedy, 64 tokens each, ignore_eos) as one llm_batch call vs
  as 64 concurrent llm_inference calls; the ratio is calls' wall time / batch's (≥ 1: the batch is as
  fast). Both go through the MCP server in-process (the SDK's Client on its in-memory transport), so
  the transport's cost per call, which favours one call over 64, is left out.
- fairness: time to first token of a single llm_inference call (the engine's own measure, from
  submission; a short prompt and an agent's ~380-token one, new each time so no cached prefix flatters
  either case) when the engine is idle, and while a batch holds every slot (issued once the batch is
  generating); goal ≤ 2× idle.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from bench.report import median_interval, run_stamp, save_report
from engine import EngineConfig
from engine.llama import LlamaEngine
from mcp_server.tools.server import build_server

ROOT = Path(__file__).resolve().parent.parent
ITEM = {"temperature": 0, "max_tokens": 64, "ignore_eos": True}
SINGLE = {"temperature": 0, "max_tokens": 8}
_singles = iter(range(1_000_000))


def items(n: int) -> list[str]:
    return [f"Write a short note about topic number {i}." for i in range(n)]


async def calls(client: Client, n: int) -> float:
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for prompt in items(n):
            tg.start_soon(lambda p=prompt: client.call_tool("llm_inference", {"prompt": p, **ITEM}))
    return time.perf_counter() - start


async def batch(client: Client, n: int) -> float:
    start = time.perf_counter()
    result = await client.call_tool("llm_batch", {"items": items(n), **ITEM}, read_timeout_seconds=900)
    assert result.structured_content is not None and result.structured_content["failed"] == 0
    return time.perf_counter() - start


# an agent's longer prompt: rules and a question, ~380 tokens with the chat template
RULES = "\n".join(f"Rule {i}: answer briefly, politely and only about topic {i}." for i in range(20))


async def single_ttft(client: Client, long: bool = False) -> float:
    # a new prompt each time: a cached prefix would make the idle case look faster than it is
    n = next(_singles)
    # (the number first, so a prompt shares nothing with earlier ones but the chat template's start, idle
    # or busy: with the number last, an idle call reused the previous call's KV for all but a few tokens)
    prompt = f"Question {n}: say hi, following these rules.\n{RULES}" if long else f"Person {n}: say hi."
    result = await client.call_tool("llm_inference", {"prompt": prompt, **SINGLE})
    return json.loads(result.content[0].text)["timings"]["ttft_ms"]  # type: ignore[union-attr]


async def stats(client: Client) -> dict[str, Any]:
    result = await client.read_resource("loramux://stats")
    return json.loads(result.contents[0].text)  # type: ignore[union-attr]


async def ttft_during_batch(client: Client, n: int, slots: int, samples: int, long: bool) -> list[float]:
    found: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(batch, client, n)
        for _ in range(samples):
            while (await stats(client))["running"] < slots:  # noqa: ASYNC110 (the engine's stats are polled)
                await anyio.sleep(0.02)
            found.append(await single_ttft(client, long))
            await anyio.sleep(1.0)
    return found


async def run(args: argparse.Namespace) -> list[str]:
    config = EngineConfig(max_sequences=args.slots)
    ratios: list[float] = []
    times: dict[str, list[float]] = {"calls": [], "batch": []}
    idle: dict[bool, list[float]] = {False: [], True: []}
    busy: dict[bool, list[float]] = {False: [], True: []}
    async with LlamaEngine(config) as engine, Client(build_server(engine)) as client:
        await batch(client, 4)  # warm up
        for round_ in range(args.rounds):
            order = ("calls", "batch") if round_ % 2 == 0 else ("batch", "calls")
            took = {}
            for arm in order:
                took[arm] = await (calls if arm == "calls" else batch)(client, args.items)
                times[arm].append(took[arm])
            ratios.append(took["calls"] / took["batch"])
            for long in (False, True):
                idle[long] += [await single_ttft(client, long) for _ in range(3)]
                busy[long] += await ttft_during_batch(client, args.items, args.slots, samples=3, long=long)
        preemptions = (await stats(client))["backend"]["sequence_preemptions"]
    low, high = median_interval(ratios)
    ttft_ratio = {long: statistics.median(busy[long]) / statistics.median(idle[long]) for long in (False, True)}
    tokens = args.items * ITEM["max_tokens"]
    return [
        "# llm_batch vs concurrent calls",
        "",
        f"Run {run_stamp()}; `python -m bench.bench_batch` (--items {args.items} --slots {args.slots} "
        f"--rounds {args.rounds}). Real model (SmolLM2-135M Q4_1), one engine (`--max-sequences {args.slots}`), "
        "the MCP server in-process; rounds alternate which arm goes first.",
        "",
        f"## Throughput: {args.items} items, {ITEM['max_tokens']} tokens each (greedy, ignore_eos)",
        "",
        "| arm | wall time p50 (s) | tokens/s |",
        "|---|---|---|",
        *(
            f"| {arm} | {statistics.median(t):.2f} | {tokens / statistics.median(t):.1f} |"
            for arm, t in (
                (f"{args.items} concurrent llm_inference calls", times["calls"]),
                ("one llm_batch", times["batch"]),
            )
        ),
        "",
        f"calls' time / batch's time per round: median **{statistics.median(ratios):.2f}×** (95% CI "
        f"{low:.2f}–{high:.2f}; ≥ 1 = the batch is as fast). Goal: as fast as the concurrent calls: "
        f"**{'met' if high >= 1.0 else 'not met'}**.",
        "",
        "## Another caller while a batch runs",
        "",
        "| single call (8 tokens; a new prompt each) | engine | TTFT p50 (ms) | max (ms) | samples | busy / idle |",
        "|---|---|---|---|---|---|",
        *(
            row
            for long, name in ((False, "short prompt (~40 tokens)"), (True, "agent prompt (~380 tokens)"))
            for row in (
                f"| {name} | idle | {statistics.median(idle[long]):.0f} | {max(idle[long]):.0f} | "
                f"{len(idle[long])} | |",
                f"| {name} | a {args.items}-item batch holds every slot | {statistics.median(busy[long]):.0f} | "
                f"{max(busy[long]):.0f} | {len(busy[long])} | **{ttft_ratio[long]:.2f}×** |",
            )
        ),
        "",
        f"Goal ≤ 2× idle: short prompt **{'met' if ttft_ratio[False] <= 2 else 'not met'}**, agent prompt "
        f"**{'met' if ttft_ratio[True] <= 2 else 'not met'}**. "
        f"Batch members that gave their slot back (sequence_preemptions): {preemptions}.",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/batch.md")
    args = ap.parse_args()
    save_report(args.out, anyio.run(run, args))


if __name__ == "__main__":
    main()
