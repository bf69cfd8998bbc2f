"""Time to first token for calls sharing a ~1,000-token system prompt, with and without the prefix
cache, in one run (two in-process engines, calls alternating between them).

    .venv/bin/python -m bench.bench_prefix_cache      # writes bench/results/prefix_cache.md

Each call asks a different short question after the same system prompt, greedy, 16 tokens. The cached
engine saw the system prompt once before (one warm-up call); every measured call on it is a hit. The
greedy texts of both engines are compared: a hit must not change the output.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import anyio

from bench.report import run_stamp, save_report
from engine import ChatMessage, EngineConfig, GenerateRequest, GenerationResult, SamplingParams
from engine.llama import LlamaEngine

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = " ".join(
    f"Rule {i}: when asked about subject {i}, answer politely, briefly and accurately, citing rule {i}."
    for i in range(48)
)
QUESTIONS = [f"What does rule {i} say?" for i in range(3, 40, 3)]


def ask(question: str) -> GenerateRequest:
    messages = (ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=question))
    return GenerateRequest(messages=messages, sampling=SamplingParams(temperature=0.0, max_tokens=16))


async def compare() -> tuple[list[GenerationResult], list[GenerationResult], int]:
    config = {"max_sequences": 4, "context_per_sequence": 2048}
    async with (
        LlamaEngine(EngineConfig(**config)) as cached,  # type: ignore[arg-type]
        LlamaEngine(EngineConfig(**config, prefix_cache_cells=0)) as cold,  # type: ignore[arg-type]
    ):
        await cached.complete(ask("Hello."))
        await cold.complete(ask("Hello."))
        hits, misses = [], []
        for question in QUESTIONS:
            hits.append(await cached.complete(ask(question)))
            misses.append(await cold.complete(ask(question)))
        assert cached.stats().prefix_hits == len(QUESTIONS), cached.stats()
        return hits, misses, hits[0].usage.prompt_tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/prefix_cache.md")
    args = p.parse_args()
    hits, misses, prompt_tokens = anyio.run(compare)
    same = all(h.text == m.text for h, m in zip(hits, misses, strict=True))
    ratios = [m.timings.ttft_ms / h.timings.ttft_ms for h, m in zip(hits, misses, strict=True)]  # type: ignore[operator]
    ttft_hit = statistics.median(h.timings.ttft_ms for h in hits)  # type: ignore[type-var]
    ttft_cold = statistics.median(m.timings.ttft_ms for m in misses)  # type: ignore[type-var]
    save_report(
        args.out,
        [
            "# Prefix cache: TTFT with a shared ~1,000-token system prompt",
            "",
            f"{run_stamp()}, "
            f"`python -m bench.bench_prefix_cache`. SmolLM2-135M Q4_1 on the CPU, prompts of {prompt_tokens} tokens "
            f"({len(QUESTIONS)} questions after one system prompt), greedy, 16 tokens; calls alternate between an "
            "engine with the prefix cache and one without.",
            "",
            "| | TTFT median ms |",
            "|---|---|",
            f"| without the cache | {ttft_cold:.0f} |",
            f"| with the cache (every call a hit) | {ttft_hit:.0f} |",
            "",
            f"Speed-up on a hit: median **{statistics.median(ratios):.1f}x** (range {min(ratios):.1f}–"
            f"{max(ratios):.1f}x). Greedy texts identical with and without the cache: **{same}**.",
        ],
    )


if __name__ == "__main__":
    main()
