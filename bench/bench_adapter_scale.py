"""Adapters at scale, in process on the engine: many adapters on disk, a bounded resident set.

    .venv/bin/python -m bench.bench_adapter_scale      # writes bench/results/adapter_scale.md (+ .json)

1. A Zipf-like stream (s = 1.1) over N adapters on disk (half GGUF files, half PEFT folders; synthetic,
   rank 8 or 16 on attn_v / attn_output / ffn_down in every layer) at C concurrent calls, with 16
   resident (--max-loaded-adapters 16, loaded on first use, evicted least recently used) against the same
   calls with every adapter the stream names already resident. Rounds alternate which runs first; the
   ratio is taken per round.
2. First-use load latency (load_adapter round trip) of a GGUF file, of a PEFT folder converted cold,
   and of a PEFT folder from the conversion cache; p50 / p95.
3. Process RSS against the number of resident adapters.
4. 64 requests in flight at once (--max-sequences 64), each with its own adapter, against 64 on the
   base model.
Greedy, `ignore_eos`, short answers: the costs measured are the adapters', not the text's.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import anyio
import numpy as np

from bench.bench_batching import pct, prompts_for
from bench.report import median_interval, run_stamp, save_report
from engine import AdapterRef, EngineConfig, GenerateRequest, SamplingParams
from engine.llama import LlamaEngine
from tests.adapter_factory import write_lora
from tests.peft_factory import peft_config, peft_tensors, write_peft_folder

RESULTS = Path(__file__).parent / "results"
TARGETS = ("attn_v", "attn_output", "ffn_down")
PEFT_MODULES = ("self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj")


def make_adapters(root: Path, n: int) -> list[str]:
    """n adapters: even ones GGUF files, odd ones PEFT folders; ranks 8 and 16 alternate in pairs."""
    names = []
    for i in range(n):
        rank = 8 if (i // 2) % 2 == 0 else 16
        name = f"ad{i:04d}"
        if i % 2 == 0:
            write_lora(root / f"{name}.gguf", rank=rank, seed=i, strength=0.02, targets=TARGETS)
        else:
            tensors = peft_tensors(rank=rank, layers=tuple(range(30)), modules=PEFT_MODULES, seed=i, strength=0.02)
            write_peft_folder(root / name, config=peft_config(r=rank, lora_alpha=2 * rank), tensors=tensors)
        names.append(name)
    return names


def zipf_stream(names: list[str], calls: int, seed: int, s: float = 1.1) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (k + 1) ** s for k in range(len(names))]
    order = names[:]
    rng.shuffle(order)  # popularity independent of format and rank
    return rng.choices(order, weights=weights, k=calls)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def run_calls(engine: LlamaEngine, adapters: list[str | None], concurrency: int, max_tokens: int) -> float:
    """Tokens per second for all calls, `concurrency` at a time, in order."""
    prompts = prompts_for(len(adapters))
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    queue = list(enumerate(adapters))
    tokens = 0

    async def worker() -> None:
        nonlocal tokens
        while queue:
            i, name = queue.pop(0)
            refs = (AdapterRef(name=name),) if name else ()
            result = await engine.complete(GenerateRequest(prompt=prompts[i], sampling=sampling, adapters=refs))
            tokens += result.usage.completion_tokens

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return tokens / (time.perf_counter() - start)


def config(root: Path, cache: Path | None, **extra: object) -> EngineConfig:
    return EngineConfig(context_per_sequence=512, adapter_dirs=(root,), adapter_cache_dir=cache, **extra)


def source(root: Path, name: str) -> str:
    return name if (root / name).is_dir() else f"{name}.gguf"


async def with_budget(
    root: Path, cache: Path, stream: list[str], c: int, args: argparse.Namespace
) -> tuple[float, int]:
    """16 resident, the rest loaded on first use: (tok/s, first-use loads)."""
    async with LlamaEngine(config(root, cache, max_sequences=c, max_loaded_adapters=16)) as eng:
        tps = await run_calls(eng, stream, c, args.max_tokens)
        return tps, eng.stats().adapter_first_use_loads


async def all_resident(
    root: Path, cache: Path, stream: list[str], c: int, args: argparse.Namespace
) -> tuple[float, int]:
    async with LlamaEngine(config(root, cache, max_sequences=c)) as eng:
        for name in sorted(set(stream)):
            await eng.load_adapter(name, source(root, name))
        return await run_calls(eng, stream, c, args.max_tokens), 0


async def zipf_rounds(root: Path, cache: Path, names: list[str], args: argparse.Namespace) -> dict:
    rows = []
    for c in args.concurrency:
        ratios, bounded_tps, resident_tps, loads = [], [], [], []
        for r in range(args.rounds):
            stream = zipf_stream(names, args.calls, seed=r)
            order = (with_budget, all_resident) if r % 2 == 0 else (all_resident, with_budget)
            measured = {run: await run(root, cache, stream, c, args) for run in order}
            (b_tps, n_loads), (r_tps, _) = measured[with_budget], measured[all_resident]
            bounded_tps.append(b_tps)
            resident_tps.append(r_tps)
            ratios.append(b_tps / r_tps)
            loads.append(n_loads)
            print(
                f"zipf c={c} round {r}: {len(set(stream))} distinct, 16 resident {b_tps:.1f} tok/s, "
                f"all resident {r_tps:.1f} tok/s, ratio {b_tps / r_tps:.2f}, first-use loads {n_loads}",
                flush=True,
            )
        low, high = median_interval(ratios)
        rows.append({
            "concurrency": c, "calls": args.calls, "distinct": len(set(zipf_stream(names, args.calls, 0))),
            "bounded_tps": statistics.median(bounded_tps), "resident_tps": statistics.median(resident_tps),
            "ratio": statistics.median(ratios), "ci": [low, high], "first_use_loads": statistics.median(loads),
        })  # fmt: skip
    return {"zipf": rows}


async def load_latency(root: Path, names: list[str], args: argparse.Namespace) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="loramux-bench-cache-"))
    gguf = [n for n in names if not (root / n).is_dir()][: args.latency_loads]
    peft = [n for n in names if (root / n).is_dir()][: args.latency_loads]
    out: dict[str, list[float]] = {"gguf": [], "peft_cold": [], "peft_cached": []}
    async with LlamaEngine(config(root, cache, max_sequences=4)) as eng:
        for kind, batch in (("gguf", gguf), ("peft_cold", peft), ("peft_cached", peft)):
            for name in batch:
                start = time.perf_counter()
                await eng.load_adapter(name, source(root, name))
                out[kind].append((time.perf_counter() - start) * 1000)
                await eng.unload_adapter(name)
    shutil.rmtree(cache, ignore_errors=True)
    for kind, values in out.items():
        print(f"load {kind}: p50 {pct(values, 50):.1f} ms, p95 {pct(values, 95):.1f} ms", flush=True)
    return {"load_ms": {k: {"p50": pct(v, 50), "p95": pct(v, 95), "n": len(v)} for k, v in out.items()}}


async def rss_curve(root: Path, cache: Path, names: list[str]) -> dict:
    points = []
    async with LlamaEngine(config(root, cache, max_sequences=4)) as eng:
        loaded = 0
        for target in (t for t in (0, 16, 64, 256) if t <= len(names)):
            while loaded < target:
                name = names[loaded]
                await eng.load_adapter(name, source(root, name))
                loaded += 1
            points.append({"resident": target, "rss_mb": rss_mb()})
            print(f"rss with {target} resident: {points[-1]['rss_mb']:.0f} MB", flush=True)
    return {"rss": points}


async def distinct_in_flight(root: Path, cache: Path, names: list[str], args: argparse.Namespace) -> dict:
    ratios, adapters_tps, base_tps = [], [], []
    for r in range(args.rounds):
        cfg = config(root, cache, max_sequences=64)
        async with LlamaEngine(cfg) as eng:
            for name in names[:64]:
                await eng.load_adapter(name, source(root, name))

            async def adapters() -> float:
                return await run_calls(eng, list(names[:64]), 64, args.max_tokens)

            async def base() -> float:
                return await run_calls(eng, [None] * 64, 64, args.max_tokens)

            first, second = (adapters, base) if r % 2 == 0 else (base, adapters)
            a, b = await first(), await second()
            a_tps, b_tps = (a, b) if first is adapters else (b, a)
        adapters_tps.append(a_tps)
        base_tps.append(b_tps)
        ratios.append(a_tps / b_tps)
        print(f"64 in flight round {r}: distinct adapters {a_tps:.1f} tok/s, base {b_tps:.1f} tok/s, "
              f"ratio {a_tps / b_tps:.2f}", flush=True)  # fmt: skip
    low, high = median_interval(ratios)
    return {"distinct64": {"adapters_tps": statistics.median(adapters_tps), "base_tps": statistics.median(base_tps),
                           "ratio": statistics.median(ratios), "ci": [low, high]}}  # fmt: skip


def report(results: dict, args: argparse.Namespace) -> list[str]:
    goal = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    lines = [
        "# Adapters at scale",
        "",
        f"{run_stamp()}. `{' '.join(['python -m bench.bench_adapter_scale', *args.argv])}`.",
        "",
        f"{args.adapters} synthetic adapters on disk (half GGUF files, half PEFT folders converted on load; rank 8 "
        "or 16 on attn_v / attn_output / ffn_down in all 30 layers), the default model, 2 llama.cpp threads, "
        f"greedy, {args.max_tokens} tokens per call, `ignore_eos`. In process on the engine (no front end).",
        "",
        "## A Zipf-like stream, 16 resident vs all resident",
        "",
        f"{args.calls} calls, popularity ~ 1/rank^1.1; rounds alternate which configuration runs first.",
        "",
        "| concurrent calls | distinct adapters | 16 resident tok/s | all resident tok/s | ratio (95% CI) "
        "| first-use loads | goal ≥ 0.7× |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in results["zipf"]:
        lines.append(
            f"| {row['concurrency']} | {row['distinct']} | {row['bounded_tps']:.1f} | {row['resident_tps']:.1f} | "
            f"{row['ratio']:.2f}× ({row['ci'][0]:.2f}–{row['ci'][1]:.2f}) | {row['first_use_loads']:.0f} | "
            f"{goal(row['ratio'] >= 0.7)} |"
        )
    load = results["load_ms"]
    lines += [
        "",
        "## First-use load latency (load_adapter round trip, ms)",
        "",
        "| source | p50 | p95 | n |",
        "|---|---|---|---|",
        *(f"| {k} | {v['p50']:.1f} | {v['p95']:.1f} | {v['n']} |" for k, v in load.items()),
        "",
        f"Goal: p95 ≤ 150 ms from the conversion cache: {goal(load['peft_cached']['p95'] <= 150)}.",
        "",
        "## Memory against resident adapters",
        "",
        "| resident | RSS MB |",
        "|---|---|",
        *(f"| {p['resident']} | {p['rss_mb']:.0f} |" for p in results["rss"]),
        "",
        "## 64 distinct adapters in flight (--max-sequences 64) vs 64 on the base model",
        "",
    ]
    d = results["distinct64"]
    lines += [
        "| 64 distinct tok/s | 64 base tok/s | ratio (95% CI) | goal ≥ 0.8× |",
        "|---|---|---|---|",
        f"| {d['adapters_tps']:.1f} | {d['base_tps']:.1f} | {d['ratio']:.2f}× ({d['ci'][0]:.2f}–{d['ci'][1]:.2f}) | "
        f"{goal(d['ratio'] >= 0.8)} |",
    ]
    return lines


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="loramux-bench-adapters-"))
    cache = Path(tempfile.mkdtemp(prefix="loramux-bench-cache-"))
    try:
        start = time.perf_counter()
        names = make_adapters(root, args.adapters)
        print(f"{len(names)} adapters written in {time.perf_counter() - start:.0f} s", flush=True)
        results: dict = {}
        results.update(await load_latency(root, names, args))
        results.update(await rss_curve(root, cache, names))
        results.update(await zipf_rounds(root, cache, names, args))
        results.update(await distinct_in_flight(root, cache, names, args))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "adapter_scale.json").write_text(json.dumps(results, indent=2))
    save_report(RESULTS / "adapter_scale.md", report(results, args))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=160)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-loads", type=int, default=40)
    import sys

    args = parser.parse_args()
    args.argv = sys.argv[1:]
    np.seterr(all="ignore")
    resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE))
    anyio.run(main, args)
