"""Moran's I and std against esda/libpysal and hand-computed values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from layerscope.metrics import (
    GridError,
    grid_weights,
    moran_inference,
    moran_permutation_test,
    morans_i,
    std_normalized,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from esda.moran import Moran
    from libpysal.weights import lat2W


def _esda(x, transformation):
    h, w = x.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Moran(x.ravel(), lat2W(h, w, rook=False), transformation=transformation, permutations=0)


def _maps(h, w, seed):
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(h, w))
    smooth = np.cumsum(np.cumsum(noise, 0), 1)
    spot = np.exp(-((np.arange(h)[:, None] - h / 3) ** 2 + (np.arange(w)[None] - w / 2) ** 2) / 8.0)
    return {"random": noise, "smooth": smooth, "spot": spot}


GRIDS = [(30, 52), (16, 16), (2, 2), (1, 7), (5, 3), (1, 4), (7, 2)]


@pytest.mark.parametrize("transformation", ["b", "r"])
@pytest.mark.parametrize("grid", GRIDS)
def test_statistic_and_inference_equal_esda(grid, transformation):
    for name, x in _maps(*grid, seed=sum(grid)).items():
        reference = _esda(x, transformation)
        ours = moran_inference(x, transformation)
        assert abs(float(ours.I) - reference.I) < 1e-9, name
        assert ours.EI == pytest.approx(reference.EI, abs=1e-12)
        assert ours.VI_norm == pytest.approx(reference.VI_norm, rel=1e-9, abs=1e-12)
        assert float(ours.VI_rand) == pytest.approx(reference.VI_rand, rel=1e-9, abs=1e-12)
        if reference.VI_rand > 1e-12:  # 2x2 grids have (numerically) zero variance
            for field in ("z_norm", "z_rand", "p_norm", "p_rand"):
                assert float(getattr(ours, field)) == pytest.approx(getattr(reference, field), rel=1e-7, abs=1e-9)


def test_1x3_strip_has_nan_randomisation_variance_like_esda():
    x = np.array([[0.3, 1.0, -2.0]])
    reference = _esda(x, "b")
    ours = moran_inference(x, "b")
    assert abs(float(ours.I) - reference.I) < 1e-9
    assert np.isnan(reference.VI_rand) and np.isnan(ours.VI_rand)


def test_hand_computed_2x2():
    # 2x2 queen grid: every cell neighbours the other three. x = [[1, 0], [0, 0]]
    # z = [.75, -.25, -.25, -.25]; sum z^2 = .75; sum_ij w z_i z_j = sum_i z_i (S - z_i) = -sum z^2
    # I = n / S0 * (-.75) / .75 = 4 / 12 * -1 = -1/3
    assert float(morans_i(np.array([[1.0, 0.0], [0.0, 0.0]]))) == pytest.approx(-1.0 / 3.0, abs=1e-15)
    weights = grid_weights(2, 2, "b")
    assert (weights.s0, weights.s1, weights.s2) == (12.0, 24.0, 144.0)


def test_weight_sums_match_libpysal():
    for grid in [(30, 52), (3, 4), (1, 5)]:
        for transformation in "br":
            w = lat2W(*grid, rook=False)
            w.transform = transformation
            ours = grid_weights(*grid, transformation)
            assert (ours.s0, ours.s1, ours.s2) == pytest.approx((w.s0, w.s1, w.s2), rel=1e-12)


def test_vectorised_over_leading_dims_and_torch_agrees():
    rng = np.random.default_rng(1)
    x = np.cumsum(rng.normal(size=(3, 4, 5, 30, 52)), axis=-1)
    values = morans_i(x)
    assert values.shape == (3, 4, 5)
    assert abs(values[2, 1, 3] - _esda(x[2, 1, 3], "b").I) < 1e-9
    as_torch = morans_i(torch.from_numpy(x).float())
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.float64
    np.testing.assert_allclose(as_torch.numpy(), morans_i(x.astype(np.float32)), rtol=0, atol=1e-12)


def test_constant_and_nearly_constant_maps_are_nan():
    maps = np.stack([np.full((30, 52), 0.5), np.full((30, 52), 0.001), np.arange(1560.0).reshape(30, 52)])
    values = morans_i(maps)
    assert np.isnan(values[0]) and np.isnan(values[1]) and np.isfinite(values[2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _esda(maps[1], "b").I == pytest.approx(1.0)  # esda's rounding-noise answer we refuse
    assert np.isnan(std_normalized(maps[0]))


def test_grid_without_neighbours_is_an_error():
    with pytest.raises(GridError):
        morans_i(np.ones((1, 1)))


def test_std_normalized_hand_computed():
    x = np.array([[0.0, 2.0], [4.0, 2.0]])  # normalised: 0, .5, 1, .5 -> mean .5, var .125
    assert float(std_normalized(x)) == pytest.approx(np.sqrt(0.125), abs=1e-15)
    assert float(std_normalized(torch.tensor(x * 3 + 7))) == pytest.approx(np.sqrt(0.125), abs=1e-15)


def test_permutation_test_is_seeded_and_significant_for_smooth_maps():
    smooth = _maps(12, 12, seed=3)["smooth"]
    first = moran_permutation_test(smooth, permutations=199, seed=5)
    assert first == moran_permutation_test(smooth, permutations=199, seed=5)
    assert first[1] == pytest.approx(1 / 200)
    assert np.isnan(moran_permutation_test(np.ones((4, 4)))[1])
