"""Rank layers by semantic responsiveness and pick the semantic-weak layers (paper §3.2).

Per layer: the metric averaged over steps (optionally a window), keywords and frames
(paper Eq. 4), then over runs (the paper averages 50 samples).  The spread is the std
of the per-(run, step, keyword, frame) values behind that mean, so a curve can carry a
band like the paper's Figure 2.

Weak-layer methods:

* ``band`` (default): the contiguous band of low values.  Each layer scores
  ``threshold - value`` with the threshold the mean over layers (or ``--threshold``);
  the band is the contiguous run of layers with the largest total score (maximum-sum
  segment), so one noisy layer inside the dip does not split it.
* ``bottom-k``: the k layers with the lowest values.
* ``threshold``: every layer with value below ``--threshold``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from layerscope.errors import LayerScopeError

METHODS = ("band", "bottom-k", "threshold")
METRICS = ("moran_i", "std")


class RankingError(LayerScopeError):
    """Ranking parameters do not fit the data (a usage error)."""


@dataclass
class Ranking:
    """A per-layer table and the weak layers chosen from it; ``to_dict`` is the JSON."""

    metric: str
    method: str
    params: dict[str, Any]
    layers: list[dict[str, Any]]
    weak_layers: list[int]
    explanation: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    nan_maps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "weak_layers": self.weak_layers,
            "metric": self.metric,
            "method": self.method,
            "params": self.params,
            "explanation": self.explanation,
            "layers": self.layers,
            "runs": self.runs,
            "model": self.model,
            "probe": self.probe,
            "nan_maps": self.nan_maps,
        }

    def save(self, path: str | Path) -> Path:
        """Write the ranking JSON (atomically); the one writer of the format."""
        from layerscope.outputs import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path, option: str = "--ranking") -> Ranking:
        """Read a ranking JSON written by :meth:`save`; the one reader of the format.

        Every way a file can be wrong (missing, a directory, not UTF-8, not JSON, wrong
        types) is one :class:`RankingError` line naming the file and the fix.
        """
        path = Path(path)
        fix = "write it with `layerscope rank STORES --out FILE`"
        if not str(path).strip():
            raise RankingError(f"{option} is empty; {fix}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RankingError(f"{option} {path}: no such file; {fix}") from None
        except IsADirectoryError:
            raise RankingError(f"{option} {path} is a directory; pass the ranking JSON file") from None
        except UnicodeDecodeError:
            raise RankingError(f"{option} {path} is not UTF-8 text; {fix}") from None
        except json.JSONDecodeError as error:
            raise RankingError(f"{option} {path} is not JSON ({error}); {fix}") from None
        except OSError as error:
            raise RankingError(f"{option} {path} cannot be read ({error.strerror})") from None
        if not isinstance(data, dict):
            raise RankingError(f"{option} {path}: expected a JSON object; {fix}")
        weak = data.get("weak_layers")
        if not isinstance(weak, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in weak):
            raise RankingError(f"{option} {path}: 'weak_layers' must be a list of layer indices; {fix}")
        for key, kind in (("layers", list), ("runs", list), ("model", dict), ("probe", dict), ("params", dict)):
            if not isinstance(data.get(key, kind()), kind):
                raise RankingError(f"{option} {path}: '{key}' must be a JSON {kind.__name__}; {fix}")
        known = {f.name for f in fields(cls)}
        try:
            return cls(
                **{
                    "metric": str(data.get("metric", "moran_i")),
                    "method": str(data.get("method", "band")),
                    "explanation": str(data.get("explanation", "")),
                    "params": {},
                    "layers": [],
                    **{k: v for k, v in data.items() if k in known and k not in ("metric", "method", "explanation")},
                }
            )
        except TypeError as error:
            raise RankingError(f"{option} {path}: {error}; {fix}") from None

    def table(self) -> str:
        """A readable terminal table, weak layers starred."""
        lines = [f"{'layer':>5}  {'block':<10} {'moran_i':>9} {'±':>7} {'std':>7} {'±':>7}  weak"]
        for row in self.layers:
            star = "*" if row["layer"] in self.weak_layers else ""
            lines.append(
                f"{row['layer']:>5}  {row['block']:<10} {row['moran_i']:>9.4f} {row['moran_i_spread']:>7.4f} "
                f"{row['std']:>7.4f} {row['std_spread']:>7.4f}  {star}"
            )
        lines.append(f"weak layers ({self.method} on {self.metric}): {_ranges(self.weak_layers)}")
        lines.append(self.explanation)
        return "\n".join(lines)


def _ranges(indices: list[int]) -> str:
    if not indices:
        return "none"
    parts, start, prev = [], indices[0], indices[0]
    for i in indices[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)


def _or_blank(value: int | None) -> str:
    return "" if value is None else str(value)


def max_sum_band(values: np.ndarray, threshold: float) -> tuple[int, int]:
    """Indices [start, end] of the contiguous segment maximising sum(threshold - values)."""
    scores = threshold - np.asarray(values, dtype=np.float64)
    best, best_span = -np.inf, (0, 0)
    running, start = 0.0, 0
    for i, s in enumerate(scores):
        if running <= 0:
            running, start = s, i
        else:
            running += s
        if running > best:
            best, best_span = running, (start, i)
    return best_span


def select_weak(
    values: np.ndarray, method: str = "band", k: int | None = None, threshold: float | None = None
) -> tuple[list[int], str, dict[str, Any]]:
    """Positions of weak layers in ``values`` (NaN-free), an explanation, and the params used."""
    if method not in METHODS:
        raise RankingError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).all():
        raise RankingError("no layer has a finite value (no map was written, or all maps were constant)")
    # a layer without any finite map is never called weak: there is nothing to judge
    values = np.where(np.isnan(values), np.inf, values)
    if method == "bottom-k":
        if k is None or not 1 <= k <= len(values):
            raise RankingError(f"bottom-k needs --k between 1 and {len(values)}")
        chosen = sorted(np.argsort(values, kind="stable")[:k].tolist())
        return chosen, f"the {k} layers with the lowest values", {"k": k}
    if method == "threshold":
        if threshold is None:
            raise RankingError("the threshold method needs --threshold T")
        chosen = np.flatnonzero(values < threshold).tolist()
        return chosen, f"layers with value below {threshold:g}", {"threshold": threshold}
    finite = values[np.isfinite(values)]
    cut = float(finite.mean()) if threshold is None else float(threshold)
    if not (values < cut).any():
        return [], f"no layer is below the band threshold {cut:.4f}", {"threshold": cut}
    start, end = max_sum_band(values, cut)
    explanation = (
        f"band: the contiguous layers {start}-{end} maximise the summed shortfall below "
        f"{'the mean over layers' if threshold is None else 'the threshold'} ({cut:.4f})"
    )
    return list(range(start, end + 1)), explanation, {"threshold": cut}


def parse_step_window(text: str | None) -> slice | None:
    """``"A:B"`` -> slice over step *indices* (Python semantics, B exclusive)."""
    if not text:
        return None
    try:
        start, _, stop = text.partition(":")
        return slice(int(start) if start else None, int(stop) if stop else None)
    except ValueError:
        raise RankingError(f"cannot read --steps {text!r}; use A:B, e.g. 0:25") from None


def rank_datasets(
    datasets: list[Any],
    *,
    metric: str = "moran_i",
    steps: slice | None = None,
    method: str = "band",
    k: int | None = None,
    threshold: float | None = None,
    names: list[str] | None = None,
) -> Ranking:
    """Rank layers over one or more runs whose metrics are computed (see ``ensure_metrics``)."""
    if metric not in METRICS:
        raise RankingError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    first = datasets[0]
    layers = [int(v) for v in first["layer"].values]
    per_metric: dict[str, list[np.ndarray]] = {"moran_i": [], "std": []}
    for ds in datasets:
        if [int(v) for v in ds["layer"].values] != layers:
            raise RankingError("runs record different layers; rank runs of the same model and --layers")
        window = ds if steps is None else ds.isel(step=steps)
        if ds.attrs.get("status", "complete") != "complete":
            # a partial store: only the steps that were written carry maps
            written = set(ds.attrs.get("steps_written", []))
            window = window.sel(step=[s for s in window["step"].values.tolist() if s in written])
        if window.sizes["step"] == 0:
            raise RankingError(f"--steps selects no step (runs have {ds.sizes['step']} steps)")
        for name in per_metric:
            values = window[name].transpose("layer", ...).values.reshape(len(layers), -1)
            per_metric[name].append(values)
    table = []
    stacked = {name: np.concatenate(parts, axis=1) for name, parts in per_metric.items()}
    nan_maps = int(np.isnan(stacked["moran_i"]).sum())
    for position, layer in enumerate(layers):
        row = {"layer": layer, "block": str(first["block"].values[position])}
        for name, values in stacked.items():
            finite = values[position][np.isfinite(values[position])]
            # mean over (steps, keywords, frames) within each run, then over runs (Eq. 4)
            run_means = [
                np.nanmean(p[position]) if np.isfinite(p[position]).any() else np.nan for p in per_metric[name]
            ]
            row[name] = float(np.nanmean(run_means)) if np.isfinite(run_means).any() else float("nan")
            row[f"{name}_spread"] = float(finite.std()) if finite.size else float("nan")
            row[f"{name}_per_run"] = [float(v) for v in run_means]
        row["n_maps"] = int(stacked["moran_i"][position].size)
        row["nan_maps"] = int(np.isnan(stacked["moran_i"][position]).sum())
        table.append(row)
    curve = np.array([row[metric] for row in table])
    positions, explanation, params = select_weak(curve, method, k, threshold)
    runs = [
        {
            "path": (names[i] if names else ""),
            "prompt": ds.attrs.get("prompt", ""),
            "seed": ds.attrs.get("seed"),
            "status": ds.attrs.get("status"),
            "steps": [int(s) for s in (ds if steps is None else ds.isel(step=steps))["step"].values],
        }
        for i, ds in enumerate(datasets)
    ]
    model = {key: first.attrs.get(key) for key in ("model_id", "weights", "pipeline_class", "num_layers", "grid")}
    transformation = first["moran_i"].attrs.get("transformation", "b")
    return Ranking(
        metric=metric,
        method=method,
        params={
            **params,
            "steps": None if steps is None else f"{_or_blank(steps.start)}:{_or_blank(steps.stop)}",
            "transformation": transformation,
            "aggregation": "mean over steps, keywords, frames per run, then over runs",
        },
        layers=table,
        weak_layers=[layers[p] for p in positions],
        explanation=explanation + (f"; {nan_maps} constant maps (NaN) left out" if nan_maps else ""),
        runs=runs,
        model=model,
        probe=dict(first.attrs.get("probe", {})),
        nan_maps=nan_maps,
    )


def rank_stores(
    paths: list[str | Path],
    *,
    transformation: str = "b",
    allow_partial: bool = False,
    recompute: bool = False,
    **kwargs: Any,
) -> Ranking:
    """Compute (or reuse) metrics in each store, then rank (what ``layerscope rank`` runs)."""
    from layerscope.metrics import ensure_metrics

    datasets = [ensure_metrics(p, transformation, recompute=recompute, allow_partial=allow_partial) for p in paths]
    models = {ds.attrs.get("model_id") for ds in datasets}
    if len(models) > 1:
        raise RankingError(f"runs come from different models ({', '.join(map(str, models))}); rank one model at a time")
    return rank_datasets(datasets, names=[str(p) for p in paths], **kwargs)
