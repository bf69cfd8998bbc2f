"""This tree's server against an earlier commit's, side by side: concurrent MCP calls, interleaved.

    .venv/bin/python -m bench.bench_ab --before 7225054              # writes bench/results/ab.md
    .venv/bin/python -m bench.bench_ab --adapters 4 --levels 8       # 8 calls over 4 LoRA adapters

Both servers run at once (the earlier commit from a temporary git worktree), idle while the other
works; each repeat runs the same N concurrent calls on one, then the other, alternating which goes
first. The ratio after/before is taken within each repeat, then the median: the machine's drift
hits both sides alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
from contextlib import AsyncExitStack, ExitStack
from datetime import UTC, datetime
from pathlib import Path

import anyio
from mcp import Client

from bench.bench_adapters import DEFAULT_SAMPLING, GREEDY, TARGETS, run_mix
from bench.bench_batching import timed_call
from tests.adapter_factory import write_lora
from tests.http_server import http_server

ROOT = Path(__file__).resolve().parent.parent


async def compare(
    urls: dict[str, str], levels: list[int], repeats: int, max_tokens: int, adapters: int, sampling: dict[str, object]
) -> dict:
    results: dict[int, dict[str, list[float]]] = {}
    async with AsyncExitStack() as stack:
        for url in urls.values():
            async with Client(url) as warm:
                await timed_call(warm, "Hello", 8)
                for i in range(adapters):
                    loaded = await warm.call_tool("load_adapter", {"name": f"a{i}", "path": f"lora{i}.gguf"})
                    assert not loaded.is_error, loaded.content
        for n in levels:
            clients = {
                label: [await stack.enter_async_context(Client(url)) for _ in range(n)] for label, url in urls.items()
            }
            runs: dict[str, list[float]] = {label: [] for label in urls}
            for r in range(repeats):
                order = list(urls) if r % 2 == 0 else list(reversed(urls))
                for label in order:
                    mix = [f"a{i % adapters}" if adapters else None for i in range(n)]
                    tps, _ = await run_mix(clients[label], mix, max_tokens, sampling)
                    runs[label].append(tps)
            results[n] = runs
            print(n, runs, flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="7225054")
    ap.add_argument("--levels", default="1,4,8,16")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--adapters", type=int, default=0, help="spread the calls over this many LoRA adapters")
    ap.add_argument(
        "--sampling", choices=("greedy", "default"), default="greedy", help="default: the tool's default sampling"
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    sampling = GREEDY if args.sampling == "greedy" else DEFAULT_SAMPLING
    levels = [int(x) for x in args.levels.split(",")]
    out = args.out or ROOT / ("bench/results/ab_adapters.md" if args.adapters else "bench/results/ab.md")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        for i in range(args.adapters):  # shaped like the demo adapters, as in bench_adapters
            write_lora(Path(tmp) / f"lora{i}.gguf", rank=16, alpha=32, seed=i, strength=0.02, targets=TARGETS)
        worktree = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.before], cwd=ROOT, check=True)
        stack.callback(subprocess.run, ["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=True)
        server_args = ("--max-sequences", str(max(levels)), "--adapter-dir", tmp)
        before = stack.enter_context(http_server(*server_args, source=worktree))
        after = stack.enter_context(http_server(*server_args))
        urls = {"before": before + "/mcp", "after": after + "/mcp"}
        results = anyio.run(compare, urls, levels, args.repeats, args.max_tokens, args.adapters, sampling)
    spread = f", spread over {args.adapters} LoRA adapters (rank 16, as bench_adapters)" if args.adapters else ""
    lines = [
        "# A/B: this tree's server against an earlier commit's, same run",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, {os.cpu_count()} cores. N concurrent "
        f"`llm_inference` calls over MCP HTTP ({args.max_tokens} tokens each, "
        f"{'greedy' if args.sampling == 'greedy' else 'the default sampling'}, ignore_eos){spread}, "
        f"one session per call, on two servers running side by side: **before** = commit `{args.before}`, "
        "**after** = this tree. "
        f"{args.repeats} repeats alternating which server goes first; ratio within each repeat, then the median. "
        f"Command: `.venv/bin/python -m bench.bench_ab --before {args.before}"
        + (f" --adapters {args.adapters}" if args.adapters else "")
        + (f" --sampling {args.sampling}" if args.sampling != "greedy" else "")
        + f" --levels {args.levels} --repeats {args.repeats}`.",
        "",
        "| N | before tok/s (median) | after tok/s (median) | after / before (median of repeats) | range |",
        "|---|---|---|---|---|",
    ]
    for n in levels:
        runs = results[n]
        ratios = [a / b for a, b in zip(runs["after"], runs["before"], strict=True)]
        lines.append(
            f"| {n} | {statistics.median(runs['before']):.1f} | {statistics.median(runs['after']):.1f} "
            f"| {statistics.median(ratios):.2f}x | {min(ratios):.2f}–{max(ratios):.2f} |"
        )
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
