"""Figures of a run, each returned as a matplotlib Figure (Agg backend, no display needed).

They follow the paper: Figure 1 (similarity maps of layers x steps overlaid on the
frame they belong to) and Figure 2 (Moran's I and std per layer with 95% CI error bars),
plus the before/after delta of a Focal Guidance comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

WEAK_BAND_COLOUR = "#f4a261"
#: Label sizes of the similarity grid, in points.  The report embeds the grid at
#: ``GRID_DPI = 72`` and never scales it down, so a point is a CSS pixel and labels are
#: 11-13 px at 100% zoom (at 7 pt and 60 dpi they were under 6 px).
GRID_LABEL_POINTS = 11
GRID_TITLE_POINTS = 13
GRID_DPI = 72


def new_figure(nrows: int, ncols: int, figsize: tuple[float, float], **subplot_kw: Any) -> tuple[Any, Any]:
    """A figure outside pyplot: no global state, no backend switch, safe in servers and notebooks.

    Styled with seaborn's "whitegrid"/"paper" look, applied only while the axes are made.
    """
    import seaborn as sns
    from matplotlib.figure import Figure

    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        fig = Figure(figsize=figsize)
        axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def pick_steps(steps: Sequence[int], count: int = 5) -> list[int]:
    """Evenly spaced steps including the first and last (Figure 1 shows a handful)."""
    steps = list(steps)
    if len(steps) <= count:
        return steps
    positions = np.linspace(0, len(steps) - 1, count).round().astype(int)
    return [steps[p] for p in dict.fromkeys(positions.tolist())]


def video_frame_for_latent(latent_frame: int, video_frames: int, temporal_stride: int = 4) -> int:
    """The pixel frame a latent frame stands for (Wan: frame 0, then one per 4 frames)."""
    return int(min(video_frames - 1, latent_frame * temporal_stride))


def similarity_grid(
    ds: Any,
    keyword: str,
    *,
    steps: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    frame: int = 0,
    vmin: float | None = None,
    vmax: float | None = None,
    cell_inches: float = 1.1,
    variable: str = "similarity",
) -> Any:
    """Figure-1-style grid: rows are layers, columns steps; each map over its video frame.

    One colour scale for the whole grid (``vmin``/``vmax``, default the grid's 1st-99th
    percentile), so cells compare at a glance; a shared colorbar on the right.
    """
    steps = list(steps) if steps is not None else pick_steps(ds["step"].values.tolist())
    layers = list(layers) if layers is not None else ds["layer"].values.tolist()
    maps = ds[variable].sel(keyword=keyword, step=steps, layer=layers).isel(frame=frame).values.astype(np.float32)
    finite = maps[np.isfinite(maps)]
    if vmin is None or vmax is None:
        low, high = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
        vmin = low if vmin is None else vmin
        vmax = high if vmax is None else vmax
    background = _frame_image(ds, frame)
    fig, axes = new_figure(
        len(layers),
        len(steps),
        figsize=(cell_inches * len(steps) + 1.2, cell_inches * len(layers) + 0.6),
        gridspec_kw={"wspace": 0.04, "hspace": 0.04},
    )
    image = None
    height, width = maps.shape[-2:]
    for row, layer in enumerate(layers):
        for col, step in enumerate(steps):
            ax = axes[row, col]
            if background is not None:
                ax.imshow(background, extent=(0, width, height, 0), interpolation="bilinear")
            image = ax.imshow(
                maps[col, row],
                cmap="magma",
                vmin=vmin,
                vmax=vmax,
                alpha=0.65 if background is not None else 1.0,
                extent=(0, width, height, 0),
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if col == 0:
                ax.set_ylabel(f"L{layer}", rotation=0, ha="right", va="center", fontsize=GRID_LABEL_POINTS)
            if row == 0:
                ax.set_title(f"step {step}", fontsize=GRID_LABEL_POINTS)
    if image is not None:
        bar = fig.colorbar(image, ax=axes, shrink=0.6, pad=0.02)
        bar.set_label("similarity", fontsize=GRID_LABEL_POINTS)
        bar.ax.tick_params(labelsize=GRID_LABEL_POINTS)
    fig.suptitle(f"'{keyword}' — latent frame {frame}", fontsize=GRID_TITLE_POINTS)
    return fig


def _frame_image(ds: Any, latent_frame: int) -> np.ndarray | None:
    if "video" in ds and ds["video"].size and np.asarray(ds["video"].isel(frame_px=0).values).any():
        index = video_frame_for_latent(latent_frame, ds.sizes["frame_px"])
        return np.asarray(ds["video"].isel(frame_px=index).values)
    if "reference" in ds:
        return np.asarray(ds["reference"].values)
    return None


def layer_curves(
    rankings: Sequence[Any],
    labels: Sequence[str],
    weak_layers: Sequence[int] = (),
    metrics: Sequence[str] = ("moran_i", "std"),
) -> Any:
    """Figure-2-style curves: per-layer mean with 95% CI error bars, weak band shaded.

    The bars are the ranking's intervals (bootstrap over runs, or over steps for one
    run), not the spread of the maps: they say how well each mean is known.

    ``rankings`` are :class:`layerscope.ranking.Ranking` objects (one per run, drawn on
    shared axes so a before/after pair compares directly).
    """
    fig, axes = new_figure(1, len(metrics), figsize=(5.2 * len(metrics), 3.0))
    palette = ["#264653", "#e76f51", "#2a9d8f", "#8d99ae"]
    for ax, metric in zip(axes[0], metrics):
        _shade_band(ax, weak_layers)
        for i, (ranking, label) in enumerate(zip(rankings, labels)):
            layers = np.array([row["layer"] for row in ranking.layers])
            mean = np.array([row[metric] for row in ranking.layers])
            ci = np.array([row[f"{metric}_ci"] for row in ranking.layers], dtype=np.float64)
            colour = palette[i % len(palette)]
            offset = (i - (len(rankings) - 1) / 2) * 0.15  # side by side, not on top of each other
            ax.errorbar(
                layers + offset,
                mean,
                yerr=np.abs(np.stack([mean - ci[:, 0], ci[:, 1] - mean])),
                marker="o",
                markersize=3,
                lw=1.5,
                capsize=2,
                color=colour,
                label=label,
            )
        ax.set_xlabel("layer")
        ax.set_ylabel("Moran's I" if metric == "moran_i" else "std of normalised map")
        if len(rankings) > 1 or weak_layers:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _shade_band(ax: Any, weak_layers: Sequence[int]) -> None:
    if len(weak_layers):
        low, high = min(weak_layers) - 0.5, max(weak_layers) + 0.5
        ax.axvspan(low, high, color=WEAK_BAND_COLOUR, alpha=0.25, label="weak band")


def delta_curves(before: Any, after: Any, weak_layers: Sequence[int] = ()) -> Any:
    """Per-layer change (after - before) of Moran's I and std, weak band shaded."""
    fig, axes = new_figure(1, 2, figsize=(10.4, 2.8))
    layers = np.array([row["layer"] for row in before.layers])
    for ax, metric in zip(axes[0], ("moran_i", "std")):
        _shade_band(ax, weak_layers)
        delta = np.array([a[metric] - b[metric] for a, b in zip(after.layers, before.layers)])
        ax.bar(layers, delta, color=np.where(delta >= 0, "#2a9d8f", "#e76f51"))
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"Δ {'Moran' + chr(39) + 's I' if metric == 'moran_i' else 'std'} (after − before)")
    fig.tight_layout()
    return fig
