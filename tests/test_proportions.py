"""Intervals and paired tests for all-correct rates, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layerscope.proportions import paired_sign_flip_test, prompt_bootstrap_interval, wilson_interval


def test_wilson_interval_by_hand():
    # p = 2/30, z = 1.96: centre (p + z^2/2n) / (1 + z^2/n), half z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    z, n, p = 1.959964, 30, 2 / 30
    d = 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    assert wilson_interval(2, 30) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(2, 30) == pytest.approx((0.0185, 0.2132), abs=1e-3)
    assert wilson_interval(0, 6)[0] == 0.0 and wilson_interval(6, 6)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_sign_flip_test_is_exact_for_few_prompts():
    a = np.zeros((4, 5))
    b = np.ones((4, 5))  # every prompt better: only all-plus and all-minus reach |sum| = 4
    assert paired_sign_flip_test(a, b) == pytest.approx(2 / 16)
    assert paired_sign_flip_test(a, a) == 1.0
    # prompts without a difference do not count; one differing prompt cannot be significant
    c = a.copy()
    c[0] = 1
    assert paired_sign_flip_test(a, c) == 1.0
    with pytest.raises(ValueError):
        paired_sign_flip_test(a, np.zeros((3, 5)))


def test_sign_flip_test_detects_a_consistent_gain_over_many_prompts():
    rng = np.random.default_rng(0)
    a = (rng.random((40, 5)) < 0.3).astype(float)
    b = np.maximum(a, (rng.random((40, 5)) < 0.4).astype(float))
    assert paired_sign_flip_test(a, b) < 0.001
    assert paired_sign_flip_test(a, (rng.random((40, 5)) < 0.3).astype(float)) > 0.01


def test_prompt_bootstrap_interval_covers_the_mean_and_needs_two_prompts():
    outcomes = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 1], [0, 1, 0]])
    low, high = prompt_bootstrap_interval(outcomes)
    assert low <= outcomes.mean() <= high and 0.0 <= low and high <= 1.0
    assert all(math.isnan(v) for v in prompt_bootstrap_interval(outcomes[:1]))
