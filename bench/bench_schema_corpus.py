"""Real-world JSON Schemas, not written here: the SchemaStore schemas check-jsonschema vendors (CI configs,
compose files, dependabot, renovate, …), each whole and each of its first definitions as a schema of its own.

    .venv/bin/python -m bench.bench_schema_corpus       # writes bench/results/schema_corpus.md (+ .json)

Each schema is asked for once per sampling, not strict (OpenAI's default: enforce what can be enforced
token by token, check the finished output against the whole schema), on the default model, 8 at a time:
greedy, and with the server's default sampling (what a call that sets no temperature gets; seeded, so a
run repeats). Each is also compiled strict, to count what strict mode refuses. Outcomes: valid (and
checked again here with jsonschema), refused (a clear error before generating), cut (max_tokens reached
first), mismatch (the output broke a keyword that was not enforced: an error naming it), invalid success
(must be 0), other.
"""

from __future__ import annotations

import argparse
import collections
import importlib.resources
import json
import re
import time
import warnings
from pathlib import Path
from typing import Any

import anyio
from jsonschema import Draft202012Validator, validators

from bench.report import run_stamp, save_report
from engine import (
    ChatMessage,
    EngineConfig,
    EngineError,
    GenerateRequest,
    InvalidRequest,
    OutputMismatch,
    SamplingParams,
)
from engine.llama import LlamaEngine

RESULTS = Path(__file__).parent / "results"


def corpus(defs_per_schema: int) -> list[tuple[str, dict[str, Any], str]]:
    """(name, schema, what to ask for): every vendored schema, then up to N of its definitions each."""
    vendor = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
    entries = []
    for f in sorted(vendor.iterdir(), key=lambda f: f.name):
        if not f.name.endswith(".json"):
            continue
        root = json.loads(f.read_text())
        stem = f.name.removesuffix(".json")
        entries.append((stem, root, _topic(root, stem)))
        defs_key = "$defs" if "$defs" in root else "definitions"
        taken = 0
        for name in sorted(root.get(defs_key) or {}):
            if taken == defs_per_schema:
                break
            if _refers_outside(root[defs_key][name], defs_key):
                continue  # e.g. "#/properties/orbs": it would dangle in a schema made of the definitions alone
            taken += 1
            sub = {k: v for k, v in root.items() if k in ("$schema", "$id", defs_key)}
            sub["$ref"] = f"#/{defs_key}/{name}"
            entries.append((f"{stem}#{name}", sub, _topic(root[defs_key][name], f"{stem} {name}")))
    return entries


def _refers_outside(schema: Any, defs_key: str) -> bool:
    """Whether the definition refers to a part of its document other than the definitions."""
    refs = re.findall(r'"\$ref": "(#[^"]*)"', json.dumps(schema))
    return any(not (ref.startswith(f"#/{defs_key}/") or ref == "#") for ref in refs)


def _topic(schema: Any, fallback: str) -> str:
    if isinstance(schema, dict):
        for key in ("description", "title"):
            if isinstance(schema.get(key), str):
                return schema[key][:200]
    return fallback


