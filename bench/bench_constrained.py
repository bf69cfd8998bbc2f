"""Decode throughput with a JSON Schema against without, side by side in one run.

    .venv/bin/python -m bench.bench_constrained       # writes bench/results/constrained.md

8 concurrent requests on the in-process engine (no HTTP): with a schema (each answer a list of short
strings, so it runs long), then the same requests without a schema, each generating as many tokens as
its constrained run did (ignore_eos), so both do the same decode work. Greedy. Interleaved repeats;
ratio = constrained tok/s / plain tok/s within each repeat, then the median.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import anyio

from bench.report import run_stamp, save_report
from engine import ChatMessage, EngineConfig, GenerateRequest, SamplingParams
from engine.llama import LlamaEngine

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "items": {"type": "string", "maxLength": 40}, "minItems": 12, "maxItems": 12}
    },
    "required": ["items"],
    "additionalProperties": False,
}
TOPICS = ["fruits", "rivers", "cities", "tools", "birds", "colours", "sports", "planets"]


async def batch(engine: LlamaEngine, requests: list[GenerateRequest]) -> tuple[float, list[int]]:
    tokens: dict[int, int] = {}

    async def one(i: int) -> None:
        tokens[i] = (await engine.complete(requests[i])).usage.completion_tokens

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(len(requests)):
            tg.start_soon(one, i)
    wall = time.perf_counter() - start
    return wall, [tokens[i] for i in range(len(requests))]


def ask(topic: str, **fields: object) -> GenerateRequest:
    message = ChatMessage(role="user", content=f"List twelve {topic}.")
    sampling = {"temperature": 0.0, "max_tokens": 600} | fields.pop("sampling", {})  # type: ignore[operator]
    return GenerateRequest(messages=(message,), sampling=SamplingParams(**sampling), **fields)  # type: ignore[arg-type]


async def compare(repeats: int) -> list[tuple[float, float]]:
    runs = []
    async with LlamaEngine(EngineConfig(max_sequences=8, context_per_sequence=1024)) as engine:
        await batch(engine, [ask(t, json_schema=SCHEMA) for t in TOPICS[:2]])  # warm up (the token table)
        for _ in range(repeats):
            wall_c, lengths = await batch(engine, [ask(t, json_schema=SCHEMA) for t in TOPICS])
            plain = [
                ask(t, sampling={"max_tokens": n, "ignore_eos": True}) for t, n in zip(TOPICS, lengths, strict=True)
            ]
            wall_p, _ = await batch(engine, plain)
            runs.append((sum(lengths) / wall_c, sum(lengths) / wall_p))
            print(f"constrained {runs[-1][0]:.1f} tok/s, plain {runs[-1][1]:.1f} tok/s", flush=True)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/constrained.md")
    args = p.parse_args()
    runs = anyio.run(compare, args.repeats)
    ratio = statistics.median(c / q for c, q in runs)
    save_report(
        args.out,
        [
            "# Decode throughput with a JSON Schema vs without",
            "",
            f"{run_stamp()}, "
            f"`python -m bench.bench_constrained --repeats {args.repeats}`. 8 concurrent requests on the in-process "
            "engine (SmolLM2-135M Q4_1), greedy; the plain runs generate exactly as many tokens per request as the "
            "constrained ones did. llguidance computes each step's token mask (engine/llama/cpp/constraints.py).",
            "",
            "| repeat | with schema tok/s | without tok/s | ratio |",
            "|---|---|---|---|",
            *(f"| {i + 1} | {c:.1f} | {q:.1f} | {c / q:.2f}x |" for i, (c, q) in enumerate(runs)),
            "",
            f"Median ratio: **{ratio:.2f}x**.",
        ],
    )


if __name__ == "__main__":
    main()
