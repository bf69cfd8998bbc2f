"""KV compaction on vs off, side by side, on a workload whose requests finish at different times.

    .venv/bin/python -m bench.bench_compaction          # writes bench/results/compaction.md

Bursts of 8 concurrent requests with lengths drawn from 8–128 tokens, the next burst only when all
have finished: sequences finish at different steps and leave holes in the running seq ids that no
new request fills (as when load drains). "off" replaces the
scheduler's compaction with a no-op in the same process; runs alternate on/off to share any drift.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from unittest import mock

import anyio

from engine import ChatMessage, EngineConfig, GenerateRequest, SamplingParams
from engine.llama import LlamaEngine
from engine.llama.scheduling.scheduler import Scheduler

CLIENTS = 8


async def bursts(seconds: float, seed: int) -> tuple[float, dict[int, int], int]:
    rng = random.Random(seed)
    async with LlamaEngine(EngineConfig(max_sequences=CLIENTS)) as engine:
        await engine.complete(GenerateRequest(prompt="warm up", sampling=SamplingParams(max_tokens=4)))
        start = time.perf_counter()
        tokens = 0

        async def one(n: int) -> None:
            nonlocal tokens
            msg = ChatMessage(role="user", content=f"Tell me about topic {rng.randint(0, 999)}.")
            sampling = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=n, ignore_eos=True)
            r = await engine.complete(GenerateRequest(messages=(msg,), sampling=sampling))
            tokens += r.usage.completion_tokens

        while time.perf_counter() - start < seconds:
            async with anyio.create_task_group() as tg:  # a burst: no new request until all have finished
                for _ in range(CLIENTS):
                    tg.start_soon(one, rng.randint(8, 128))
        elapsed = time.perf_counter() - start
        stats = engine.stats()
        return tokens / elapsed, stats.sequences_per_step, stats.sequence_moves


def run(compaction: bool, seconds: float, seed: int) -> tuple[float, dict[int, int], int]:
    if compaction:
        return anyio.run(bursts, seconds, seed)
    with mock.patch.object(Scheduler, "_compact", lambda self: []):
        return anyio.run(bursts, seconds, seed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/compaction.md"))
    args = ap.parse_args()
    on, off, moves = [], [], []
    for r in range(args.repeats):
        tps, _, m = run(True, args.seconds, seed=r)
        on.append(tps)
        moves.append(m)
        off.append(run(False, args.seconds, seed=r)[0])
        print(f"repeat {r}: on {on[-1]:.1f} tok/s ({m} moves), off {off[-1]:.1f} tok/s", flush=True)
    lines = [
        "# KV compaction: keeping running sequence ids contiguous",
        "",
        f"Bursts of {CLIENTS} concurrent requests, lengths uniform in 8–128 tokens (greedy, ignore_eos), "
        f"{args.seconds:g} s per run, {args.repeats} alternating repeats; engine only (no MCP). "
        "Command: `.venv/bin/python -m bench.bench_compaction`.",
        "",
        "| compaction | aggregate tok/s (median) | runs |",
        "|---|---|---|",
        f"| on | {statistics.median(on):.1f} | {', '.join(f'{x:.1f}' for x in on)} |",
        f"| off | {statistics.median(off):.1f} | {', '.join(f'{x:.1f}' for x in off)} |",
        "",
        f"Ratio on / off: **{statistics.median(on) / statistics.median(off):.2f}x**; "
        f"KV moves per run with compaction: {', '.join(map(str, moves))}.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
