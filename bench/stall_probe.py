"""One measurement for bench_stall: 4 streams generate while one long prompt arrives.

Run by bench_stall.py in a subprocess whose PYTHONPATH selects the engine under test (this tree, or the
previous commit's in a git worktree); it uses only the engine API both share, and prints JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import anyio

import engine as engine_pkg
from engine import ChatMessage, EngineConfig, EngineError, GenerateRequest, SamplingParams
from engine.llama import LlamaEngine

STREAMS = 4
PARAGRAPH = (
    "The river rises in the hills, gathers a hundred small streams, and runs through farmland and towns "
    "to the sea. Its banks hold willows, herons, mills and old stone bridges; its floods shaped the fields. "
)


def long_text(chars: int) -> str:
    parts, i = [], 0
    while sum(map(len, parts)) < chars:
        parts.append(f"[{i}] " + PARAGRAPH)
        i += 1
    return "".join(parts)[:chars]


async def probe(long_chars: int, settle_s: float) -> dict:
    arrivals: list[list[float]] = [[] for _ in range(STREAMS)]
    sampling = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=30_000, ignore_eos=True)
    window: dict[str, float] = {}
    async with LlamaEngine(EngineConfig(max_sequences=STREAMS + 1, context_per_sequence=2048)) as engine:
        await engine.complete(GenerateRequest(prompt="warm up", sampling=SamplingParams(max_tokens=4)))
        stop = anyio.Event()

        async def stream(i: int) -> None:
            msg = ChatMessage(role="user", content=f"Write a long story about river number {i}.")
            async with engine.generate(GenerateRequest(messages=(msg,), sampling=sampling)) as s:
                async for _ in s:
                    arrivals[i].append(time.perf_counter())
                    if stop.is_set():
                        break

        async def long_request() -> None:
            await anyio.sleep(settle_s)
            msg = ChatMessage(role="user", content=long_text(long_chars))
            window["sent"] = time.perf_counter()
            try:
                await engine.complete(GenerateRequest(messages=(msg,), sampling=SamplingParams(max_tokens=8)))
                window["outcome"] = "completed"  # type: ignore[assignment]
            except EngineError as exc:
                window["outcome"] = type(exc).__name__  # type: ignore[assignment]
            window["answered"] = time.perf_counter()
            await anyio.sleep(settle_s)
            stop.set()

        async with anyio.create_task_group() as tg:
            for i in range(STREAMS):
                tg.start_soon(stream, i)
            tg.start_soon(long_request)

    sent, answered = window["sent"], window["answered"]
    steady, during = [], []
    for times in arrivals:
        for a, b in itertools.pairwise(times):
            if b < sent - 0.2 and a > sent - settle_s + 0.5:
                steady.append(b - a)
            if b > sent and a < answered + 0.05:  # every gap that overlaps the long request's handling
                during.append(b - a)
    return {
        "engine": engine_pkg.__file__,
        "long_chars": long_chars,
        "outcome": window["outcome"],
        "handling_ms": (answered - sent) * 1000,
        "median_gap_ms": statistics.median(steady) * 1000,
        "max_gap_before_ms": max(steady) * 1000,
        "max_gap_during_ms": max(during) * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chars", type=int, default=100_000)
    ap.add_argument("--settle", type=float, default=3.0)
    args = ap.parse_args()
    print(json.dumps(anyio.run(probe, args.chars, args.settle)))


if __name__ == "__main__":
    main()
