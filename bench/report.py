"""What every benchmark report starts with and how it is written."""

from __future__ import annotations

import os
import platform
import random
import statistics
from datetime import UTC, datetime
from pathlib import Path


def run_stamp() -> str:
    """When and on what the numbers were taken, e.g. "2026-11-23 17:38 UTC, x86_64, 2 cores"."""
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores"


def save_report(path: Path, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    print(text)


def median_interval(values: list[float], confidence: float = 0.95, resamples: int = 4000) -> tuple[float, float]:
    """A bootstrap confidence interval of the median of `values` (percentile method, fixed seed).

    For ratios taken per round: where the interval holds 1.0, the rounds cannot tell the two servers
    apart, whatever side of 1.0 the median itself fell on."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return medians[int(tail * resamples)], medians[min(resamples - 1, int((1 - tail) * resamples))]
