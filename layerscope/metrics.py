"""Spatial statistics of similarity maps: Moran's I (esda-exact) and std (paper Eq. 3-5).

Moran's I of a map x on an H x W grid with queen (8-connectivity) weights w_ij::

    I = n / S0 * sum_ij w_ij z_i z_j / sum_i z_i^2,     z = x - mean(x),  S0 = sum_ij w_ij

This is esda's definition (``esda.Moran(x.ravel(), lat2W(H, W, rook=False))``).  The
paper's Eq. 3 prints n * sum w z z / sum z^2 without the 1/S0; with binary weights that
only rescales every layer by the same constant (S0 = 8n - 6(H + W) + 4), so rankings
agree, and we follow esda so numbers are comparable with the literature.

Why not call esda: ~90% of its 3.5 ms per map recomputes the weight sums S0/S1/S2 and
the sparse lag on every call.  Here the weights are implicit: the spatial lag is a 3x3
box sum minus the centre (divided by the neighbour count for row-standardised "r"
weights), computed for all maps at once in float64, and S0/S1/S2 are computed once per
grid.  float32 is off by up to 2e-7, so everything runs in float64.

A constant map has no Moran's I: NaN (as esda).  A *nearly* constant map (relative
spread below 1e-9, e.g. all values 0.001) is also NaN here, where esda returns a
meaningless 1.0 computed from rounding noise.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from layerscope.errors import LayerScopeError

TRANSFORMATIONS = ("b", "r")
#: Maps whose std is below this fraction of their largest magnitude count as constant.
RELATIVE_SPREAD_FLOOR = 1e-9
#: Maps per vectorised chunk: small enough to stay in cache (one batch of 10,000 maps
#: falls out of cache and is 2-3x slower), large enough to amortise dispatch.
CHUNK_MAPS = 64


class GridError(LayerScopeError):
    """The grid has no neighbours (1x1) or a transformation is unknown."""


@dataclass(frozen=True)
class GridWeights:
    """Queen-contiguity weight sums of an H x W grid, as esda's W.s0/s1/s2."""

    height: int
    width: int
    transformation: str
    n: int
    s0: float
    s1: float
    s2: float
    degree: np.ndarray  # (H, W) neighbour counts

    @property
    def expectation(self) -> float:
        """E[I] = -1 / (n - 1) under the null of no autocorrelation."""
        return -1.0 / (self.n - 1)

    @property
    def variance_normality(self) -> float:
        n, s0, s1, s2 = self.n, self.s0, self.s1, self.s2
        return (n * n * s1 - n * s2 + 3 * s0 * s0) / ((n - 1) * (n + 1) * s0 * s0) - self.expectation**2


