"""The benchmark's bootstrap interval of the ratio of medians, on synthetic step times with a known ratio."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from overhead import ratio_interval


def _steps(blocks: int, block: int, ratio: float, seed: int) -> tuple[list[float], list[float]]:
    """Interleaved blocks on a drifting machine: each block pair shares a speed factor, steps are noisy."""
    rng = np.random.default_rng(seed)
    speed = np.repeat(np.exp(rng.normal(0.0, 0.2, blocks)), block)  # ±20 % drift between blocks
    plain = 10.0 * speed * np.exp(rng.normal(0.0, 0.05, blocks * block))
    inspected = ratio * 10.0 * speed * np.exp(rng.normal(0.0, 0.05, blocks * block))
    return plain.tolist(), inspected.tolist()


def test_the_interval_covers_the_true_ratio_and_narrows_with_more_blocks():
    widths = []
    covered = 0
    for seed in range(20):
        plain, inspected = _steps(30, 10, 1.08, seed)
        low, high = ratio_interval(plain, inspected, 10)
        assert low <= high
        covered += low <= 1.08 <= high
        widths.append(high - low)
    assert covered >= 15  # a 90 % interval: 18 of 20 expected, well above chance for a wrong one
    plain, inspected = _steps(120, 10, 1.08, 99)
    low, high = ratio_interval(plain, inspected, 10)
    assert high - low < 0.7 * float(np.median(widths))  # 4x the blocks: about half the width


def test_identical_timings_give_a_point_and_too_few_blocks_no_interval():
    plain = [float(v) for v in range(1, 41)]
    assert ratio_interval(plain, plain, 10) == pytest.approx((1.0, 1.0))
    low, high = ratio_interval(plain[:10], plain[:10], 10)
    assert np.isnan(low) and np.isnan(high)


def test_the_pairing_of_blocks_cancels_the_machines_drift():
    """With ±20 % drift between blocks, resampling plain and inspected blocks together keeps the interval narrow;
    the same timings with the inspected blocks shuffled (pairs broken) give one several times wider."""
    paired, broken = [], []
    for seed in range(10):
        plain, inspected = _steps(30, 10, 1.08, seed)
        low, high = ratio_interval(plain, inspected, 10)
        paired.append(high - low)
        order = np.random.default_rng(seed).permutation(30)
        shuffled = np.asarray(inspected).reshape(30, 10)[order].ravel().tolist()
        low, high = ratio_interval(plain, shuffled, 10)
        broken.append(high - low)
    assert float(np.median(paired)) < 0.1
    assert float(np.median(broken)) > 3 * float(np.median(paired))
