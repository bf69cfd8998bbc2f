"""loramux's OpenAI endpoint against llama-server, side by side in one run: streaming clients, same
model, prompts, lengths and threads.

    bash scripts/build_llama_server.sh                    # once: llama-server from the same llama.cpp tree
    .venv/bin/python -m bench.bench_openai                # writes bench/results/openai_vs_llama_server.md
    .venv/bin/python -m bench.bench_openai --sampling default   # … openai_vs_llama_server_sampled.md

Both servers run at once and idle while the other works. Each round sends the same N concurrent
streaming /v1/completions requests (greedy, or with `--sampling default` loramux's default sampling named
in full with a seed each; ignore_eos, max_tokens tokens) to one, then the other,
alternating which goes first; a case runs --repeats rounds, or more where it has fewer clients than the
largest case, so that every case generates as many tokens. Reported per server: aggregate generated
tokens/s (all tokens, by the server's own `usage`, / wall time of the round) and time to first text
p50/p99 over every request of every round; the ratio is loramux / llama-server, taken per round then the
median; and how many requests got the same text from both (greedy: the same tokens).

The client is a small asyncio HTTP/1.1 reader (no client library): on 2 cores the client shares the
CPU with the server under test, so it should cost as little as possible, and the same for both.
The adapter round gives 8 clients 4 LoRA adapters (2 each): loramux selects them by `model`,
llama-server by its per-request `lora` field (adapters loaded with --lora-init-without-apply).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bench_adapters import TARGETS
from bench.bench_batching import pct
from bench.report import median_interval, run_stamp, save_report
from engine.default_model import default_model_path
from engine.request import SamplingParams
from tests.adapter_factory import write_lora
from tests.http_server import free_port, http_server

ROOT = Path(__file__).resolve().parent.parent


def _llama_server() -> Path:
    """Where scripts/build_llama_server.sh puts it: in the patched source tree loramux's wheel is built from."""
    if path := os.environ.get("LORAMUX_LLAMA_SERVER"):
        return Path(path)
    script = ROOT / "scripts/llama_source.sh"
    tree = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True).stdout.strip()
    return Path(tree) / "vendor/llama.cpp/build/bin/llama-server"


PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle stays upright while it moves.",
    "List some good habits for writing clean and readable Python code.",
    "Describe the water cycle to a ten year old.",
    "What are the main differences between a violin and a viola?",
    "Give advice to someone planting their first vegetable garden.",
    "Summarise the history of the printing press in a few paragraphs.",
    "Why do cats purr? Give several possible explanations.",
]
SLOTS = 16
CONTEXT = 2048
# What both servers are asked to sample with. greedy: the same text from both (checked per request).
# default: loramux's default sampling, named in full (llama-server's own defaults differ), a seed per request.
_DEFAULTS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n")
SAMPLING: dict[str, dict[str, Any]] = {
    "greedy": {"temperature": 0, "repeat_penalty": 1.0},
    "default": {name: SamplingParams.model_fields[name].default for name in _DEFAULTS},
}


@dataclass
class Round:
    tokens: int
    wall_s: float
    ttfts: list[float]
    texts: list[str]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


class Target:
    """One server: where its completions endpoint is, how a request names an adapter, what it samples with."""

    def __init__(self, label: str, port: int, model: str, adapter_field: Any, sampling: dict[str, Any]) -> None:
        self.label = label
        self.port = port
        self._model = model
        self._adapter_field = adapter_field
        self._sampling = sampling

    def body(self, prompt: str, max_tokens: int, adapter: int | None, seed: int) -> dict[str, Any]:
        body = {
            "prompt": prompt,
            "max_tokens": max_tokens,
            **self._sampling,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
            "model": self._model,
        }
        if self._sampling["temperature"]:
            body["seed"] = seed
        return body | self._adapter_field(adapter)


