"""Self-contained HTML reports of one run, or of a before/after pair of runs.

Everything the page shows is inside the file (figures as PNG data URIs, the video as an
animated GIF data URI, CSS and a few lines of JS inline), so a reviewer can open it
offline from mail or chat.  jinja2 autoescaping is on: prompts are user text.
"""

from __future__ import annotations

import base64
import io
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from layerscope.errors import LayerScopeError
from layerscope.locations import location
from layerscope.report import figures

MAX_VIDEO_WIDTH = 320
MAX_VIDEO_FRAMES = 41
FIGURE_DPI = 80


class ReportError(LayerScopeError):
    """Runs that cannot be reported or compared as asked (a usage error)."""


def _template_dir() -> Path:
    """The jinja2 templates: inside the installed wheel, or ``reports/templates`` of a source checkout.

    The wheel build copies ``reports/templates`` to ``layerscope/report/templates``
    (pyproject's ``force-include``); an editable install runs from the checkout, where
    they sit at the repository's top level.
    """
    packaged = Path(str(resources.files("layerscope.report"))) / "templates"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "reports" / "templates"
    if checkout.is_dir():
        return checkout
    raise ReportError("the report templates are missing from this installation; reinstall layerscope")


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_template_dir())),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["tojson_pretty"] = lambda value: json.dumps(value, indent=2, default=str)
    return env