def independent_check(schema: dict[str, Any], value: Any) -> bool:
    """jsonschema's own verdict, set up here, apart from the engine's check."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = validators.validator_for(schema, default=Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER).is_valid(value)


# greedy decoding is known to fall into repetition loops (Holtzman et al., "The Curious Case of Neural
# Text Degeneration"); the default sampling is what a caller gets without choosing
SAMPLINGS = {
    "greedy": {"temperature": 0.0},
    "default": {"seed": 1},  # the server's defaults (temperature 0.7, top_p 0.95, min_p 0.05, repeat 1.1)
}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "runs": {name: await run_one(args, SAMPLINGS[name]) for name in args.sampling},
        "max_tokens": args.max_tokens,
        "defs": args.defs,
    }


async def run_one(args: argparse.Namespace, sampling: dict[str, Any]) -> list[dict[str, Any]]:
    entries = corpus(args.defs)
    config = EngineConfig(max_sequences=8, context_per_sequence=2048)
    rows: list[dict[str, Any]] = []
    async with LlamaEngine(config) as engine:
        preparer = engine._preparer  # strict compile only: counting what strict mode would refuse

        async def one(name: str, schema: dict[str, Any], topic: str) -> None:
            ask = f"Write an example JSON document for: {topic}"
            request = GenerateRequest(
                messages=(ChatMessage(role="user", content=ask),),
                sampling=SamplingParams(max_tokens=args.max_tokens, **sampling),
                json_schema=schema,
            )
            started = time.perf_counter()
            row: dict[str, Any] = {"name": name}
            try:
                result = await engine.complete(request)
            except OutputMismatch as exc:
                row |= {"outcome": "mismatch", "error": str(exc)}
            except InvalidRequest as exc:
                row |= {"outcome": "refused", "error": str(exc)}
            except EngineError as exc:
                row |= {"outcome": "other", "error": f"{type(exc).__name__}: {exc}"}
            else:
                if result.finish_reason == "length":
                    row["outcome"] = "cut"
                else:
                    ok = independent_check(schema, json.loads(result.text))
                    row["outcome"] = "valid" if ok else "invalid success"
                row["tokens"] = result.usage.completion_tokens
            row["seconds"] = time.perf_counter() - started
            try:
                strict = request.model_copy(update={"json_schema_strict": True})
                await anyio.to_thread.run_sync(preparer.prepare, 0, strict, time.monotonic())
                row["strict"] = "accepted"
            except InvalidRequest as exc:
                row["strict"] = "refused"
                row["strict_error"] = str(exc)
            rows.append(row)
            print(f"{row['outcome']:>15} {row['seconds']:6.1f} s  {name}  {row.get('error', '')[:150]}", flush=True)

        limiter = anyio.Semaphore(8)

        async def limited(entry: tuple[str, dict[str, Any], str]) -> None:
            async with limiter:
                await one(*entry)

        async with anyio.create_task_group() as tg:
            for entry in entries:
                tg.start_soon(limited, entry)
    rows.sort(key=lambda r: r["name"])
    return rows


OUTCOMES = {
    "valid": "valid (checked again here with jsonschema)",
    "refused": "refused before generating, with a specific error",
    "cut": "cut by max_tokens",
    "mismatch": "output broke a keyword that was not enforced (error naming it)",
    "invalid success": "**invalid success**",
    "other": "other error",
}


def report(results: dict[str, Any], argv: list[str]) -> list[str]:
    runs: dict[str, list[dict[str, Any]]] = results["runs"]
    first = next(iter(runs.values()))
    n = len(first)
    counts = {name: collections.Counter(r["outcome"] for r in rows) for name, rows in runs.items()}
    strict = collections.Counter(r["strict"] for r in first)
    lines = [
        "# Real-world JSON Schemas (SchemaStore, via check-jsonschema)",
        "",
        f"{run_stamp()}. `{' '.join(['python -m bench.bench_schema_corpus', *argv])}`.",
        "",
        f"{n} schemas: the {sum('#' not in r['name'] for r in first)} SchemaStore schemas check-jsonschema "
        f"vendors, whole, and up to {results['defs']} of each one's definitions as schemas of their own. Not "
        f"strict (enforce what can be, check the whole output), max_tokens {results['max_tokens']}, the default "
        "model (SmolLM2-135M), 8 at a time. Sampling: greedy, and the server's defaults (temperature 0.7, "
        "top_p 0.95, min_p 0.05, repeat_penalty 1.1; seed 1), which is what a call that sets none gets.",
        "",
        "| outcome | " + " | ".join(runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for key, label in OUTCOMES.items():
        cells = [f"{c[key]} ({100 * c[key] / n:.1f}%)" for c in counts.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Strict (OpenAI's `strict: true`): {strict['accepted']} accepted, {strict['refused']} refused by name.",
    ]
    for name, rows in runs.items():
        lines += [
            "",
            f"## Every schema that was not valid ({name})",
            "",
            "| schema | outcome | error |",
            "|---|---|---|",
        ]
        for r in rows:
            if r["outcome"] != "valid":
                error = r.get("error", "").replace("|", "\\|")[:240]
                lines.append(f"| {r['name']} | {r['outcome']} | {error} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--defs", type=int, default=6, help="definitions per schema taken as schemas of their own")
    parser.add_argument("--max-tokens", type=int, default=600)
    parser.add_argument("--sampling", nargs="+", choices=list(SAMPLINGS), default=list(SAMPLINGS))
    import sys

    args = parser.parse_args()
    results = anyio.run(run, args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "schema_corpus.json").write_text(json.dumps(results, indent=1))
    save_report(RESULTS / "schema_corpus.md", report(results, sys.argv[1:]))


if __name__ == "__main__":
    main()