async def stream_once(port: int, body: dict[str, Any]) -> tuple[int, float, str]:
    """POST a streaming completion; return (tokens generated, seconds to the first text, the text).

    Tokens are the server's own count (`usage` in the last chunk): a token without text of its own (a special
    token, part of a character) sends no text chunk."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(payload), payload)
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"HTTP error: {head!r} {await reader.read()!r}")
    chunked = b"transfer-encoding: chunked" in head.lower()
    buffer = b""
    tokens, ttft, text = 0, 0.0, []
    while True:
        if chunked:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                break
            data = await reader.readexactly(size + 2)
            buffer += data[:-2]
        else:
            data = await reader.read(65536)
            if not data:
                break
            buffer += data
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            line = event.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                if not text:
                    ttft = time.perf_counter() - start
                text.append(chunk["choices"][0]["text"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    writer.close()
    if not tokens:
        raise RuntimeError(f"no usage in the stream of {body!r}")
    return tokens, ttft, "".join(text)


async def one_round(target: Target, n: int, max_tokens: int, adapters: int) -> Round:
    start = time.perf_counter()
    results = await asyncio.gather(
        *(
            stream_once(
                target.port,
                target.body(PROMPTS[i % len(PROMPTS)], max_tokens, i % adapters if adapters else None, seed=i),
            )
            for i in range(n)
        )
    )
    wall = time.perf_counter() - start
    return Round(sum(t for t, _, _ in results), wall, [f for _, f, _ in results], [x for _, _, x in results])


@contextmanager
def llama_server(binary: Path, port: int, threads: int, loras: list[Path]) -> Any:
    args = [str(binary), "-m", str(default_model_path()), "--host", "127.0.0.1", "--port", str(port)]
    args += ["-np", str(SLOTS), "-c", str(SLOTS * CONTEXT), "-t", str(threads), "-tb", str(threads)]
    args += ["--no-webui", "--no-cache-prompt", "-b", "256"]
    for lora in loras:
        args += ["--lora", str(lora)]
    if loras:
        args.append("--lora-init-without-apply")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if json.load(r).get("status") == "ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("llama-server did not start")
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        proc.wait()


def rounds(repeats: int, n: int, most: int) -> int:
    """Rounds of a case of n clients: `repeats`, or more, so that each case generates as many tokens as the
    one with the most clients. A 1-client round is short and its ratio noisy (single rounds range 0.84–1.13x here)."""
    return max(repeats, -(-repeats * most // n))


async def compare(
    targets_for: Callable[[int], list[Target]], cases: list[tuple[int, int]], repeats: int, max_tokens: int
) -> dict:
    results: dict[tuple[int, int], dict[str, list[Round]]] = {}
    most = max(n for n, _ in cases)
    for n, adapters in cases:
        targets = targets_for(adapters)
        for target in targets:  # warm up: page in weights (and adapters), build graphs
            await one_round(target, max(2, adapters), 8, adapters)
        runs: dict[str, list[Round]] = {t.label: [] for t in targets}
        for r in range(rounds(repeats, n, most)):
            for target in targets if r % 2 == 0 else list(reversed(targets)):
                runs[target.label].append(await one_round(target, n, max_tokens, adapters))
        results[(n, adapters)] = runs
        summary = {label: [round(x.tokens_per_s, 1) for x in rs] for label, rs in runs.items()}
        print(f"N={n} adapters={adapters}: {summary}", flush=True)
    return results


def same_text(ours: list[Round], theirs: list[Round]) -> str:
    """How many requests got exactly the same text from both servers (greedy: the same tokens)."""
    pairs = [(a, b) for x, y in zip(ours, theirs, strict=True) for a, b in zip(x.texts, y.texts, strict=True)]
    return f"{sum(a == b for a, b in pairs)}/{len(pairs)}"


def sampling_words(name: str) -> str:
    if name == "greedy":
        return "greedy"
    return (
        "sampled with loramux's defaults, named in every request to both ("
        + ", ".join(f"{k} {v}" for k, v in SAMPLING[name].items())
        + "; seed = the request's index in its round; the servers draw differently from the same seed, so no "
        "text is expected to be the same)"
    )


def report(results: dict, args: argparse.Namespace) -> list[str]:
    lines = [
        "# loramux OpenAI endpoint vs llama-server",
        "",
        f"{run_stamp()}, "
        f"`python -m bench.bench_openai --repeats {args.repeats} --max-tokens {args.max_tokens}"
        + (f" --sampling {args.sampling}" if args.sampling != "greedy" else "")
        + (f" --server-args='{args.server_args}'" if args.server_args else "")
        + "`. "
        f"Same model (SmolLM2-135M-Instruct Q4_1), {SLOTS} slots of {CONTEXT} tokens each, {args.threads} threads, "
        "llama.cpp from llama-cpp-python 0.3.36's sources with loramux's patch for both (GGML_LLAMAFILE=OFF; "
        "llama-server does not call the patch's functions), flash attention on in both (loramux's with the "
        "patch's batch-invariant kernel paths). Streaming "
        f"`/v1/completions`, {sampling_words(args.sampling)}, `ignore_eos` (end-of-generation tokens never "
        "sampled, in both), no prompt "
        "cache; tokens are each server's own `usage` count. Interleaved rounds, as many per case as make it "
        "generate the tokens of `--repeats` rounds of the most clients; ratio = median of per-round "
        "loramux / llama-server, with its 95% bootstrap confidence interval (where it holds 1.00x the rounds "
        "cannot tell the servers apart) and the lowest and highest round. Rounds without "
        "adapters go to a llama-server started without "
        "`--lora` (with adapters loaded, it runs all of them in every request, at scale 0 for the unlisted "
        "ones); the adapter round to one started with the 4 adapters and `--lora-init-without-apply`.",
        "",
        "| clients | adapters | rounds | loramux tok/s | llama-server tok/s | ratio | loramux TTFT p50 / p99 (ms) "
        "| llama-server TTFT p50 / p99 (ms) | same text |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (n, adapters), runs in results.items():
        ours, theirs = runs["loramux"], runs["llama-server"]
        ratios = [a.tokens_per_s / b.tokens_per_s for a, b in zip(ours, theirs, strict=True)]
        ratio = statistics.median(ratios)
        low, high = median_interval(ratios)

        def tps(rs: list[Round]) -> str:
            return f"{statistics.median(r.tokens_per_s for r in rs):.1f}"

        def ttft(rs: list[Round]) -> str:
            all_ttfts = [t for r in rs for t in r.ttfts]
            return f"{pct(all_ttfts, 50) * 1000:.0f} / {pct(all_ttfts, 99) * 1000:.0f}"

        lines.append(
            f"| {n} | {adapters or '-'} | {len(ours)} | {tps(ours)} | {tps(theirs)} | **{ratio:.3f}x** "
            f"(CI {low:.3f}–{high:.3f}; rounds {min(ratios):.2f}–{max(ratios):.2f}) | {ttft(ours)} | "
            f"{ttft(theirs)} | {same_text(ours, theirs)} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="1,8,16", help="concurrent clients without adapters")
    p.add_argument("--adapter-clients", type=int, default=8, help="clients of the adapter round (0 = skip)")
    p.add_argument("--adapters", type=int, default=4, help="LoRA adapters the adapter round spreads over")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--server-args", default="", help="extra loramux options, e.g. '--group-steps 16'")
    p.add_argument("--sampling", choices=sorted(SAMPLING), default="greedy", help="what both servers sample with")
    p.add_argument("--out", type=Path, help="default: bench/results/openai_vs_llama_server[_sampled].md")
    args = p.parse_args()
    suffix = "" if args.sampling == "greedy" else "_sampled"
    args.out = args.out or ROOT / f"bench/results/openai_vs_llama_server{suffix}.md"
    binary = _llama_server()
    if not binary.is_file():
        raise SystemExit(
            f"no llama-server at {binary}: run scripts/build_llama_server.sh (or set LORAMUX_LLAMA_SERVER)"
        )
    cases = [(int(n), 0) for n in args.levels.split(",")]
    if args.adapter_clients:
        cases.append((args.adapter_clients, args.adapters))
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        loras = [Path(tmp) / f"lora{i}.gguf" for i in range(args.adapters)]
        for i, path in enumerate(loras):
            write_lora(path, rank=16, alpha=32, seed=i, strength=0.02, targets=TARGETS)
        ours = [f"--adapter=a{i}={path}" for i, path in enumerate(loras)]
        url = stack.enter_context(
            http_server(
                "--max-sequences",
                str(SLOTS),
                "--context",
                str(CONTEXT),
                "--threads",
                str(args.threads),
                *ours,
                *args.server_args.split(),
            )
        )
        # llama-server runs every loaded adapter in every request's graph (unlisted ones at scale 0):
        # with 4 loaded, base requests measured half as fast. So base rounds go to one without --lora.
        plain_port, lora_port = free_port(), free_port()
        stack.enter_context(llama_server(binary, plain_port, args.threads, []))
        stack.enter_context(llama_server(binary, lora_port, args.threads, loras))
        base = json.load(urllib.request.urlopen(url + "/v1/models"))["data"][0]["id"]  # loramux checks `model`
        sampling = SAMPLING[args.sampling]
        ours_target = Target(
            "loramux", int(url.rsplit(":", 1)[1]), base, lambda a: {} if a is None else {"model": f"a{a}"}, sampling
        )

        def targets_for(adapters: int) -> list[Target]:
            port = lora_port if adapters else plain_port
            lora = Target(
                "llama-server",
                port,
                base,
                lambda a: {} if a is None else {"lora": [{"id": a, "scale": 1.0}]},
                sampling,
            )
            return [ours_target, lora]

        results = asyncio.run(compare(targets_for, cases, args.repeats, args.max_tokens))
    save_report(args.out, report(results, args))


if __name__ == "__main__":
    main()
