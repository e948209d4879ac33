"""The training recipe's data helpers: shape masks, shape-centred crops, the collapse guard."""

from __future__ import annotations

import numpy as np
import pytest

from layerscope.shapes import render_video, sample_scenes
from layerscope.shapes.train import _shape_crop_origin, reconstruction_check, shape_mask


@pytest.fixture(scope="module")
def videos():
    scenes = sample_scenes(6, split="train", seed=3)
    return np.stack([render_video(s, num_frames=5, height=64, width=64) for s in scenes])


def test_shape_mask_is_exactly_the_palette_pixels(videos):
    mask = shape_mask(videos)
    grey = (videos[..., 0] == videos[..., 1]) & (videos[..., 1] == videos[..., 2])
    # every background pixel (plain or textured) is grey, every shape pixel is not
    np.testing.assert_array_equal(mask, ~grey)
    assert 0 < mask.mean() < 0.5


def test_shape_crops_contain_shapes_and_stay_on_the_grid(videos):
    rng = np.random.default_rng(0)
    masks = shape_mask(np.stack([np.pad(v, ((0, 0), (0, 192), (0, 192), (0, 0)), constant_values=128) for v in videos]))
    for mask in masks:
        for _ in range(20):
            y, x = _shape_crop_origin(mask, 64, rng)
            assert y % 8 == 0 and x % 8 == 0 and 0 <= y <= 192 and 0 <= x <= 192
            assert mask[:, y : y + 64, x : x + 64].any()


def test_crop_origin_without_shapes_is_random_but_valid():
    empty = np.zeros((3, 256, 256), dtype=bool)
    origins = {_shape_crop_origin(empty, 64, np.random.default_rng(seed)) for seed in range(10)}
    assert len(origins) > 1
    assert all(y % 8 == 0 and x % 8 == 0 and 0 <= y <= 192 and 0 <= x <= 192 for y, x in origins)


class _GreyVae:
    """A collapsed VAE: whatever goes in, mean grey comes out."""

    class _Posterior:
        def __init__(self, x):
            self.latent_dist = self
            self.x = x

        def mode(self):
            return self.x

    class _Decoded:
        def __init__(self, x):
            self.sample = x

    def encode(self, x):
        return self._Posterior(x)

    def decode(self, z):
        return self._Decoded(z * 0.0)


class _PerfectVae(_GreyVae):
    def decode(self, z):
        return self._Decoded(z)


def test_reconstruction_check_tells_a_collapsed_vae_from_a_perfect_one(videos):
    from layerscope.shapes.train import VAE_COLLAPSE_SHAPE_ERROR

    grey = reconstruction_check(_GreyVae(), videos)
    perfect = reconstruction_check(_PerfectVae(), videos)
    assert grey["shape_error"] > VAE_COLLAPSE_SHAPE_ERROR > perfect["shape_error"]
    assert perfect["shape_error"] < 0.6 and perfect["psnr"] > 50 and perfect["std_ratio"] == pytest.approx(1, abs=1e-3)
    assert grey["std_ratio"] < 0.05