_QUEEN_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _shifted(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[y, x] = a[y + dy, x + dx], zero outside the grid."""
    out = np.zeros_like(a)
    h, w = a.shape
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[yd, xd] = a[ys, xs]
    return out


@functools.lru_cache(maxsize=64)
def grid_weights(height: int, width: int, transformation: str = "b") -> GridWeights:
    """Weight sums for a queen grid, computed once per (H, W, transformation)."""
    if transformation not in TRANSFORMATIONS:
        raise GridError(f"unknown transformation {transformation!r}; use 'b' (binary) or 'r' (row-standardised)")
    n = height * width
    if n < 2:
        raise GridError(f"a {height}x{width} grid has no neighbours; Moran's I needs at least 2 cells")
    ones = np.ones((height, width))
    degree = sum(_shifted(ones, dy, dx) for dy, dx in _QUEEN_OFFSETS)
    if transformation == "b":
        s0 = float(degree.sum())
        s1 = 2.0 * s0  # symmetric 0/1 weights: (w_ij + w_ji)^2 = 4 on each ordered pair
        s2 = float(((2.0 * degree) ** 2).sum())
    else:
        inv = 1.0 / degree
        s0 = float(n)
        s1 = 0.0
        col_sum = np.zeros_like(degree)
        for dy, dx in _QUEEN_OFFSETS:
            neighbour_inv = _shifted(inv, dy, dx)  # 1/deg_j of the neighbour j = i + offset
            valid = _shifted(ones, dy, dx) > 0
            s1 += float(((inv + neighbour_inv) ** 2)[valid].sum())
            col_sum += np.where(valid, neighbour_inv, 0.0)
        s1 *= 0.5
        s2 = float(((1.0 + col_sum) ** 2).sum())
    return GridWeights(height, width, transformation, n, s0, s1, s2, degree)


def _box_sum(z: Any) -> Any:
    """3x3 box sum of every cell (zero outside the grid), as two separable passes."""
    vertical = z * 1.0
    vertical[..., 1:, :] += z[..., :-1, :]
    vertical[..., :-1, :] += z[..., 1:, :]
    box = vertical * 1.0
    box[..., :, 1:] += vertical[..., :, :-1]
    box[..., :, :-1] += vertical[..., :, 1:]
    return box


@dataclass
class MoranResult:
    """Per-map Moran's I and analytical inference, shaped like the input's leading dims."""

    I: np.ndarray  # noqa: E741 - the statistic's name
    EI: float
    VI_norm: float
    VI_rand: np.ndarray
    z_norm: np.ndarray
    z_rand: np.ndarray
    p_norm: np.ndarray
    p_rand: np.ndarray


def _moran_chunk(x: Any, weights: GridWeights, need_z4: bool) -> tuple[Any, Any, Any]:
    """I, sum z^2 and (if asked) sum z^4 for a (m, H, W) float64 torch chunk.

    The spatial lag is box(z) - z, so sum_i z_i lag_i = sum z*box(z) - sum z^2; for
    row-standardised weights each cell's lag is divided by its neighbour count.  The
    per-map dot products are batched matmuls, which avoid writing a temporary.
    """
    import torch

    m = x.shape[0]
    z = x - x.mean(dim=(-2, -1), keepdim=True)
    z_row = z.reshape(m, 1, -1)
    z2 = torch.bmm(z_row, z_row.transpose(1, 2)).reshape(m)
    box = _box_sum(z)
    if weights.transformation == "b":
        cross = torch.bmm(z_row, box.reshape(m, -1, 1)).reshape(m) - z2
    else:
        inv_degree = torch.as_tensor(1.0 / weights.degree, device=x.device)
        lag = (box - z) * inv_degree
        cross = torch.bmm(z_row, lag.reshape(m, -1, 1)).reshape(m)
    scale = torch.maximum(x.amax(dim=(-2, -1)), -x.amin(dim=(-2, -1)))
    flat = z2 <= weights.n * (RELATIVE_SPREAD_FLOOR * scale) ** 2
    value = torch.where(flat, torch.nan, weights.n / weights.s0 * cross / torch.where(flat, 1.0, z2))
    if need_z4:
        z_sq = z_row * z_row
        z4 = torch.bmm(z_sq, z_sq.transpose(1, 2)).reshape(m)
    else:
        z4 = z2
    return value, z2, z4


def morans_i(x: Any, transformation: str = "b") -> Any:
    """Global Moran's I of every (H, W) map in ``x`` (..., H, W); numpy or torch in, same out.

    Vectorised over all leading dimensions, in chunks of :data:`CHUNK_MAPS` maps.
    Constant (or nearly constant) maps give NaN.
    """
    return _morans_i_parts(x, transformation)[0]


def _morans_i_parts(x: Any, transformation: str, need_z4: bool = False) -> tuple[Any, Any, Any, bool]:
    """Run the kernel in torch float64 (fastest here, ~2x numpy); return the input's kind.

    Maps are converted to float64 one chunk at a time, so a float16 store of 126,000
    maps never needs a 1.6 GB float64 copy.
    """
    import torch

    is_torch = isinstance(x, torch.Tensor)
    tensor = x if is_torch else torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float64)
    if tensor.ndim < 2:
        raise GridError("Moran's I needs maps shaped (..., H, W)")
    height, width = tensor.shape[-2:]
    weights = grid_weights(int(height), int(width), transformation)
    lead = tuple(tensor.shape[:-2])
    flat = tensor.reshape(-1, height, width)
    with torch.no_grad():
        parts = [
            _moran_chunk(flat[i : i + CHUNK_MAPS].to(torch.float64), weights, need_z4)
            for i in range(0, flat.shape[0], CHUNK_MAPS)
        ]
        if not parts:
            empty = flat.new_empty(0, dtype=torch.float64)
            parts = [(empty, empty, empty)]
        values, z2, z4 = (torch.cat(p).reshape(lead) for p in zip(*parts))
    if not is_torch:
        values, z2, z4 = (t.numpy() for t in (values, z2, z4))
    return values, z2, z4, is_torch


def moran_inference(x: Any, transformation: str = "b") -> MoranResult:
    """Moran's I with esda's analytical inference (normality and randomisation), numpy out.

    Two-sided p-values, as esda's default ``two_tailed=True``.
    """
    from scipy.special import ndtr

    values, z2, z4, is_torch = _morans_i_parts(x, transformation, need_z4=True)
    if is_torch:
        values, z2, z4 = (t.cpu().numpy() for t in (values, z2, z4))
    height, width = np.shape(x)[-2:]
    w = grid_weights(int(height), int(width), transformation)
    n, s0, s1, s2 = w.n, w.s0, w.s1, w.s2
    ei = w.expectation
    with np.errstate(invalid="ignore", divide="ignore"):
        kurtosis = (z4 / n) / (z2 / n) ** 2
        a = n * ((n * n - 3 * n + 3) * s1 - n * s2 + 3 * s0 * s0)
        b = kurtosis * ((n * n - n) * s1 - 2 * n * s2 + 6 * s0 * s0)
        vi_rand = (a - b) / ((n - 1) * (n - 2) * (n - 3) * s0 * s0) - ei * ei
        vi_norm = w.variance_normality
        z_norm = (values - ei) / math.sqrt(vi_norm)
        z_rand = (values - ei) / np.sqrt(vi_rand)
    p_norm = 2.0 * ndtr(-np.abs(z_norm))
    p_rand = 2.0 * ndtr(-np.abs(z_rand))
    return MoranResult(values, ei, vi_norm, vi_rand, z_norm, z_rand, p_norm, p_rand)


def moran_permutation_test(
    x: np.ndarray, permutations: int = 999, seed: int = 0, transformation: str = "b"
) -> tuple[float, float]:
    """(I, pseudo p-value) of one map by a seeded permutation test (esda's one-sided p_sim).

    For aggregated maps, where the analytical assumptions are doubtful.  Unlike esda
    (which draws from numpy's global RNG) the result is reproducible from ``seed``; a
    constant map gives (NaN, NaN) instead of esda's misleading most-significant p.
    """
    x = np.asarray(x, dtype=np.float64)
    observed = float(morans_i(x, transformation))
    if math.isnan(observed):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    shuffled = rng.permuted(np.broadcast_to(x.ravel(), (permutations, x.size)), axis=1).reshape(permutations, *x.shape)
    simulated = morans_i(shuffled, transformation)
    larger = int((simulated >= observed).sum())
    if permutations - larger < larger:
        larger = permutations - larger
    return observed, (larger + 1.0) / (permutations + 1.0)


def std_normalized(x: Any) -> Any:
    """Std of each (H, W) map after min-max normalisation to [0, 1] (paper Eq. 5).

    Population std (ddof = 0), float64, chunked like :func:`morans_i`.  A constant map
    cannot be normalised: NaN.
    """
    import torch

    is_torch = isinstance(x, torch.Tensor)
    tensor = x if is_torch else torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
    lead = tuple(tensor.shape[:-2])
    flat = tensor.reshape(-1, *tensor.shape[-2:])
    dims = (-2, -1)
    out = []
    with torch.no_grad():
        for i in range(0, flat.shape[0], CHUNK_MAPS):
            chunk = flat[i : i + CHUNK_MAPS].to(torch.float64)
            low = chunk.amin(dim=dims, keepdim=True)
            span = chunk.amax(dim=dims, keepdim=True) - low
            out.append(((chunk - low) / span).std(dim=dims, correction=0))
        result = torch.cat(out).reshape(lead) if out else flat.new_empty(0, dtype=torch.float64).reshape(lead)
    return result if is_torch else result.numpy()


# --- metrics over a store ------------------------------------------------------------


def statistics() -> list[Any]:
    """The registered map statistics (:func:`layerscope.map_statistics.registered`)."""
    from layerscope.map_statistics import registered

    return registered()


def metric_variables() -> tuple[str, ...]:
    """Every variable the registered statistics write (:func:`layerscope.map_statistics.variables`)."""
    from layerscope.map_statistics import variables

    return variables()


class IncompleteStoreError(LayerScopeError):
    """Metrics were asked of a store that is not complete (a usage error)."""


def rms_map(x: Any) -> np.ndarray:
    """Root mean square of each (H, W) map, float64, no normalisation.

    Why a magnitude beside Moran's I and std: the ``contrastive`` and ``influence`` maps
    are zero in a layer that ignores the text, and "how much signal" is what ranks them;
    Moran's I and min-max std are scale-free and undefined on a zero map.
    """
    block = np.asarray(x, dtype=np.float64)
    return np.sqrt(np.mean(block * block, axis=(-2, -1)))


def _kernel_block(block: np.ndarray, transformation: str, chosen: list[Any]) -> np.ndarray:
    """(..., H, W) -> (n outputs, ...): every output of every statistic, in registry order."""
    values = []
    for statistic in chosen:
        computed = statistic.compute(block, transformation)
        values.extend(np.asarray(computed[name], dtype=np.float64) for name in statistic.outputs)
    return np.stack(values)


def compute_metrics(ds: Any, transformation: str = "b", variable: str = "similarity") -> Any:
    """Lazily compute every registered statistic's outputs (step, layer, keyword, frame).

    Built in: ``moran_i``, ``moran_z``, ``std`` and ``rms`` (:mod:`layerscope.map_statistics`).

    Dask-backed: nothing is computed until the result is loaded or written.  The maps
    are rechunked so each task holds a few thousand maps (one store chunk is one step
    and layer, far too small a task).
    """
    import xarray as xr

    grid_weights(int(ds.sizes["y"]), int(ds.sizes["x"]), transformation)  # validate early
    maps = ds[variable]
    per_map = int(np.prod([maps.sizes[d] for d in ("keyword", "frame")]))
    layers_per_task = max(1, min(maps.sizes["layer"], 4096 // max(per_map, 1)))
    maps = maps.chunk({"step": 1, "layer": layers_per_task})
    chosen = statistics()
    names = [name for statistic in chosen for name in statistic.outputs]
    long_names = [long for statistic in chosen for long in statistic.long_names]
    # apply_ufunc wants new core dims last; the kernel returns the metric axis first.
    stacked = xr.apply_ufunc(
        lambda a: np.moveaxis(_kernel_block(a, transformation, chosen), 0, -1),
        maps,
        input_core_dims=[["y", "x"]],
        output_core_dims=[["metric"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"metric": len(names)}},
    )
    from layerscope import __version__

    attrs = {
        "transformation": transformation,
        "weights": "queen (8-connectivity)",
        "normalisation": "none for moran_i (Moran's I is scale-free); min-max per map for std",
        "moran_z": "z under randomisation (esda z_rand)",
        "constant_maps": "NaN",
        "layerscope_version": __version__,
        "source_variable": variable,
    }
    return xr.Dataset(
        {
            name: stacked.isel(metric=index, drop=True).assign_attrs(attrs, long_name=long)
            for index, (name, long) in enumerate(zip(names, long_names))
        }
    )


def ensure_metrics(
    path: Any, transformation: str = "b", *, recompute: bool = False, allow_partial: bool = False
) -> Any:
    """Open a store with its metrics, computing and writing them back only when needed.

    Stored metrics are reused unless ``recompute`` or their transformation differs;
    they are never recomputed silently (the attrs record what was computed).
    """
    from layerscope.store import STATUS_COMPLETE, open_run, recording_was_killed, write_metrics

    ds = open_run(path)
    status = ds.attrs.get("status")
    if status != STATUS_COMPLETE and not allow_partial:
        written = len(ds.attrs.get("steps_written", []))
        state = "was killed while recording" if recording_was_killed(path, ds.attrs) else f"is {status}"
        raise IncompleteStoreError(
            f"store {path} {state} and has {written} of {ds.sizes['step']} steps whole; "
            "pass --allow-partial to analyse the steps it has"
        )
    if status != STATUS_COMPLETE and not ds.attrs.get("steps_written"):
        raise IncompleteStoreError(f"store {path} has no whole step to analyse; record it again")
    have = all(v in ds for v in metric_variables())
    if have and not recompute and ds["moran_i"].attrs.get("transformation") == transformation:
        return ds
    write_metrics(path, compute_metrics(ds, transformation), metrics_transformation=transformation)
    return open_run(path)
