"""loramux's OpenAI endpoint against llama-server, side by side in one run: streaming clients, same
model, prompts, lengths and threads.

    bash scripts/build_llama_server.sh                    # once: stock llama-server, same llama.cpp release
    bash scripts/build_llama_server.sh --patched          # once, optional: from loramux's patched tree
    .venv/bin/python -m bench.bench_openai                # writes bench/results/openai_vs_llama_server.md
    .venv/bin/python -m bench.bench_openai --sampling default   # … openai_vs_llama_server_sampled.md
    .venv/bin/python -m bench.bench_openai --patched      # adds the patched llama-server as a column

The anchor is stock llama-server: unpatched sources of the release loramux binds, llama.cpp's default
build (llamafile's sgemm on, flash attention auto), what people install. `--patched` adds one built from
loramux's patched tree with loramux's flags (GGML_LLAMAFILE=OFF), which isolates what the build costs.

Both servers run at once and idle while the other works. Each round sends the same N concurrent
streaming /v1/completions requests (greedy, or with `--sampling default` loramux's default sampling named
in full with a seed each; ignore_eos, max_tokens tokens) to one, then the other,
alternating which goes first; a case runs --repeats rounds, or more where it has fewer clients than the
largest case, so that every case generates as many tokens. Reported per server: aggregate generated
tokens/s (all tokens, by the server's own `usage`, / wall time of the round) and time to first text
p50/p99 over every request of every round; the ratio is loramux / llama-server, taken per round then the
median; and how many requests got the same text from both (greedy: the same tokens).

loramux's MCP route (llm_inference, `raw: true`, over streamable HTTP) runs beside its OpenAI route in the
same rounds (`--no-mcp` leaves it out), so the MCP front end's own cost is a number.

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
from collections.abc import AsyncIterator, Callable
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


def _llama_server(kind: str) -> Path:
    """Where scripts/build_llama_server.sh puts it: in the source tree scripts/llama_source.sh names (the
    unpatched one for stock, the one loramux's wheel is built from for patched).
    LORAMUX_LLAMA_SERVER / LORAMUX_LLAMA_SERVER_PATCHED override."""
    if path := os.environ.get("LORAMUX_LLAMA_SERVER" + ("_PATCHED" if kind == "patched" else "")):
        return Path(path)
    source = ["bash", str(ROOT / "scripts/llama_source.sh"), *([] if kind == "patched" else ["--stock"])]
    tree = Path(subprocess.run(source, capture_output=True, text=True, check=True).stdout.strip())
    return tree / "vendor/llama.cpp/build/bin/llama-server"


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


@dataclass
class Reply:
    tokens: int  # generated, by the server's own count
    prompt_tokens: int
    ttft: float  # seconds from sending to the first text
    text: str


class Target:
    """One server's OpenAI completions endpoint: how a request names an adapter, what it samples with."""

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

    async def stream(self, prompt: str, max_tokens: int, adapter: int | None, seed: int) -> Reply:
        """A streaming completion. Tokens are the server's own count (`usage` in the last chunk): a token
        without text of its own (a special token, part of a character) sends no text chunk."""
        start = time.perf_counter()
        ttft, text, usage = 0.0, [], {}
        async for chunk in sse_events(self.port, "/v1/completions", self.body(prompt, max_tokens, adapter, seed)):
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                if not text:
                    ttft = time.perf_counter() - start
                text.append(chunk["choices"][0]["text"])
            usage = chunk.get("usage") or usage
        if not usage.get("completion_tokens"):
            raise RuntimeError(f"no usage in the stream of {prompt!r}")
        return Reply(usage["completion_tokens"], usage["prompt_tokens"], ttft, "".join(text))


class McpTarget:
    """loramux's MCP route: llm_inference (raw prompt, the same sampling) over streamable HTTP, one session;
    the text comes in progress notifications, the counts in the result."""

    def __init__(self, label: str, port: int, sampling: dict[str, Any]) -> None:
        self.label = label
        self.port = port
        self._sampling = sampling
        self._headers: dict[str, str] = {}
        self._ids = iter(range(1, 1 << 30))

    async def open(self) -> None:
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench"}},
        }
        headers: dict[str, str] = {}
        async for _ in sse_events(self.port, "/mcp", init, response_headers=headers):
            pass
        self._headers = {"mcp-session-id": headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        async for _ in sse_events(self.port, "/mcp", note, self._headers):
            pass

    async def stream(self, prompt: str, max_tokens: int, adapter: int | None, seed: int) -> Reply:
        arguments = {"prompt": prompt, "raw": True, "max_tokens": max_tokens, "ignore_eos": True, **self._sampling}
        if self._sampling["temperature"]:
            arguments["seed"] = seed
        if adapter is not None:
            arguments["adapter"] = f"a{adapter}"
        call_id = next(self._ids)
        call = {
            "jsonrpc": "2.0",
            "id": call_id,
            "method": "tools/call",
            "params": {"name": "llm_inference", "arguments": arguments, "_meta": {"progressToken": call_id}},
        }
        start = time.perf_counter()
        ttft, text, result = 0.0, [], None
        async for message in sse_events(self.port, "/mcp", call, self._headers):
            params = message.get("params") or {}
            if message.get("method") == "notifications/progress" and params.get("progress", 0) >= 1:
                if not text and params.get("message"):
                    ttft = time.perf_counter() - start
                text.append(params.get("message", ""))
            elif message.get("id") == call_id:
                result = message
        if result is None or "result" not in result or result["result"].get("isError"):
            raise RuntimeError(f"MCP call failed: {result!r}")
        answer = json.loads(result["result"]["content"][0]["text"])
        usage = answer["usage"]
        return Reply(usage["completion_tokens"], usage["prompt_tokens"], ttft, answer["text"])


async def sse_events(
    port: int,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    response_headers: dict[str, str] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """POST JSON; yield each `data:` event's JSON (or the whole body's, when the answer is plain JSON).

    A small asyncio HTTP/1.1 client (no client library): on 2 cores the client shares the CPU with the
    server under test, so it should cost as little as possible, and the same for every server."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()).encode()
    writer.write(
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Accept: application/json, text/event-stream\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (path.encode(), extra, len(payload), payload)
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status and b" 202 " not in status:
        raise RuntimeError(f"HTTP error: {head!r} {await reader.read()!r}")
    fields = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            fields[name.strip().lower()] = value.strip()
    if response_headers is not None:
        response_headers.update(fields)
    chunked = fields.get("transfer-encoding", "").lower() == "chunked"
    is_sse = fields.get("content-type", "").startswith("text/event-stream")
    buffer = b""
    try:
        while True:
            if chunked:
                size = int((await reader.readline()).strip() or b"0", 16)
                if size == 0:
                    break
                buffer += (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
                buffer += data
            if not is_sse:
                continue
            *events, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if line.startswith(b"data:") and line[5:].strip() not in (b"", b"[DONE]"):
                        yield json.loads(line[5:])
        if not is_sse and buffer.strip():
            yield json.loads(buffer)
    finally:
        writer.close()


Server = Target | McpTarget
ROUTES = {"OpenAI": "loramux", "MCP": "loramux MCP"}  # loramux's routes → their targets' labels


async def one_round(target: Server, n: int, max_tokens: int, adapters: int) -> Round:
    start = time.perf_counter()
    results = await asyncio.gather(
        *(
            target.stream(PROMPTS[i % len(PROMPTS)], max_tokens, i % adapters if adapters else None, seed=i)
            for i in range(n)
        )
    )
    wall = time.perf_counter() - start
    return Round(sum(r.tokens for r in results), wall, [r.ttft for r in results], [r.text for r in results])


# an agent's long prompt: a system prompt of rules, then a question (~1,400 tokens)
_RULES = " ".join(f"Rule {i}: keep answers short, polite, factual and about the user's topic." for i in range(84))


@dataclass
class Prefill:
    seconds: dict[str, list[float]]  # per target, per round
    prompt_tokens: int


async def prefill_rounds(targets: list[Server], repeats: int) -> Prefill:
    """Seconds for a long new prompt and one token out, per target per round (interleaved)."""
    times: dict[str, list[float]] = {t.label: [] for t in targets}
    prompt_tokens = 0
    for r in range(-1, repeats):  # round -1 warms up
        for target in targets if r % 2 == 0 else list(reversed(targets)):
            prompt = f"Request {r}-{target.label}. {_RULES}\nQuestion: which rule comes first?"
            start = time.perf_counter()
            prompt_tokens = (await target.stream(prompt, 1, None, seed=0)).prompt_tokens
            if r >= 0:
                times[target.label].append(time.perf_counter() - start)
    return Prefill(times, prompt_tokens)


@contextmanager
def llama_server(binary: Path, port: int, threads: int, loras: list[Path]) -> Any:
    args = [str(binary), "-m", str(default_model_path()), "--host", "127.0.0.1", "--port", str(port)]
    args += ["-np", str(SLOTS), "-c", str(SLOTS * CONTEXT), "-t", str(threads), "-tb", str(threads)]
    args += ["--no-webui", "--no-cache-prompt", "-b", "256"]
    # --no-repack: no CPU "extra" buffer types, as in loramux (runner.py). Neutral for this model elsewhere
    # (x86 and ARM repack no Q4_1); on a CPU with AMX a default (-march=native) build compiles AMX kernels
    # in, and llama-server crashed in its first decode without it (SIGSEGV in ggml_backend_amx_mul_mat).
    args.append("--no-repack")
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
    targets_for: Callable[[int], list[Server]], cases: list[tuple[int, int]], repeats: int, max_tokens: int
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


def report(results: dict, prefill: Prefill | None, args: argparse.Namespace) -> list[str]:
    servers = [label for label in next(iter(results.values())) if label not in ROUTES.values()]
    builds = {
        "stock": "stock (unpatched, llama.cpp's default build: llamafile's sgemm on, flash attention auto)",
        "patched": "patched (loramux's tree and flags: GGML_LLAMAFILE=OFF; it does not call the patch's functions)",
    }
    lines = [
        "# loramux OpenAI endpoint vs llama-server",
        "",
        f"{run_stamp()}, "
        f"`python -m bench.bench_openai --repeats {args.repeats} --max-tokens {args.max_tokens}"
        + (f" --sampling {args.sampling}" if args.sampling != "greedy" else "")
        + (" --patched" if args.patched else "")
        + (f" --server-args='{args.server_args}'" if args.server_args else "")
        + "`. "
        f"Same model (SmolLM2-135M-Instruct Q4_1), {SLOTS} slots of {CONTEXT} tokens each, {args.threads} threads, "
        "the llama.cpp release of llama-cpp-python 0.3.36. llama-server builds: "
        + "; ".join(f"**{label}** = {builds[label]}" for label in servers)
        + "; each run with `--no-repack` (no AMX or repacked weights; loramux runs without them too). loramux: "
        "its wheel (patched, GGML_LLAMAFILE=OFF, flash attention through the patch's batch-invariant kernel paths"
        + (", several greedy steps per call into llama.cpp" if "--greedy-steps-ms 0" not in args.server_args else "")
        + "). Streaming "
        f"`/v1/completions`, {sampling_words(args.sampling)}, `ignore_eos` (end-of-generation tokens never "
        "sampled, in both), no prompt "
        "cache; tokens are each server's own `usage` count. Interleaved rounds, as many per case as make it "
        "generate the tokens of `--repeats` rounds of the most clients; ratio = median of per-round "
        "loramux / llama-server, with its 95% bootstrap confidence interval (where it holds 1.00x the rounds "
        "cannot tell the servers apart) and the lowest and highest round. Rounds without "
        "adapters go to a llama-server started without "
        "`--lora` (with adapters loaded, it runs all of them in every request, at scale 0 for the unlisted "
        "ones); the adapter round to one started with the 4 adapters and `--lora-init-without-apply`. "
        "loramux's MCP route: `llm_inference` with `raw: true` (no chat template, as a completion) and the same "
        "sampling over streamable HTTP, one session, text from its progress notifications (the first as soon as "
        "it exists, then at most every 100 ms), tokens from the result's `usage`; its ratios are against the "
        "same llama-server rounds.",
        "",
        "| clients | adapters | loramux route | rounds | loramux tok/s | "
        + " | ".join(f"{x} tok/s | loramux / {x}" for x in servers)
        + " | TTFT p50 / p99 (ms): loramux | "
        + " | ".join(servers)
        + " | same text as stock |",
        "|---|---|---|---|---|" + "---|---|" * len(servers) + "---|" + "---|" * len(servers) + "---|",
    ]

    def tps(rs: list[Round]) -> str:
        return f"{statistics.median(r.tokens_per_s for r in rs):.1f}"

    def ttft(rs: list[Round]) -> str:
        all_ttfts = [t for r in rs for t in r.ttfts]
        return f"{pct(all_ttfts, 50) * 1000:.0f} / {pct(all_ttfts, 99) * 1000:.0f}"

    for (n, adapters), runs in results.items():
        for route, label in ROUTES.items():
            if label not in runs:
                continue
            ours = runs[label]
            cells = []
            for server in servers:
                ratios = [a.tokens_per_s / b.tokens_per_s for a, b in zip(ours, runs[server], strict=True)]
                low, high = median_interval(ratios)
                cells.append(
                    f"{tps(runs[server])} | **{statistics.median(ratios):.3f}x** (CI {low:.3f}–{high:.3f}; "
                    f"rounds {min(ratios):.2f}–{max(ratios):.2f})"
                )
            lines.append(
                f"| {n} | {adapters or '-'} | {route} | {len(ours)} | {tps(ours)} | "
                + " | ".join(cells)
                + f" | {ttft(ours)} | "
                + " | ".join(ttft(runs[server]) for server in servers)
                + f" | {same_text(ours, runs[servers[0]])} |"
            )
    return lines + (prefill_report(prefill) if prefill else [])


def prefill_report(prefill: Prefill) -> list[str]:
    lines = [
        "",
        f"## Prefill: an agent's long prompt ({prefill.prompt_tokens} tokens), one token out",
        "",
        "A new prompt each round (its number first, so no cached prefix helps either server), greedy, "
        "`max_tokens` 1, one client; time = request sent to stream end; prompt tokens/s = the server's "
        "`usage.prompt_tokens` / time. Interleaved; ratio = median of per-round loramux / llama-server "
        "prompt tokens/s.",
        "",
        "| server | time p50 (ms) | prompt tokens/s | loramux / server |",
        "|---|---|---|---|",
    ]
    ours = prefill.seconds["loramux"]
    for label, times in prefill.seconds.items():
        rate = prefill.prompt_tokens / statistics.median(times)
        if label == "loramux":
            ratio = "-"
        else:
            ratios = [b / a for a, b in zip(ours, times, strict=True)]
            low, high = median_interval(ratios)
            ratio = f"**{statistics.median(ratios):.3f}x** (CI {low:.3f}–{high:.3f})"
        lines.append(f"| {label} | {statistics.median(times) * 1000:.0f} | {rate:.0f} | {ratio} |")
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
    p.add_argument("--no-mcp", dest="mcp", action="store_false", help="leave out loramux's MCP route")
    p.add_argument("--patched", action="store_true", help="also llama-server from loramux's patched tree")
    p.add_argument("--prefill-repeats", type=int, default=5, help="rounds of the long-prompt case (0 = skip)")
    p.add_argument("--out", type=Path, help="default: bench/results/openai_vs_llama_server[_sampled].md")
    args = p.parse_args()
    suffix = "" if args.sampling == "greedy" else "_sampled"
    args.out = args.out or ROOT / f"bench/results/openai_vs_llama_server{suffix}.md"
    binaries = {"stock": _llama_server("stock")} | ({"patched": _llama_server("patched")} if args.patched else {})
    for kind, binary in binaries.items():
        if not binary.is_file():
            flag = " --patched" if kind == "patched" else ""
            raise SystemExit(f"no {kind} llama-server at {binary}: run scripts/build_llama_server.sh{flag}")
    cases = [(int(n), 0) for n in args.levels.split(",")]
    if args.adapter_clients:
        cases.append((args.adapter_clients, args.adapters))
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        loras = [Path(tmp) / f"lora{i}.gguf" for i in range(args.adapters)]
        for i, path in enumerate(loras):
            write_lora(path, rank=16, alpha=32, seed=i, strength=0.02, targets=TARGETS)
        adapter_args = [f"--adapter=a{i}={path}" for i, path in enumerate(loras)]
        url = stack.enter_context(
            http_server(
                "--max-sequences",
                str(SLOTS),
                "--context",
                str(CONTEXT),
                "--threads",
                str(args.threads),
                *adapter_args,
                *args.server_args.split(),
            )
        )
        # llama-server runs every loaded adapter in every request's graph (unlisted ones at scale 0):
        # with 4 loaded, base requests measured half as fast. So base rounds go to one without --lora.
        ports: dict[tuple[str, bool], int] = {}
        for kind, binary in binaries.items():
            for with_loras in (False, True):
                ports[kind, with_loras] = port = free_port()
                stack.enter_context(llama_server(binary, port, args.threads, loras if with_loras else []))
        base = json.load(urllib.request.urlopen(url + "/v1/models"))["data"][0]["id"]  # loramux checks `model`
        sampling = SAMPLING[args.sampling]
        port = int(url.rsplit(":", 1)[1])
        ours = Target("loramux", port, base, lambda a: {} if a is None else {"model": f"a{a}"}, sampling)
        mcp = McpTarget(ROUTES["MCP"], port, sampling)

        def targets_for(adapters: int) -> list[Server]:
            theirs = [
                Target(
                    kind,
                    ports[kind, bool(adapters)],
                    base,
                    lambda a: {} if a is None else {"lora": [{"id": a, "scale": 1.0}]},
                    sampling,
                )
                for kind in binaries
            ]
            return [ours, *([mcp] if args.mcp else []), *theirs]

        async def everything() -> tuple[dict, Prefill | None]:
            if args.mcp:
                await mcp.open()
            results = await compare(targets_for, cases, args.repeats, args.max_tokens)
            prefill_targets = [t for t in targets_for(0) if t is not mcp]
            prefill = await prefill_rounds(prefill_targets, args.prefill_repeats) if args.prefill_repeats else None
            return results, prefill

        results, prefill = asyncio.run(everything())
    save_report(args.out, report(results, prefill, args))


if __name__ == "__main__":
    main()
