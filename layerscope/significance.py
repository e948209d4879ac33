"""Is there a weak band? A dip statistic, its permutation null and cluster-bootstrap CIs.

Why a dip and not "the layers below the mean": the paper's semantic-weak layers are an
*interior* band (11-26 of Wan2.1's 40) with stronger layers on both sides (its Figure
2).  A curve that simply slopes over depth has layers below its mean too, and a
maximum-sum segment against the mean always finds something, even on pure noise (the
old ranking named a band on a flat curve in 1000 of 1000 trials).  So a band is scored
by how far it sits below *both* of its flanks::

    dip(a, b)   = min(mean(c[:a]), mean(c[b+1:])) - mean(c[a:b+1])      1 <= a <= b <= L-2
    score(a, b) = min over both flanks F of (mean(F) - mean(c[a:b+1])) / sqrt(1/w + 1/|F|)

with ``w = b - a + 1`` the band's width: the band's shortfall below each flank scaled
as a two-sample t statistic would be if every layer had unit variance (no variance is
estimated: the permutation null below calibrates the score), and the weaker side
counts.  A band of w layers each a bit low is as convincing as its shortfall times
~sqrt(w), so one noisy low layer does not win; a band stretched to a one-layer flank
gains nothing, because that flank's mean is as noisy as one layer (scoring by width
instead names the whole interior on shuffled curves); and a band that leaves one of its
own low layers to a flank pays for it on that side.  The band is the segment with the
largest score; it never contains the first or the last layer, and a monotone curve
scores ~0 because one of its flanks is always on the low side.

Why a permutation null: under "no layer is special", layer labels are exchangeable
within each run.  Shuffling them independently per run (vectorised, 999 times by default) and
re-scoring gives the null distribution of the *maximum* score, so the p-value already
pays for having searched over every band.  The run is the unit for intervals too:
steps, keywords and frames of one run share the prompt, the seed and the noise, so the
cluster bootstrap resamples whole runs.  With one run there is nothing between runs to
resample; the interval is then over steps and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layerscope.errors import LayerScopeError

#: The smallest number of layers with an interior band and a layer on each side.
MIN_LAYERS = 3


class SignificanceError(LayerScopeError):
    """The data cannot carry the test (too few layers, no finite values)."""


def _segments(num_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (inclusive) of every interior segment 1 <= a <= b <= L-2."""
    starts, ends = np.triu_indices(num_layers - 2)
    return starts + 1, ends + 1


def dip_scores(curves: np.ndarray) -> np.ndarray:
    """``score(a, b)`` of every interior segment, for each curve: (..., L) -> (..., n_segments).

    Prefix sums make this O(L^2) per curve with no Python loop over curves, so 999
    permutations of a 40-layer curve take milliseconds.
    """
    curves = np.asarray(curves, dtype=np.float64)
    num_layers = curves.shape[-1]
    starts, ends = _segments(num_layers)
    prefix = np.concatenate([np.zeros(curves.shape[:-1] + (1,)), np.cumsum(curves, axis=-1)], axis=-1)
    total = prefix[..., -1:]
    band_sum = prefix[..., ends + 1] - prefix[..., starts]
    left_mean = prefix[..., starts] / starts
    right_mean = (total - prefix[..., ends + 1]) / (num_layers - 1 - ends)
    width = (ends - starts + 1).astype(np.float64)
    band_mean = band_sum / width
    left_t = (left_mean - band_mean) / np.sqrt(1.0 / width + 1.0 / starts)
    right_t = (right_mean - band_mean) / np.sqrt(1.0 / width + 1.0 / (num_layers - 1 - ends))
    return np.minimum(left_t, right_t)


def best_band(curve: np.ndarray) -> tuple[int, int, float, float]:
    """``(start, end, score, dip)`` of the highest-scoring interior segment of one curve."""
    curve = np.asarray(curve, dtype=np.float64)
    if curve.ndim != 1 or curve.size < MIN_LAYERS:
        raise SignificanceError(f"a weak band needs at least {MIN_LAYERS} layers (got {curve.size})")
    scores = dip_scores(curve)
    starts, ends = _segments(curve.size)
    best = int(np.argmax(scores))
    a, b = int(starts[best]), int(ends[best])
    dip = min(curve[:a].mean(), curve[b + 1 :].mean()) - curve[a : b + 1].mean()
    return a, b, float(scores[best]), float(dip)