def figure_uri(fig: Any, dpi: int = FIGURE_DPI) -> str:
    """PNG data URI of a matplotlib figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_uri(array: np.ndarray, max_width: int = MAX_VIDEO_WIDTH) -> str:
    from PIL import Image

    image = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def video_uri(frames: np.ndarray, fps: int = 8) -> tuple[str, str]:
    """Animated GIF data URI (downsampled) and a note saying how it was reduced."""
    from PIL import Image

    frames = np.asarray(frames, dtype=np.uint8)
    total, height, width = frames.shape[:3]
    stride = max(1, int(np.ceil(total / MAX_VIDEO_FRAMES)))
    chosen = frames[::stride]
    scale = min(1.0, MAX_VIDEO_WIDTH / width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    images = [Image.fromarray(f).resize(size) if scale < 1 else Image.fromarray(f) for f in chosen]
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 * stride / fps), loop=0
    )
    note = f"{len(chosen)} of {total} frames at {size[0]}x{size[1]} px"
    return "data:image/gif;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), note


def prompt_segments(ds: Any) -> list[dict[str, Any]]:
    """The (cleaned) prompt cut into plain and keyword segments, for highlighting."""
    text = ds.attrs.get("prompt_cleaned") or ds.attrs.get("prompt", "")
    spans = sorted(
        (start, end, item["keyword"]) for item in ds.attrs.get("keywords", []) for start, end in item["char_spans"]
    )
    segments, cursor = [], 0
    for start, end, keyword in spans:
        if start < cursor:
            continue
        if start > cursor:
            segments.append({"text": text[cursor:start], "keyword": None})
        segments.append({"text": text[start:end], "keyword": keyword})
        cursor = end
    if cursor < len(text):
        segments.append({"text": text[cursor:], "keyword": None})
    return segments


def _with_metrics(ds: Any) -> tuple[Any, str | None]:
    """The run with metrics: the stored ones, or computed in memory (and the page says so)."""
    if all(name in ds for name in ("moran_i", "std")):
        return ds, None
    return ds.assign(ds.layerscope.metrics().data_vars), "Metrics were computed for this report and not stored."


def _settings(ds: Any) -> list[tuple[str, str]]:
    a = ds.attrs
    probe = a.get("probe", {})
    return [
        ("model", f"{a.get('model_id', '?')} ({a.get('pipeline_class', '?')})"),
        ("weights", str(a.get("weights", "unknown"))),
        ("seed", str(a.get("seed", "?"))),
        ("denoising steps", f"{a.get('num_inference_steps', '?')} (recorded: {ds.sizes['step']})"),
        ("resolution", f"{a.get('width', '?')}x{a.get('height', '?')} px, {a.get('num_frames', '?')} frames"),
        ("token grid (F', H', W')", " x ".join(str(g) for g in a.get("grid", []))),
        ("guidance", str(a.get("guidance_scale", "?"))),
        ("probe", f"{a.get('probe_kind', probe.get('kind', '?'))}"),
        ("branch", str(a.get("branch", "?"))),
        ("layers recorded", f"{ds.sizes['layer']} of {a.get('num_layers', '?')}"),
        ("status", str(a.get("status", "?"))),
        ("created", str(a.get("created", "?"))),
    ]


def _run_context(ds: Any, name: str, rank_kwargs: dict[str, Any]) -> dict[str, Any]:
    from layerscope.ranking import RankingError, rank_datasets

    ds, metrics_note = _with_metrics(ds)
    try:
        ranking = rank_datasets([ds], names=[name], **rank_kwargs)
    except RankingError as error:
        status = ds.attrs.get("status")
        raise ReportError(f"cannot report {name} (status {status}): {error}") from None
    video, video_note = (None, None)
    if "video" in ds and np.asarray(ds["video"].values).any():
        video, video_note = video_uri(ds["video"].values)
    status = ds.attrs.get("status")
    warnings = []
    if ds.attrs.get("weights") == "random":
        warnings.append(
            "This run was made by a model with random weights: its maps show the recording machinery, "
            "not learned semantics."
        )
    if status != "complete":
        written = len(ds.attrs.get("steps_written", []))
        warnings.append(f"This store is {status}: {written} of {ds.sizes['step']} steps were written.")
    # stores written by other tools (or older versions) may lack some provenance: say "?"
    shown = {key: "?" for key in ("model_id", "weights", "probe_kind", "branch", "status")}
    shown.update({"probe": {}, "keywords": []}, **ds.attrs)
    return {
        "name": name,
        "ds": ds,
        "attrs": shown,
        "settings": _settings(ds),
        "prompt": prompt_segments(ds),
        "negative_prompt": ds.attrs.get("negative_prompt", ""),
        "keywords": [str(k) for k in ds["keyword"].values],
        "reference": image_uri(ds["reference"].values) if "reference" in ds else None,
        "video": video,
        "video_note": video_note,
        "ranking": ranking,
        "metrics_note": metrics_note,
        "warnings": warnings,
        "intervention": ds.attrs.get("intervention", "none"),
        "versions": ds.attrs.get("package_versions", {}),
    }


def _grid_sections(contexts: list[dict[str, Any]], steps_shown: int) -> list[dict[str, Any]]:
    """One section per keyword: the Figure-1 grid of every run on one shared colour scale."""
    sections = []
    for position, keyword in enumerate(contexts[0]["keywords"]):
        values = []
        for ctx in contexts:
            ds = ctx["ds"]
            kw = str(ds["keyword"].values[position])
            chosen = figures.pick_steps(ds["step"].values.tolist(), steps_shown)
            values.append(ds["similarity"].sel(keyword=kw, step=chosen).isel(frame=0).values.astype(np.float32))
        finite = np.concatenate([v[np.isfinite(v)] for v in values])
        vmin, vmax = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
        grids = []
        for ctx in contexts:
            ds = ctx["ds"]
            kw = str(ds["keyword"].values[position])
            fig = figures.similarity_grid(
                ds, kw, steps=figures.pick_steps(ds["step"].values.tolist(), steps_shown), vmin=vmin, vmax=vmax
            )
            grids.append({"label": ctx["name"], "uri": figure_uri(fig, dpi=figures.GRID_DPI)})
        sections.append({"keyword": keyword, "slug": f"kw{position}", "grids": grids})
    return sections


def delta_by_role(before: Any, after: Any, touched: list[int]) -> list[dict[str, Any]]:
    """Mean after-minus-before of the intrinsic metrics, for layers upstream of, touched by and downstream of FG.

    Upstream layers can change only through the latents of earlier steps; touched layers
    show FG's effect on their own (intrinsic) maps; downstream layers show what the
    injected terms did to the rest of the stack.  Kept apart so one number cannot hide
    another.
    """
    rows_before = {row["layer"]: row for row in before.layers}
    rows_after = {row["layer"]: row for row in after.layers}
    layers = sorted(set(rows_before) & set(rows_after))
    first, last = (min(touched), max(touched)) if touched else (None, None)
    roles = {
        "upstream (before the first touched layer)": [lay for lay in layers if first is not None and lay < first],
        "touched by the intervention": [lay for lay in layers if lay in set(touched)],
        "downstream (after the last touched layer)": [lay for lay in layers if last is not None and lay > last],
    }
    groups = []
    for role, members in roles.items():
        entry: dict[str, Any] = {"role": role, "layers": members}
        for metric in ("moran_i", "std"):
            diffs = [rows_after[lay][metric] - rows_before[lay][metric] for lay in members]
            finite = [d for d in diffs if np.isfinite(d)]
            entry[metric] = float(np.mean(finite)) if finite else float("nan")
        groups.append(entry)
    return groups


def _check_comparable(before: Any, after: Any) -> list[str]:
    problems = []
    for key in ("model_id", "prompt", "seed", "grid", "height", "width", "num_frames"):
        if before.attrs.get(key) != after.attrs.get(key):
            problems.append(f"{key} differs ({before.attrs.get(key)!r} vs {after.attrs.get(key)!r})")
    if [int(v) for v in before["layer"].values] != [int(v) for v in after["layer"].values]:
        problems.append("recorded layers differ")
    return problems


def render(
    run: str | os.PathLike | Any,
    compare: str | os.PathLike | Any | None = None,
    *,
    force: bool = False,
    steps_shown: int = 5,
    rank_kwargs: dict[str, Any] | None = None,
) -> str:
    """HTML of one run, or of ``run`` (before) against ``compare`` (after).

    ``run``/``compare`` are store paths or opened datasets.  A pair that does not share
    model, prompt, seed and grid is refused unless ``force``.
    """
    import layerscope

    rank_kwargs = rank_kwargs or {}
    datasets = []
    names = []
    for item in (run, compare):
        if item is None:
            continue
        if isinstance(item, (str, os.PathLike)):
            datasets.append(layerscope.open_run(item))
            names.append(location(item).name)
        else:
            datasets.append(item)
            names.append(str(item.attrs.get("model_id", "run")))
    if len(datasets) == 2:
        problems = _check_comparable(*datasets)
        if problems and not force:
            raise ReportError("runs are not a before/after pair: " + "; ".join(problems) + " (pass --force to compare)")
        names = [f"before: {names[0]}", f"after: {names[1]}"]
    contexts = [_run_context(ds, name, rank_kwargs) for ds, name in zip(datasets, names)]
    weak = contexts[0]["ranking"].weak_layers
    if len(contexts) == 2 and contexts[1]["intervention"] not in ("none", None, {}):
        configured = contexts[1]["intervention"]
        if isinstance(configured, dict) and configured.get("weak_layers"):
            weak = list(configured["weak_layers"])
    curves = figure_uri(
        figures.layer_curves([c["ranking"] for c in contexts], [c["name"] for c in contexts], weak_layers=weak)
    )
    delta = None
    groups: list[dict[str, Any]] = []
    if len(contexts) == 2:
        touched = list(datasets[1].attrs.get("guided_layers") or datasets[1].attrs.get("injected_layers") or weak)
        groups = delta_by_role(contexts[0]["ranking"], contexts[1]["ranking"], touched)
        delta = figure_uri(figures.delta_curves(contexts[0]["ranking"], contexts[1]["ranking"], weak_layers=weak))
    from layerscope import __version__

    template = _environment().get_template("compare.html.j2" if len(contexts) == 2 else "run.html.j2")
    return template.render(
        runs=contexts,
        sections=_grid_sections(contexts, steps_shown),
        curves=curves,
        delta=delta,
        delta_groups=groups,
        weak_layers=weak,
        layerscope_version=__version__,
        thumbnail_note=f"Similarity grids show {steps_shown} evenly spaced steps, latent frame 0, "
        f"at {figures.GRID_DPI} dpi (1 pt = 1 px at 100% zoom); videos are downsampled GIFs.",
    )


def render_sweep(sweep_dir: str | os.PathLike, *, rank_kwargs: dict[str, Any] | None = None) -> str:
    """HTML of a sweep: the verdict over its runs, per-layer CIs over runs, and the runs' prompts.

    The claim is about the model, so the page leads with the computed verdict and its p,
    then the curves with 95% CI error bars (bootstrap over runs), then every run that went
    into it (and those that did not, with their status).
    """
    from layerscope import __version__
    from layerscope.ranking import instrument_agreement, rank_stores
    from layerscope.sweep import sweep_index

    index = sweep_index(sweep_dir)
    stores = [location(sweep_dir) / run["store"] for run in index["runs"] if run["status"] == "complete"]
    if not stores:
        raise ReportError(f"{sweep_dir}: the sweep has no complete store yet; run `layerscope sweep` to finish it")
    ranking = rank_stores(stores, **(rank_kwargs or {}))
    agreement = instrument_agreement(ranking)
    name = location(sweep_dir).resolve().name
    curves = figure_uri(figures.layer_curves([ranking], [f"{ranking.n_runs} runs"], weak_layers=ranking.weak_layers))
    template = _environment().get_template("sweep.html.j2")
    return template.render(
        name=name,
        ranking=ranking,
        run={"ranking": ranking, "metrics_note": None},
        runs=index["runs"],
        counts=index["counts"],
        curves=curves,
        agreement=agreement,
        layerscope_version=__version__,
    )


def is_sweep_dir(path: str | os.PathLike) -> bool:
    from layerscope.sweep import PLAN_FILE

    where = location(path)
    return where.is_dir() and (where / PLAN_FILE).is_file()


def write(
    run: str | os.PathLike | Any,
    out: str | os.PathLike,
    compare: str | os.PathLike | Any | None = None,
    **kwargs: Any,
) -> Any:
    """Render and write atomically (a half-written report never replaces a good one)."""
    from layerscope.outputs import check_output_path, write_text_atomic

    check_output_path(out)  # before the rendering work
    if compare is None and isinstance(run, (str, os.PathLike)) and is_sweep_dir(run):
        return write_text_atomic(out, render_sweep(run, rank_kwargs=kwargs.get("rank_kwargs")))
    return write_text_atomic(out, render(run, compare, **kwargs))
