"""Does a keyword's map point at the object the keyword names?  AUROC against the world's masks.

Why: Moran's I and std say whether a map has spatial structure, not whether that
structure is the object.  In the shapes world the truth is known: the renderer draws
every shape from the scene, so each keyword (the subject's colour or kind) has a mask.
Per (step, layer, keyword, latent frame) the AUROC of the map's values for the tokens
inside the mask against those outside is the chance that a random object token scores
above a random background token: 0.5 is chance, 1 perfect, below 0.5 a map that marks
the background (CLIP Surgery's "opposite visualisation").

Masks on the token grid: a token is inside when at least half of its cell's pixels (the
video's pixel centres, as the renderer paints them) are the subject's.  Latent frame 0 is
the first frame; latent frame j >= 1 covers pixel frames ``4(j-1)+1 .. 4j`` (Wan's VAE
stride 4), and its mask is the union of the subject's *scripted* positions over those
frames (the trajectory).  Frame 0's mask is exact (the conditioning image); later masks
say where the object should be, which a model that does not follow the prompt does not
draw.

Ties count one half (Mann-Whitney with mid-ranks), so a constant map scores exactly 0.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from layerscope.errors import UsageError

TEMPORAL_STRIDE = 4


def token_masks(
    scene: Any,
    grid: tuple[int, int, int],
    num_frames: int,
    pixels: tuple[int, int] = (256, 256),
    coverage: float = 0.5,
) -> np.ndarray:
    """(F', H', W') bool: the subject's cells per latent frame (first frame, then trajectory).

    ``pixels`` (height, width) of the video: each token cell is ``pixels / grid`` pixels.
    """
    from layerscope_testbed.shapes.world import shape_mask, shape_state

    frames, height, width = grid
    if pixels[0] % height or pixels[1] % width:
        raise ValueError(f"a {pixels} video does not tile a {height}x{width} token grid")
    per_y, per_x = pixels[0] // height, pixels[1] // width
    fine_y = (np.arange(pixels[0]) + 0.5) / pixels[0]
    fine_x = (np.arange(pixels[1]) + 0.5) / pixels[1]
    subject = scene.event.subject
    shape = scene.shapes[subject]
    masks = np.zeros(grid, dtype=bool)
    for latent in range(frames):
        pixel_frames = [0] if latent == 0 else range(TEMPORAL_STRIDE * (latent - 1) + 1, TEMPORAL_STRIDE * latent + 1)
        union = np.zeros((fine_y.size, fine_x.size), dtype=bool)
        for frame in pixel_frames:
            fraction = min(frame, num_frames - 1) / max(1, num_frames - 1)
            cx, cy, _ = shape_state(scene, subject, fraction)
            union |= shape_mask(shape.kind, cx, cy, shape.size, fine_x[None, :], fine_y[:, None])
        cells = union.reshape(height, per_y, width, per_x).mean(axis=(1, 3))
        masks[latent] = cells >= coverage
    return masks


def auroc(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """AUROC of each map against its frame's mask: (..., F', H', W') x (F', H', W') -> (..., F').

    NaN where a frame's mask is all inside or all outside (no contrast to score).
    """
    from scipy.stats import rankdata

    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    frames = masks.shape[0]
    flat = maps.reshape(*maps.shape[:-2], -1)  # (..., F', N)
    ranks = rankdata(flat, axis=-1)  # mid-ranks for ties
    inside = masks.reshape(frames, -1)
    positives = inside.sum(axis=-1).astype(np.float64)
    negatives = inside.shape[-1] - positives
    rank_sum = (ranks * inside).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), score, np.nan)


def scene_of(ds: Any, where: str) -> Any:
    """The shapes-world scene a store was recorded from (its ``prompt_meta``), or one clear line."""
    from layerscope_testbed.shapes.world import Scene

    meta = ds.attrs.get("prompt_meta") or {}
    if not isinstance(meta, dict) or "scene" not in meta:
        raise UsageError(
            f"{where}: the store has no shapes-world scene (prompt_meta.scene); record it with `layerscope sweep` "
            "from a prompt file written by `layerscope testbed prompts`"
        )
    return Scene.from_dict(meta["scene"])


def write_auroc(path: str | Path) -> Any:
    """Compute ``auroc`` (step, layer, keyword, frame) of a store's maps and write it into the store.

    Both keywords of a shapes prompt (the subject's colour and kind) name the subject,
    so they share its mask.  Returns the written DataArray.
    """
    import xarray as xr

    from layerscope.store import open_run, write_metrics

    ds = open_run(path)
    scene = scene_of(ds, str(path))
    grid = tuple(int(ds.sizes[d]) for d in ("frame", "y", "x"))
    pixels = (int(ds.attrs.get("height", 256)), int(ds.attrs.get("width", 256)))
    masks = token_masks(scene, grid, int(ds.attrs.get("num_frames", 9)), pixels)
    maps = ds["similarity"].transpose("step", "layer", "keyword", "frame", "y", "x").values
    scores = auroc(maps, masks)
    array = xr.DataArray(
        scores,
        dims=("step", "layer", "keyword", "frame"),
        coords={d: ds[d] for d in ("step", "layer", "keyword", "frame")},
        attrs={
            "long_name": "AUROC of the map against the subject's mask",
            "mask": "cells >= 50% covered; frame 0 first frame, later frames the scripted trajectory",
            "source_variable": "similarity",
        },
    )
    write_metrics(path, xr.Dataset({"auroc": array}))
    return array