def fill_missing(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN layers of each unit (row) by that row's mean over finite layers.

    A layer without a finite value in one run (all its maps constant) then neither makes
    nor breaks a dip in that run.  Returns the filled array and how many were filled.
    """
    values = np.array(values, dtype=np.float64)
    missing = ~np.isfinite(values)
    if missing.all(axis=-1).any():
        raise SignificanceError("a run has no finite value in any layer (all its maps are constant)")
    if missing.any():
        finite = np.where(missing, 0.0, values)
        row_means = finite.sum(axis=-1, keepdims=True) / (~missing).sum(axis=-1, keepdims=True)
        values = np.where(missing, row_means, values)
    return values, int(missing.sum())


def permutation_null(units: np.ndarray, permutations: int = 999, rng: np.random.Generator | None = None) -> np.ndarray:
    """Maximum band score of the mean curve with layer labels shuffled within each unit.

    ``units`` is (n_units, L): one row per run.  Returns ``permutations`` null maxima.
    Done in blocks so memory stays bounded for big sweeps.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    units = np.asarray(units, dtype=np.float64)
    n_units, num_layers = units.shape
    maxima = np.empty(permutations)
    block = max(1, 2_000_000 // max(1, n_units * num_layers))
    for first in range(0, permutations, block):
        count = min(block, permutations - first)
        shuffled = rng.permuted(np.broadcast_to(units, (count, n_units, num_layers)), axis=-1)
        maxima[first : first + count] = dip_scores(shuffled.mean(axis=1)).max(axis=-1)
    return maxima


def p_value(observed: float, null: np.ndarray) -> float:
    """(1 + #null >= observed) / (1 + n): never 0, exact under exchangeability (1 for a NaN score)."""
    if not np.isfinite(observed):
        return 1.0
    return float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + null.size))


@dataclass
class BandTest:
    """Everything the verdict is made of, for one metric."""

    start: int
    end: int
    score: float
    dip: float
    p_value: float
    permutations: int
    significant: bool
    alpha: float
    curve: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_in_band: np.ndarray
    unit: str
    n_units: int
    filled: int

    @property
    def layers(self) -> list[int]:
        """Positions in the band, or none when the band is not significant."""
        return list(range(self.start, self.end + 1)) if self.significant else []


def bootstrap(
    units: np.ndarray, resamples: int = 1000, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster bootstrap over units: 95% percentile CI of each layer's mean, and the
    probability that each layer is inside the best band of a resampled curve.

    One unit cannot be resampled: everything is NaN then (a zero-width "interval" would
    claim a certainty that no data supports).  With very few units the percentile
    interval is close to the range of the units; callers say how many there were.
    """
    rng = np.random.default_rng(1) if rng is None else rng
    units = np.asarray(units, dtype=np.float64)
    n_units, num_layers = units.shape
    if n_units < 2:
        nan = np.full(num_layers, np.nan)
        return nan, nan.copy(), nan.copy()
    picks = rng.integers(0, n_units, size=(resamples, n_units))
    curves = units[picks].mean(axis=1)  # (resamples, L)
    low, high = np.percentile(curves, [2.5, 97.5], axis=0)
    if num_layers < MIN_LAYERS:  # no interior band exists: nothing can be inside one
        return low, high, np.zeros(num_layers)
    scores = dip_scores(curves)
    starts, ends = _segments(num_layers)
    best = np.argmax(scores, axis=-1)
    layer = np.arange(num_layers)
    inside = (layer >= starts[best][:, None]) & (layer <= ends[best][:, None])
    return low, high, inside.mean(axis=0)


def band_test(
    units: np.ndarray,
    *,
    alpha: float = 0.05,
    permutations: int = 999,
    resamples: int = 1000,
    unit: str = "run",
    seed: int = 0,
) -> BandTest:
    """Score the band of the mean curve of ``units`` (n_units x L) against its null.

    ``unit`` names what a row is ("run", or "step" for a single run) so the caller can
    say what the interval is over.  Deterministic for a given ``seed``.
    """
    if not 0 < alpha < 1:
        raise SignificanceError(f"--alpha must be between 0 and 1 (got {alpha})")
    if permutations < 1 or resamples < 1:
        raise SignificanceError("--permutations and --bootstrap must be at least 1")
    units, filled = fill_missing(np.atleast_2d(units))
    curve = units.mean(axis=0)
    null_rng, boot_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    if curve.size < MIN_LAYERS:
        # fewer than 3 layers recorded (--layers): intervals still mean something, a band cannot exist
        start, end, score, dip, p = 0, curve.size - 1, float("nan"), float("nan"), 1.0
    else:
        start, end, score, dip = best_band(curve)
        p = p_value(score, permutation_null(units, permutations, null_rng))
    low, high, p_in_band = bootstrap(units, resamples, boot_rng)
    return BandTest(
        start=start,
        end=end,
        score=score,
        dip=dip,
        p_value=p,
        permutations=permutations,
        significant=bool(p <= alpha and np.isfinite(dip) and dip > 0),
        alpha=alpha,
        curve=curve,
        ci_low=low,
        ci_high=high,
        p_in_band=p_in_band,
        unit=unit,
        n_units=units.shape[0],
        filled=filled,
    )
