"""Does a long prompt stall the streams already running? Before vs after, measured in one run.

    .venv/bin/python -m bench.bench_stall            # writes bench/results/stall.md

"before" is the commit that rendered and tokenized prompts on the decode thread (checked out into a
temporary git worktree); "after" is this tree, which prepares requests in a worker thread. Each run
(bench/stall_probe.py, a subprocess importing the engine under test) has 4 streams generating greedily
while one chat request of 100,000 (then 200,000) characters arrives; that prompt is far longer than
the 2,048-token context, so all the engine does with it is prepare it and refuse it: every gap it adds
to the other streams is preparation, with no prefill chunks. Runs alternate before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "7225054"  # the last commit with inline preparation


def run_probe(engine_root: Path, chars: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(engine_root)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "stall_probe.py"), "--chars", str(chars)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=engine_root,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["engine"]).is_relative_to(engine_root), result["engine"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default=BEFORE)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="100000,200000")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/stall.md")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        worktree = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.before], cwd=ROOT, check=True)
        try:
            for chars in sizes:
                for _ in range(args.repeats):
                    for label, root in (("before", worktree), ("after", ROOT)):
                        r = run_probe(root, chars)
                        print(label, r, flush=True)
                        results.setdefault((label, chars), []).append(r)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=True)
    write_report(args, sizes, results)


def write_report(args: argparse.Namespace, sizes: list[int], results: dict[tuple[str, int], list[dict]]) -> None:
    def med(label: str, chars: int, key: str) -> float:
        return statistics.median(r[key] for r in results[(label, chars)])

    lines = [
        "# Stall benchmark: running streams while a long prompt arrives",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, {os.cpu_count()} cores. "
        f"4 greedy streams generate (one token each per step) while one chat request with a prompt of N "
        f"characters arrives; it is longer than the context, so the engine prepares it (chat template, "
        f"tokenization) and refuses it, with no prefill. Median of {args.repeats} runs each, before and after "
        f"alternating. Command: `.venv/bin/python -m bench.bench_stall`.",
        "",
        f"- **before**: commit `{args.before}`, which prepared requests on the decode thread.",
        "- **after**: this tree, which prepares them in a worker thread on the async side.",
        "- *median gap*: the streams' median time between tokens before the long request arrives;",
        "  *longest gap*: the longest time between two tokens of any stream while the request was handled.",
        "",
        "| prompt chars | engine | handling ms | median gap ms | longest gap ms | longest / median |",
        "|---|---|---|---|---|---|",
    ]
    for chars in sizes:
        for label in ("before", "after"):
            gap = med(label, chars, "median_gap_ms")
            longest = med(label, chars, "max_gap_during_ms")
            lines.append(
                f"| {chars:,} | {label} | {med(label, chars, 'handling_ms'):.0f} | {gap:.1f} | {longest:.1f} "
                f"| {longest / gap:.1f}x |"
            )
    lines += ["", "Every run (ms): longest gap during / median gap:", ""]
    for (label, chars), runs in sorted(results.items()):
        shown = ", ".join(f"{r['max_gap_during_ms']:.0f}/{r['median_gap_ms']:.0f}" for r in runs)
        lines.append(f"- {label}, {chars:,} chars: {shown}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
