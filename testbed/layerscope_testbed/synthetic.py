"""Stores with a known answer: synthetic runs whose per-layer Moran's I is planted.

Why: the ranking statistics must be checked where the truth is known (a planted dip, or
none), and the analysis of many stores (dask, a cluster) must be exercised on dozens of
runs without recording dozens of videos.  Each map is a smooth field (spatially
autocorrelated, high Moran's I) plus white noise; layers inside the planted band get
more noise, so their Moran's I is lower.  A per-run factor varies the noise level of
the whole run, as prompts and seeds do.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random field with neighbour correlation: cumulative sums along both grid axes."""
    field = rng.normal(size=shape)
    field = np.cumsum(np.cumsum(field, axis=-1), axis=-2)
    field -= field.mean(axis=(-2, -1), keepdims=True)
    return field / (field.std(axis=(-2, -1), keepdims=True) + 1e-12)


def write_synthetic_run(
    path: str | os.PathLike,
    *,
    layers: int = 12,
    steps: int = 3,
    keywords: tuple[str, ...] = ("red", "circle"),
    grid: tuple[int, int, int] = (2, 8, 8),
    band: tuple[int, int] | None = (4, 7),
    band_noise: float = 2.0,
    noise: float = 1.0,
    seed: int = 0,
    model_id: str = "synthetic",
) -> Path:
    """Write one complete store; layers ``band[0]..band[1]`` get ``band_noise`` x more noise."""
    from layerscope.store import StoreLayout, StoreWriter

    rng = np.random.default_rng(seed)
    layout = StoreLayout(
        steps=list(range(steps)),
        layers=list(range(layers)),
        blocks=[f"blocks.{i}" for i in range(layers)],
        keywords=list(keywords),
        grid=tuple(grid),
        video_shape=(1, 8, 8),
        dtype="float32",
        attrs={
            "model_id": model_id,
            "weights": "synthetic",
            "prompt": f"synthetic run {seed}: " + " ".join(keywords),
            "seed": seed,
            "planted_band": list(band) if band else None,
        },
    )
    run_noise = noise * float(np.exp(rng.normal(0.0, 0.2)))  # prompts and seeds differ as a whole
    base = _smooth_field(rng, (len(keywords), *grid))
    with StoreWriter(path, layout) as writer:
        for step in range(steps):
            writer.set_timestep(step, float(1000 - step), 0)
            for layer in range(layers):
                inside = band is not None and band[0] <= layer <= band[1]
                scale = run_noise * (band_noise if inside else 1.0)
                maps = base + scale * rng.normal(size=base.shape)
                writer.submit(step, layer, "cond", maps.astype(np.float32))
    return Path(path)
