"""Simulated per-run layer curves that look like real data, for calibrating the band test.

Why a module of its own: the weak-band verdict is only as good as its null, and the null
must hold where real networks live.  Neighbouring blocks share the residual stream, so a
run's curve over depth is smooth (AR(1) correlation between layers), runs differ as a
whole (prompt offsets), and a model can have smooth trends (a U, a slope) that are not a
distinct band.  ``benchmarks/ranking_validity.py`` and the tests draw from the same
scenarios, so the benchmark's table and the tests' assertions are about the same data.

Units are Moran's-I-like: a level of 0.5, a run offset of sd 0.1, and layer noise of
marginal sd ``SD = 0.1``; ``effect`` is in units of that layer-noise SD (the part of a
layer's between-run spread that does not cancel in a within-run contrast).
"""

from __future__ import annotations

import math

import numpy as np

LEVEL = 0.5
SD = 0.1
#: Scenarios without a distinct band (the band test must call them at most alpha of the time).
NULL_SCENARIOS = ("iid", "ar", "quadratic", "smooth_u", "slope")
SCENARIOS = NULL_SCENARIOS + ("box",)


def ar_noise(rng: np.random.Generator, runs: int, layers: int, rho: float) -> np.ndarray:
    """AR(1) noise across layers with unit marginal variance (stationary from layer 0)."""
    shocks = rng.normal(size=(runs, layers))
    noise = np.empty_like(shocks)
    noise[:, 0] = shocks[:, 0]
    scale = math.sqrt(1.0 - rho**2)
    for layer in range(1, layers):
        noise[:, layer] = rho * noise[:, layer - 1] + scale * shocks[:, layer]
    return noise


def planted_band(layers: int, width: int | None = None) -> tuple[int, int]:
    """The paper's band (11-26 of 40) scaled to ``layers``, or ``width`` layers in the middle."""
    if width is None:
        return round(layers * 11 / 40), round(layers * 26 / 40)
    start = (layers - width) // 2
    return start, start + width - 1


def simulate(
    rng: np.random.Generator,
    scenario: str,
    runs: int,
    layers: int,
    rho: float = 0.0,
    effect: float = 0.0,
    width: int | None = None,
) -> np.ndarray:
    """(runs, layers) per-run layer means of one scenario.

    ``iid``/``ar``: a flat curve with layer noise of correlation ``rho``; ``quadratic``:
    a random quadratic per run (coefficients sd ``SD``) with a flat mean; ``smooth_u``: a
    raised-cosine trough 2 SD deep across all layers; ``slope``: a monotone slope of 4 SD
    over depth; ``box``: a band ``effect`` SD deep at :func:`planted_band`.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    depth = np.linspace(-1.0, 1.0, layers)
    values = LEVEL + rng.normal(0.0, SD, (runs, 1)) + SD * ar_noise(rng, runs, layers, rho)
    if scenario == "quadratic":
        a, b = rng.normal(0.0, SD, (2, runs, 1))
        values += a * (depth**2 - np.mean(depth**2)) + b * depth
    elif scenario == "smooth_u":
        values -= 2.0 * SD * (1.0 + np.cos(np.pi * depth)) / 2.0
    elif scenario == "slope":
        values += 2.0 * SD * depth
    elif scenario == "box":
        start, end = planted_band(layers, width)
        values[:, start : end + 1] -= effect * SD
    return values
