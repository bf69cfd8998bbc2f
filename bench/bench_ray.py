"""The Ray Serve backend, measured in one run (issue 22's benchmark):

1. Throughput, 16 concurrent requests (64 tokens each, greedy, ignore_eos) through the engine interface:
   Ray 2 replicas × 1 thread, Ray 1 replica × 1 thread, Ray 1 replica × 2 threads, and one process
   (LlamaEngine, 2 fixed threads). Arms take turns, each deployed afresh, rounds within each.
2. Adapter affinity: 2 replicas × 1 thread, each allowed 4 resident adapters, 8 adapters, Zipf-like
   traffic (s = 1.1) from 8 concurrent clients: the share of requests served by a replica that already
   held their adapter (1 − loads during the run / requests), and loads per replica; with Serve's
   multiplexing (routing by adapter set) and without it.
3. The time the hops add to the first token at 1 client, over HTTP: `loramux --http` (one process, 2
   threads) against `loramux --http --replicas 1 --replica-threads 2` (proxy → ingress → replica).

    .venv/bin/python -m bench.bench_ray     # writes bench/results/ray.md (+ .json)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx

from bench.report import median_interval, run_stamp, save_report
from engine import AdapterRef, EngineBusy, EngineConfig, GenerateRequest, InferenceEngine, SamplingParams
from engine.llama import LlamaEngine
from engine.ray import RayOptions
from engine.ray.engine import RayEngine
from tests.adapter_factory import write_lora
from tests.http_server import http_server

RESULTS = Path(__file__).parent / "results"
THROUGHPUT_ARMS = {
    "ray 2 replicas x 1 thread": RayOptions(replicas=2, replica_threads=1),
    "ray 1 replica x 1 thread": RayOptions(replicas=1, replica_threads=1),
    "ray 1 replica x 2 threads": RayOptions(replicas=1, replica_threads=2),
    "one process, 2 threads": None,
}


def _engine(config: EngineConfig, options: RayOptions | None) -> InferenceEngine:
    if options is None:
        return LlamaEngine(config.model_copy(update={"threads": 2, "adaptive_threads": False}))
    return RayEngine(config, options)


async def _complete(engine: InferenceEngine, request: GenerateRequest) -> tuple[int, float | None]:
    started = time.perf_counter()
    first: float | None = None
    async with engine.generate(request) as stream:
        async for _ in stream:
            first = first or time.perf_counter() - started
    assert stream.result is not None
    return stream.result.usage.completion_tokens, first


async def throughput_round(engine: InferenceEngine, clients: int, tokens: int, seed: int) -> float:
    sampling = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0.0)
    requests = [
        GenerateRequest(prompt=f"Story {seed}-{i}: once upon a time", sampling=sampling) for i in range(clients)
    ]
    started = time.perf_counter()
    done = await asyncio.gather(*(_complete(engine, r) for r in requests))
    return sum(n for n, _ in done) / (time.perf_counter() - started)


async def throughput(args: argparse.Namespace) -> dict[str, list[float]]:
    config = EngineConfig(max_sequences=16, context_per_sequence=512)
    rates: dict[str, list[float]] = {name: [] for name in THROUGHPUT_ARMS}
    for turn in range(args.turns):
        for name, options in THROUGHPUT_ARMS.items():
            async with _engine(config, options) as engine:
                await throughput_round(engine, 2, 8, -1)  # warm-up
                for r in range(args.rounds):
                    rates[name].append(await throughput_round(engine, args.clients, args.tokens, turn * 100 + r))
            print(name, [round(x, 1) for x in rates[name]], flush=True)
    return rates


def _zipf(n: int, s: float, rng: random.Random) -> int:
    weights = [1 / (k + 1) ** s for k in range(n)]
    return rng.choices(range(n), weights)[0]


async def affinity(args: argparse.Namespace, adapter_dir: Path, multiplexing: bool) -> dict[str, Any]:
    config = EngineConfig(max_sequences=8, context_per_sequence=512, adapter_dirs=(adapter_dir,), max_loaded_adapters=4)
    options = RayOptions(replicas=2, replica_threads=1, adapter_affinity=multiplexing)
    rng = random.Random(7)
    names = [f"a{i}" for i in range(8)]
    plan = [names[_zipf(len(names), 1.1, rng)] for _ in range(args.affinity_requests)]
    async with RayEngine(config, options) as engine:
        for name in names:
            await engine.load_adapter(name, f"{name}.gguf")  # in the catalogue (each on one replica)
        await engine._refresh()
        before = {r: s.adapter_loads for r, s in engine.stats().by_replica.items()}
        queue = list(plan)
        served: dict[str, int] = {}
        busy = 0

        async def client() -> None:
            nonlocal busy
            while queue:
                name = queue.pop()
                request = GenerateRequest(
                    prompt=f"Say something about {name}.",
                    sampling=SamplingParams(max_tokens=8, ignore_eos=True, temperature=0.0),
                    adapters=(AdapterRef(name=name),),
                )
                while True:
                    try:
                        async with engine.generate(request) as stream:
                            async for _ in stream:
                                pass
                        break
                    except EngineBusy:  # its replica's 4 adapters are all in use: retry, as a client would
                        busy += 1
                        await asyncio.sleep(0.2)
                served[stream._replica] = served.get(stream._replica, 0) + 1

        await asyncio.gather(*(client() for _ in range(8)))
        await engine._refresh()
        after = {r: s.adapter_loads for r, s in engine.stats().by_replica.items()}
    loads = {r: after[r] - before.get(r, 0) for r in after}
    return {
        "requests": len(plan),
        "loads": loads,
        "served": served,
        "hit_share": 1 - sum(loads.values()) / len(plan),
        "busy_retries": busy,
    }


def ttft_over_http(args: argparse.Namespace) -> dict[str, list[float]]:
    arms = {
        "one process (2 threads)": ("--threads", "2", "--fixed-threads"),
        "ray, 1 replica x 2 threads": ("--replicas", "1", "--replica-threads", "2"),
    }
    samples: dict[str, list[float]] = {name: [] for name in arms}
    body = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
        "temperature": 0,
        "stream": True,
    }
    for _ in range(args.turns):
        for name, flags in arms.items():
            with http_server(*flags) as base, httpx.Client(timeout=60) as client:
                for i in range(args.ttft_requests + 3):
                    body["messages"][0]["content"] = f"Hi {i}"  # type: ignore[index]  # no prefix-cache help
                    started = time.perf_counter()
                    with client.stream("POST", base + "/v1/chat/completions", json=body) as response:
                        lines = response.iter_lines()
                        for line in lines:
                            if '"content": "' in line and '"content": ""' not in line:
                                if i >= 3:  # the first few warm the path
                                    samples[name].append((time.perf_counter() - started) * 1000)
                                break
                        for _ in lines:
                            pass
            print(name, round(statistics.median(samples[name]), 1), flush=True)
    return samples


def report(results: dict[str, Any], argv: list[str]) -> list[str]:
    rates = results["throughput"]
    p50 = {name: statistics.median(values) for name, values in rates.items()}
    two, one, one_two = (
        rates["ray 2 replicas x 1 thread"],
        rates["ray 1 replica x 1 thread"],
        rates["ray 1 replica x 2 threads"],
    )
    scale = [a / b for a, b in zip(two, one, strict=True)]
    cost = [a / b for a, b in zip(one_two, rates["one process, 2 threads"], strict=True)]
    vs_threads = [a / b for a, b in zip(two, one_two, strict=True)]
    lines = [
        "# Ray Serve backend: scaling, adapter affinity, the hop",
        "",
        f"{run_stamp()}; `python -m bench.bench_ray {' '.join(argv)}`. Real model (SmolLM2-135M Q4_1), a",
        "local Ray instance; arms deployed afresh and taking turns. Nothing else ran on the machine.",
        "",
        f"## Throughput: {results['clients']} concurrent requests, {results['tokens']} tokens each (engine interface)",
        "",
        "| arm | tokens/s p50 | rounds |",
        "|---|---|---|",
    ]
    for name in rates:
        lines.append(f"| {name} | {p50[name]:.1f} | {', '.join(f'{v:.0f}' for v in rates[name])} |")
    lo, hi = median_interval(scale)
    lines += [
        "",
        f"- 2 replicas × 1 thread / 1 replica × 1 thread: **{statistics.median(scale):.2f}×** "
        f"(95% CI {lo:.2f}–{hi:.2f}); goal ≥ 1.7×: **{'met' if statistics.median(scale) >= 1.7 else 'not met'}**.",
        f"- 2 replicas × 1 thread / 1 replica × 2 threads: {statistics.median(vs_threads):.2f}× "
        "(the same 2 cores as replicas or as threads).",
        f"- Ray's cost: 1 replica × 2 threads / one process with 2 threads: {statistics.median(cost):.2f}×.",
        "",
        "## Adapter affinity: 8 adapters, Zipf-like traffic, 2 replicas holding at most 4 each",
        "",
        "| routing | requests | served by a replica holding the adapter | loads per replica | requests per replica "
        "| refused busy, retried |",
        "|---|---|---|---|---|---|",
    ]
    for label, key in (("by adapter set (multiplexing)", "with"), ("any replica (multiplexing off)", "without")):
        a = results["affinity"][key]
        loads = ", ".join(str(v) for v in sorted(a["loads"].values(), reverse=True))
        served = ", ".join(str(v) for v in sorted(a["served"].values(), reverse=True))
        share = f"**{100 * a['hit_share']:.0f}%**"
        lines.append(f"| {label} | {a['requests']} | {share} | {loads} | {served} | {a['busy_retries']} |")
    hit = results["affinity"]["with"]["hit_share"]
    ttft = results["ttft"]
    one_p50 = statistics.median(ttft["one process (2 threads)"])
    ray_p50 = statistics.median(ttft["ray, 1 replica x 2 threads"])
    lines += [
        "",
        f"Goal ≥ 90% with multiplexing: **{'met' if hit >= 0.9 else 'not met'}**. A miss is a load: "
        "requests waiting for the same load count once.",
        "",
        "## Time to first token at 1 client, over HTTP (OpenAI streaming, a 2-token answer)",
        "",
        "| server | TTFT p50 (ms) | samples |",
        "|---|---|---|",
        f"| `loramux --http` (one process, 2 threads) | {one_p50:.1f} | {len(ttft['one process (2 threads)'])} |",
        f"| `loramux --http --replicas 1 --replica-threads 2` | {ray_p50:.1f} | "
        f"{len(ttft['ray, 1 replica x 2 threads'])} |",
        "",
        f"Added by Serve's proxy, the ingress hop and the replica hop: **{ray_p50 - one_p50:+.1f} ms**; goal ≤ 5 ms: "
        f"**{'met' if ray_p50 - one_p50 <= 5 else 'not met'}**.",
    ]
    return lines


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"clients": args.clients, "tokens": args.tokens}
    results["throughput"] = await throughput(args)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(8):
            write_lora(Path(tmp) / f"a{i}.gguf", seed=i)
        results["affinity"] = {
            "with": await affinity(args, Path(tmp), True),
            "without": await affinity(args, Path(tmp), False),
        }
    print(results["affinity"], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--affinity-requests", type=int, default=160)
    parser.add_argument("--ttft-requests", type=int, default=20)
    args = parser.parse_args()
    results = asyncio.run(run(args))
    results["ttft"] = ttft_over_http(args)
    argv = [a for a in __import__("sys").argv[1:]]
    (RESULTS / "ray.json").write_text(json.dumps(results, indent=1))
    save_report(RESULTS / "ray.md", report(results, argv))


if __name__ == "__main__":
    main()
