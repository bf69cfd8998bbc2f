"""N concurrent llm_inference calls over MCP HTTP vs the same calls one at a time vs a raw llama.cpp loop.

    .venv/bin/python -m bench.bench_batching            # writes bench/results/batching.md

All three run in one invocation, on the same prompts, with every request generating exactly
--max-tokens tokens (ignore_eos, greedy), so tokens/s figures are comparable as ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import anyio
import numpy as np
from mcp import Client

from bench.raw_decode import raw_batched_decode
from engine import ChatMessage, EngineConfig, GenerateRequest
from engine.llama.chat_template import ChatTemplate
from engine.llama.cpp.runner import LlamaRunner
from engine.llama.preparation import RequestPreparer
from tests.http_server import http_server

TOPICS = ["rivers", "volcanoes", "owls", "bread", "glaciers", "chess", "bees", "comets"]


def prompts_for(n: int) -> list[str]:
    return [f"Write a short paragraph about {TOPICS[i % len(TOPICS)]} (variant {i})." for i in range(n)]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def timed_call(client: Client, prompt: str, max_tokens: int) -> tuple[int, float]:
    """(completion tokens, client-side time to first progress notification)."""
    start = time.perf_counter()
    first: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        if not first:
            first.append(time.perf_counter() - start)

    r = await client.call_tool(
        "llm_inference",
        # pure greedy, like the raw loop: the penalty sampler alone costs ~0.5 ms per sequence per step
        {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "repeat_penalty": 1.0, "ignore_eos": True},
        read_timeout_seconds=600,
        progress_callback=on_progress,
    )
    assert not r.is_error, r.content
    return r.structured_content["usage"]["completion_tokens"], (first or [float("nan")])[0]  # type: ignore[index]


async def run_one_at_a_time(client: Client, prompts: list[str], max_tokens: int) -> tuple[float, list[float]]:
    start = time.perf_counter()
    tokens, ttfts = 0, []
    for p in prompts:
        n, ttft = await timed_call(client, p, max_tokens)
        tokens += n
        ttfts.append(ttft)
    return tokens / (time.perf_counter() - start), ttfts


async def run_concurrently(clients: list[Client], prompts: list[str], max_tokens: int) -> tuple[float, list[float]]:
    out: list[tuple[int, float]] = []

    async def one(c: Client, p: str) -> None:
        out.append(await timed_call(c, p, max_tokens))

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for c, p in zip(clients, prompts, strict=True):
            tg.start_soon(one, c, p)
    return sum(n for n, _ in out) / (time.perf_counter() - start), [t for _, t in out]


async def bench_all(url: str, levels: list[int], max_tokens: int, repeats: int, tokens: list[list[int]]) -> dict:
    """Per level and repeat: one at a time, concurrent, raw loop, back to back, so drift hits all three alike."""
    config = EngineConfig()
    results: dict[int, dict] = {}
    async with Client(url) as warm:
        await timed_call(warm, "Hello", 8)
        for n in levels:
            prompts = prompts_for(n)
            seq_tps, conc_tps, raw_tps, seq_ttft, conc_ttft, raw_ttft = [], [], [], [], [], []
            async with AsyncExitStack() as stack:
                # one session per caller, like separate agents
                clients = [await stack.enter_async_context(Client(url)) for _ in range(n)]
                for _ in range(repeats):
                    tps, ttft = await run_one_at_a_time(warm, prompts, max_tokens)
                    seq_tps.append(tps)
                    seq_ttft += ttft
                    tps, ttft = await run_concurrently(clients, prompts, max_tokens)
                    conc_tps.append(tps)
                    conc_ttft += ttft
                    # the server is idle now: the raw loop has the machine to itself
                    raw = raw_batched_decode(
                        str(config.model_path),
                        tokens[:n],
                        max_tokens,
                        context_per_sequence=2048,
                        threads=config.threads,
                    )
                    raw_tps.append(raw.tokens_per_second)
                    raw_ttft += raw.ttft_s
            results[n] = dict(
                sequential_tps=statistics.median(seq_tps),
                concurrent_tps=statistics.median(conc_tps),
                raw_tps=statistics.median(raw_tps),
                # ratios within each repeat (its runs are back to back), then the median: robust to drift
                concurrent_over_sequential=statistics.median(c / q for c, q in zip(conc_tps, seq_tps, strict=True)),
                concurrent_over_raw=statistics.median(c / r for c, r in zip(conc_tps, raw_tps, strict=True)),
                sequential_ttft_p50=pct(seq_ttft, 50),
                concurrent_ttft_p50=pct(conc_ttft, 50),
                concurrent_ttft_p99=pct(conc_ttft, 99),
                raw_ttft_p50=pct(raw_ttft, 50),
                all_runs=dict(sequential=seq_tps, concurrent=conc_tps, raw=raw_tps),
            )
            print(f"N={n}: {results[n]}", flush=True)
    return results


def prompt_tokens(texts: list[str]) -> list[list[int]]:
    """The exact tokens the server decodes for these prompts (chat template included)."""
    runner = LlamaRunner(EngineConfig(max_sequences=1, context_per_sequence=512))
    try:
        builder = RequestPreparer(
            runner.vocab, ChatTemplate.for_vocab(runner.vocab), context_per_request=512, timeout=60
        )
        return [builder.tokens(GenerateRequest(messages=(ChatMessage(role="user", content=t),))) for t in texts]
    finally:
        runner.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="1,2,4,8,16")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/batching.md"))
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    tokens = prompt_tokens(prompts_for(max(levels)))
    with http_server("--max-sequences", str(max(levels))) as base:
        results = anyio.run(bench_all, base + "/mcp", levels, args.max_tokens, args.repeats, tokens)
    write_report(args, levels, results, EngineConfig())


def write_report(args: argparse.Namespace, levels: list[int], results: dict, config: EngineConfig) -> None:
    lines = [
        "# Batching benchmark: concurrent MCP calls vs one at a time vs raw llama.cpp",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, {config.threads} threads, "
        f"model `{config.model_path.name}`; every request generates exactly {args.max_tokens} tokens "
        f"(greedy without repeat penalty, ignore_eos); median of {args.repeats} repeats, the three kinds of run "
        f"interleaved within each repeat. Server started with "
        f"`--max-sequences {max(levels)}`. Command: `.venv/bin/python -m bench.bench_batching`.",
        "",
        "- **one at a time**: the same N calls over MCP HTTP, each waiting for the previous.",
        "- **concurrent**: N calls at once over MCP HTTP, one client session each (like N agents).",
        "- **raw loop**: llama.cpp alone in the bench process: one batch of all N prompts, then one token",
        "  per sequence per `llama_decode`, same prompt tokens and lengths (`bench/raw_decode.py`).",
        "- TTFT is client-side: from sending the call to its first progress notification (first text).",
        "- Ratios are taken within each repeat (its runs are back to back), then the median over repeats:",
        "  this shared machine's speed drifts by 10% and more between minutes.",
        "",
        "| N | one at a time tok/s | concurrent tok/s | raw loop tok/s | concurrent / one at a time "
        "| concurrent / raw | TTFT p50 ms | TTFT p99 ms | raw TTFT ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in levels:
        s = results[n]
        lines.append(
            f"| {n} | {s['sequential_tps']:.1f} | {s['concurrent_tps']:.1f} | {s['raw_tps']:.1f} "
            f"| {s['concurrent_over_sequential']:.2f}x | {s['concurrent_over_raw']:.2f}x "
            f"| {s['concurrent_ttft_p50'] * 1000:.0f} | {s['concurrent_ttft_p99'] * 1000:.0f} "
            f"| {s['raw_ttft_p50'] * 1000:.0f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
