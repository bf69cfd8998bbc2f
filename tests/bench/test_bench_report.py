"""The benchmarks' confidence interval: what decides whether a ratio is read as a lead, a loss or a tie."""

from __future__ import annotations

import random
import statistics

from bench.report import median_interval


def noisy_ratios(n: int, centre: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(centre, 0.05) for _ in range(n)]  # single 1-client rounds vary about this much


def test_interval_holds_the_median_and_narrows_with_more_rounds() -> None:
    widths = []
    for values in (noisy_ratios(14, 1.0, 1), noisy_ratios(400, 1.0, 2)):
        low, high = median_interval(values)
        assert low <= statistics.median(values) <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_a_real_difference_excludes_one_and_no_difference_includes_it() -> None:
    low, high = median_interval(noisy_ratios(400, 1.03, 3))
    assert low > 1.0
    low, high = median_interval(noisy_ratios(400, 1.0, 4))
    assert low < 1.0 < high


def test_identical_rounds_give_a_point() -> None:
    assert median_interval([0.97] * 9) == (0.97, 0.97)
