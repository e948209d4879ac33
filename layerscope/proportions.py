"""Intervals and paired tests for pass/fail rates (instruction following, all-correct rule).

The paper reports all-correct rates over a fixed prompt set and five seeds.  The seeds
of one prompt share its difficulty, so the prompt is the unit: the interval of a rate is
a percentile bootstrap over prompts (each resampled prompt brings all its seeds), and a
comparison of two variants on the same prompts and seeds is a paired sign-flip test
over prompts (each prompt's mean difference keeps or flips its sign under "no effect").
Wilson's interval over all (prompt, seed) outcomes is given too, for one seed or for
comparison with papers that treat outcomes as independent.
"""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of ``successes / trials`` (NaN for no trials)."""
    if trials <= 0:
        return float("nan"), float("nan")
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def prompt_bootstrap_interval(outcomes: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``outcomes`` (prompts x seeds), resampling prompts."""
    outcomes = np.asarray(outcomes, dtype=np.float64)
    if outcomes.ndim != 2 or outcomes.shape[0] < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, outcomes.shape[0], size=(resamples, outcomes.shape[0]))
    means = outcomes.mean(axis=1)[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def paired_sign_flip_test(a: np.ndarray, b: np.ndarray, permutations: int = 9999, seed: int = 0) -> float:
    """Two-sided p-value of mean(b - a) = 0, pairing (prompt, seed) and flipping whole prompts.

    Exact enumeration for up to 16 prompts with a nonzero difference, random flips beyond.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes must have the same shape ({a.shape} vs {b.shape})")
    diffs = (b - a).reshape(a.shape[0], -1).mean(axis=1)
    diffs = diffs[diffs != 0]
    if diffs.size == 0:
        return 1.0
    observed = abs(diffs.sum())
    if diffs.size <= 16:
        signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * diffs.size)).reshape(diffs.size, -1).T
        null = np.abs(signs @ diffs)
        return float(np.mean(null >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(permutations, diffs.size))
    null = np.abs(signs @ diffs)
    return float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + permutations))
