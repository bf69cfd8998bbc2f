"""Adapter mixes at 8 concurrent MCP calls, mixed in one decode vs taking turns; load_adapter latency.

    .venv/bin/python -m bench.bench_adapters            # writes bench/results/adapters.md

Adapters are synthetic, shaped like the demo adapters (rank 16 on v/o/gate/up/down in all 30 layers).
Two servers run side by side: the default (adapter sets share decode steps, loramux's llama.cpp patch)
and `--no-mix-adapters` (one adapter set per step, sets take turns: how stock llama.cpp and
llama-server work). Mixes (8 calls each, 128 tokens, greedy, ignore_eos): all base, all one adapter,
4 adapters x 2, 8 distinct; per repeat every mix runs on both servers, alternating which goes first,
and the ratio is taken within the repeat. Then `load_adapter` round trips (load a file as "probe",
unload it, repeat) on the default server while 0, 1, 4 or 8 streaming calls across adapters run;
every stream must finish.
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
from bench.report import run_stamp
from tests.adapter_factory import write_lora
from tests.http_server import http_server

MIXES = {
    "all base": [None] * 8,
    "all one adapter": ["a0"] * 8,
    "4 adapters uniform": [f"a{i % 4}" for i in range(8)],
    "8 distinct": [f"a{i}" for i in range(8)],
}
TARGETS = ("attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


# pure greedy, the benchmarks' default; DEFAULT_SAMPLING: the tool's own defaults (temperature 0.7, top-k/p,
# min-p, repeat penalty 1.1), which run llama.cpp's sampler chain instead of an argmax
GREEDY = {"temperature": 0, "repeat_penalty": 1.0, "ignore_eos": True}
DEFAULT_SAMPLING = {"ignore_eos": True}


async def call(
    client: Client, prompt: str, adapter: str | None, max_tokens: int, sampling: dict[str, object] = GREEDY
) -> tuple[int, float]:
    start = time.perf_counter()
    first: list[float] = []

    async def on_progress(*_: object) -> None:
        if not first:
            first.append(time.perf_counter() - start)

    args: dict[str, object] = {"prompt": prompt, "max_tokens": max_tokens, **sampling}
    if adapter:
        args["adapter"] = adapter
    r = await client.call_tool("llm_inference", args, read_timeout_seconds=600, progress_callback=on_progress)
    if r.is_error:
        raise RuntimeError(r.content[0].text)  # type: ignore[union-attr]
    return r.structured_content["usage"]["completion_tokens"], first[0]  # type: ignore[index]


async def run_mix(
    clients: list[Client], adapters: list[str | None], max_tokens: int, sampling: dict[str, object] = GREEDY
) -> tuple[float, list[float]]:
    out: list[tuple[int, float]] = []
    prompts = prompts_for(len(adapters))

    async def one(i: int) -> None:
        out.append(await call(clients[i], prompts[i], adapters[i], max_tokens, sampling))

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


SERVERS = ("mixed", "turns")  # adapter sets in one decode; one set per decode (--no-mix-adapters)


async def bench(urls: dict[str, str], repeats: int, max_tokens: int, stream_tokens: int) -> dict:
    async with AsyncExitStack() as stack:
        clients = {s: [await stack.enter_async_context(Client(urls[s])) for _ in range(8)] for s in SERVERS}
        for s in SERVERS:
            for i in range(8):
                r = await clients[s][0].call_tool("load_adapter", {"name": f"a{i}", "path": f"lora{i}.gguf"})
                assert not r.is_error, r.content
            await call(clients[s][0], "warm up", None, 8)
        runs = {s: {m: {"tps": [], "ttft": []} for m in MIXES} for s in SERVERS}
        ratios: dict[str, list[float]] = {m: [] for m in MIXES}
        for rep in range(repeats):
            for mix, adapters in MIXES.items():
                tps = {}
                for s in SERVERS if rep % 2 == 0 else SERVERS[::-1]:
                    tps[s], ttft = await run_mix(clients[s], adapters, max_tokens)
                    runs[s][mix]["tps"].append(tps[s])
                    runs[s][mix]["ttft"] += ttft
                ratios[mix].append(tps["mixed"] / tps["turns"])
                print(f"{mix}: mixed {tps['mixed']:.1f}, turns {tps['turns']:.1f} tok/s", flush=True)
        mixes = {
            m: {
                s: dict(
                    tps=statistics.median(runs[s][m]["tps"]),
                    ttft_p50_ms=pct(runs[s][m]["ttft"], 50) * 1000,
                    ttft_p99_ms=pct(runs[s][m]["ttft"], 99) * 1000,
                    runs=runs[s][m]["tps"],
                )
                for s in SERVERS
            }
            | {"ratio": statistics.median(ratios[m]), "ratio_range": [min(ratios[m]), max(ratios[m])]}
            for m in MIXES
        }
        loads = []
        for streams in (0, 1, 4, 8):
            loads.append(await load_latency(urls["mixed"], clients["mixed"], streams, stream_tokens))
            print(loads[-1], flush=True)
        return {"mixes": mixes, "loads": loads}


def report(results: dict, args: argparse.Namespace) -> str:
    lines = [
        "# Adapter benchmark: mixes of LoRA adapters at 8 concurrent MCP calls, and hot loads under load",
        "",
        f"{run_stamp()}. 8 concurrent `llm_inference` calls over MCP HTTP, {args.max_tokens} tokens each (greedy, "
        f"no repeat penalty, ignore_eos), {args.repeats} repeats. Synthetic rank-16 adapters on v/o/gate/up/down "
        "of all 30 layers (the demo adapters' shape). Two servers side by side: **mixed** (default: adapter sets "
        "share decode steps) and **turns** (`--no-mix-adapters`: one adapter set per decode, sets take turns, "
        "as in stock llama.cpp); every mix runs on both in each repeat, alternating which goes first; ratio = "
        "median of per-repeat mixed / turns. Command: `.venv/bin/python -m bench.bench_adapters`.",
        "",
        "| mix | mixed tok/s | turns tok/s | mixed / turns | mixed TTFT p50 / p99 ms | turns TTFT p50 / p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for mix, r in results["mixes"].items():
        m, t = r["mixed"], r["turns"]
        lo, hi = r["ratio_range"]
        lines.append(
            f"| {mix} | {m['tps']:.1f} | {t['tps']:.1f} | **{r['ratio']:.2f}x** ({lo:.2f}–{hi:.2f}) "
            f"| {m['ttft_p50_ms']:.0f} / {m['ttft_p99_ms']:.0f} | {t['ttft_p50_ms']:.0f} / {t['ttft_p99_ms']:.0f} |"
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
        common = ("--adapter-dir", tmp, "--max-sequences", "8")
        with http_server(*common) as mixed, http_server(*common, "--no-mix-adapters") as turns:
            urls = {"mixed": mixed + "/mcp", "turns": turns + "/mcp"}
            results = anyio.run(bench, urls, args.repeats, args.max_tokens, args.stream_tokens)
    text = report(results, args)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()
