"""Adapter mixes at 8 concurrent MCP calls, and load_adapter latency while streams run.

    .venv/bin/python -m bench.bench_adapters            # writes bench/results/adapters.md

Adapters are synthetic, shaped like the demo adapters (rank 16 on v/o/gate/up/down in all 30 layers).
Mixes (8 calls each, 128 tokens, greedy, ignore_eos): all base, all one adapter, 4 adapters x 2,
8 distinct; run interleaved per repeat. Then `load_adapter` round trips (load a file as "probe",
unload it, repeat) while 0, 1, 4 or 8 streaming calls across adapters run; every stream must finish.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from mcp import Client

from bench.bench_batching import pct, prompts_for
from tests.adapter_factory import write_lora
from tests.http_server import http_server

MIXES = {
    "all base": [None] * 8,
    "all one adapter": ["a0"] * 8,
    "4 adapters uniform": [f"a{i % 4}" for i in range(8)],
    "8 distinct": [f"a{i}" for i in range(8)],
}
TARGETS = ("attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


async def call(client: Client, prompt: str, adapter: str | None, max_tokens: int) -> tuple[int, float]:
    start = time.perf_counter()
    first: list[float] = []

    async def on_progress(*_: object) -> None:
        if not first:
            first.append(time.perf_counter() - start)

    args = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "repeat_penalty": 1.0, "ignore_eos": True}
    if adapter:
        args["adapter"] = adapter
    r = await client.call_tool("llm_inference", args, read_timeout_seconds=600, progress_callback=on_progress)
    if r.is_error:
        raise RuntimeError(r.content[0].text)  # type: ignore[union-attr]
    return r.structured_content["usage"]["completion_tokens"], first[0]  # type: ignore[index]


async def run_mix(clients: list[Client], adapters: list[str | None], max_tokens: int) -> tuple[float, list[float]]:
    out: list[tuple[int, float]] = []
    prompts = prompts_for(len(adapters))

    async def one(i: int) -> None:
        out.append(await call(clients[i], prompts[i], adapters[i], max_tokens))

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(len(adapters)):
            tg.start_soon(one, i)
    return sum(n for n, _ in out) / (time.perf_counter() - start), [t for _, t in out]


async def load_latency(url: str, clients: list[Client], streams: int, stream_tokens: int) -> dict:
    latencies: list[float] = []
    failures: list[str] = []
    async with Client(url) as admin:
        done = anyio.Event()

        async def stream(i: int) -> None:
            try:
                await call(clients[i], prompts_for(8)[i], f"a{i % 4}", stream_tokens)
            except Exception as exc:  # counted, not raised: the bench reports failed requests
                failures.append(repr(exc))

        async def prober() -> None:
            n = 0
            while not done.is_set() or len(latencies) < 20:
                t = time.perf_counter()
                r = await admin.call_tool("load_adapter", {"name": "probe", "path": f"lora{n % 8}.gguf"})
                latencies.append(time.perf_counter() - t)
                assert not r.is_error, r.content
                await admin.call_tool("unload_adapter", {"name": "probe"})
                n += 1
                if streams == 0 and len(latencies) >= 40:
                    break

        async with anyio.create_task_group() as tg:
            tg.start_soon(prober)
            async with anyio.create_task_group() as st:
                for i in range(streams):
                    st.start_soon(stream, i)
            done.set()
    return dict(
        streams=streams,
        loads=len(latencies),
        p50_ms=pct(latencies, 50) * 1000,
        p95_ms=pct(latencies, 95) * 1000,
        failed_requests=len(failures),
    )


async def bench(url: str, repeats: int, max_tokens: int, stream_tokens: int) -> dict:
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client(url)) for _ in range(8)]
        for i in range(8):
            r = await clients[0].call_tool("load_adapter", {"name": f"a{i}", "path": f"lora{i}.gguf"})
            assert not r.is_error, r.content
        await call(clients[0], "warm up", None, 8)
        runs: dict[str, dict[str, list[float]]] = {m: {"tps": [], "ttft": []} for m in MIXES}
        for _ in range(repeats):
            for mix, adapters in MIXES.items():
                tps, ttft = await run_mix(clients, adapters, max_tokens)
                runs[mix]["tps"].append(tps)
                runs[mix]["ttft"] += ttft
                print(f"{mix}: {tps:.1f} tok/s", flush=True)
        mixes = {
            m: dict(
                tps=statistics.median(r["tps"]),
                ttft_p50_ms=pct(r["ttft"], 50) * 1000,
                ttft_p99_ms=pct(r["ttft"], 99) * 1000,
                runs=r["tps"],
            )
            for m, r in runs.items()
        }
        loads = []
        for streams in (0, 1, 4, 8):
            loads.append(await load_latency(url, clients, streams, stream_tokens))
            print(loads[-1], flush=True)
        return {"mixes": mixes, "loads": loads}


def report(results: dict, args: argparse.Namespace) -> str:
    one = results["mixes"]["all one adapter"]
    lines = [
        "# Adapter benchmark: mixes of LoRA adapters at 8 concurrent MCP calls, and hot loads under load",
        "",
        f"8 concurrent `llm_inference` calls over MCP HTTP, {args.max_tokens} tokens each (greedy, no repeat "
        f"penalty, ignore_eos), median of {args.repeats} repeats with the mixes interleaved. Synthetic rank-16 "
        "adapters on v/o/gate/up/down of all 30 layers (the demo adapters' shape). "
        "Command: `.venv/bin/python -m bench.bench_adapters`.",
        "",
        "| mix | aggregate tok/s | vs all one adapter | TTFT p50 ms | TTFT p99 ms | TTFT p99 vs all one adapter |",
        "|---|---|---|---|---|---|",
    ]
    for mix, r in results["mixes"].items():
        lines.append(
            f"| {mix} | {r['tps']:.1f} | {r['tps'] / one['tps']:.2f}x | {r['ttft_p50_ms']:.0f} "
            f"| {r['ttft_p99_ms']:.0f} | {r['ttft_p99_ms'] / one['ttft_p99_ms']:.2f}x |"
        )
    lines += [
        "",
        "`load_adapter` round trip over MCP (load one of the adapter files under a new name, then unload it), "
        f"while streaming calls of {args.stream_tokens} tokens across 4 adapters run:",
        "",
        "| concurrent streams | loads measured | p50 ms | p95 ms | failed requests |",
        "|---|---|---|---|---|",
    ]
    for r in results["loads"]:
        lines.append(
            f"| {r['streams']} | {r['loads']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['failed_requests']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--stream-tokens", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("bench/results/adapters.md"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(8):
            write_lora(Path(tmp) / f"lora{i}.gguf", rank=16, alpha=32, seed=i, strength=0.02, targets=TARGETS)
        with http_server("--adapter-dir", tmp, "--max-sequences", "8") as base:
            results = anyio.run(bench, base + "/mcp", args.repeats, args.max_tokens, args.stream_tokens)
    text = report(results, args)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()
