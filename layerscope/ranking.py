"""Rank layers by semantic responsiveness and decide whether a semantic-weak band exists.

The paper (§3.2, Figure 2) averages Moran's I and std of the keyword similarity maps
over steps, keywords and frames (Eq. 4-5) and over 50 samples, and calls the low
intermediate layers semantic-weak.  Here that claim has to survive statistics:

* the **prompt** is the unit (a run, prompt x seed, when prompts do not repeat): per
  layer each run contributes one mean, seeds of a prompt are averaged, and the layer's 95%
  interval is a cluster bootstrap over units.  One run, or fewer than ``--min-runs``
  units, gives no verdict (one run's intervals are over its steps: that run only);
* the **band** is the interior dip that scores highest against both of its flanks, and
  the verdict comes from :mod:`layerscope.significance`'s split-sample test: chosen on
  some units, tested on the others, with its relative drop, its distinctness from a
  smooth trend and its edges as intervals;
* the **verdict** is computed: ``weak band L-M (p=..., drop ... [CI], n_runs=...)``,
  ``smooth trough L-M, no distinct band (...)``, ``no weak band (...)`` or ``too few runs
  for a verdict``; only the first fills ``weak_layers``, so nothing downstream guides
  layers that the data does not single out.

``bottom-k`` and ``threshold`` remain for users who want to force a choice; they report
the band verdict beside it.  Multi-expert stores (Wan2.2) are ranked per expert as well.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from layerscope.errors import LayerScopeError

METHODS = ("band", "bottom-k", "threshold")
#: statistics only some stores carry (``auroc``: written by ``layerscope testbed auroc`` on
#: shapes-world stores, the maps' localisation of the keyword's object)
OPTIONAL_METRICS = ("auroc",)
#: how long ``--scheduler`` waits for a dask scheduler before saying it cannot connect
SCHEDULER_TIMEOUT = "10s"


def rankable_metrics() -> tuple[str, ...]:
    """What ``rank --metric`` ranks: the registered map statistics (:data:`layerscope.registry.STATISTICS`).

    Built in: ``moran_i`` and ``std`` (spatial structure, Eq. 3-5) and ``rms`` (the
    magnitude, for the contrastive and influence probes, zero where a layer ignores the text).
    """
    from layerscope.metrics import statistics

    return tuple(statistic.outputs[0] for statistic in statistics() if statistic.rankable)


def all_metrics() -> tuple[str, ...]:
    return rankable_metrics() + OPTIONAL_METRICS


def metric_label(name: str) -> str:
    """A statistic's short label for tables (``Moran``, ``std``, ``RMS``, ``AUROC``)."""
    from layerscope.metrics import statistics

    labels = {statistic.outputs[0]: statistic.label for statistic in statistics()}
    return labels.get(name) or {"auroc": "AUROC"}.get(name, name)


class RankingError(LayerScopeError):
    """Ranking parameters do not fit the data (a usage error)."""


@dataclass
class Ranking:
    """A per-layer table, the band verdict and the weak layers; ``to_dict`` is the JSON."""

    metric: str
    method: str
    params: dict[str, Any]
    layers: list[dict[str, Any]]
    weak_layers: list[int]
    explanation: str
    verdict: str = ""
    #: ``band``, ``trough``, ``none``, ``too_few`` or ``no_test`` (see layerscope.significance)
    verdict_kind: str = ""
    significant: bool | None = None
    p_value: float | None = None
    alpha: float = 0.05
    n_runs: int = 0
    #: independent units the test ran over (prompts when seeds repeat a prompt, else runs)
    n_units: int = 0
    interval_unit: str = "run"
    band: list[int] | None = None
    #: the band's effect sizes with their intervals, and the held-out values the thresholds used
    effect: dict[str, Any] = field(default_factory=dict)
    #: bootstrap intervals of the band's first and last layer, and the sentence that says them
    edges: dict[str, Any] = field(default_factory=dict)
    agreement: dict[str, Any] = field(default_factory=dict)
    #: every statistic's own verdict on the same runs (the sweep report's agreement table)
    by_metric: dict[str, dict[str, Any]] = field(default_factory=dict)
    expert: str | None = None
    per_expert: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    nan_maps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "weak_layers": self.weak_layers,
            "verdict": self.verdict,
            "verdict_kind": self.verdict_kind,
            "significant": self.significant,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "n_runs": self.n_runs,
            "n_units": self.n_units,
            "interval_unit": self.interval_unit,
            "band": self.band,
            "effect": self.effect,
            "edges": self.edges,
            "metric": self.metric,
            "method": self.method,
            "params": self.params,
            "explanation": self.explanation,
            "agreement": self.agreement,
            "by_metric": self.by_metric,
            "expert": self.expert,
            "layers": self.layers,
            "per_expert": self.per_expert,
            "runs": self.runs,
            "model": self.model,
            "probe": self.probe,
            "nan_maps": self.nan_maps,
        }

    def save(self, path: str | Path) -> Path:
        """Write the ranking JSON (atomically); the one writer of the format."""
        from layerscope.outputs import write_text_atomic

        return write_text_atomic(path, json.dumps(_finite(self.to_dict()), indent=2))

    @classmethod
    def load(cls, path: str | Path, option: str = "--ranking") -> Ranking:
        """Read a ranking JSON written by :meth:`save`; the one reader of the format.

        Every way a file can be wrong (missing, a directory, not UTF-8, not JSON, wrong
        types) is one :class:`RankingError` line naming the file and the fix.
        """
        from layerscope.outputs import read_json_object

        fix = "write it with `layerscope rank STORES --out FILE`"
        data = read_json_object(path, option, fix, RankingError)
        weak = data.get("weak_layers")
        if not isinstance(weak, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in weak):
            raise RankingError(f"{option} {path}: 'weak_layers' must be a list of layer indices; {fix}")
        for key, kind in (
            ("layers", list),
            ("runs", list),
            ("model", dict),
            ("probe", dict),
            ("params", dict),
            ("per_expert", dict),
            ("agreement", dict),
            ("by_metric", dict),
            ("effect", dict),
            ("edges", dict),
        ):
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

    def layers_to_guide(
        self, forced: list[int] | None = None, *, source: str = "the ranking", hint: str = ""
    ) -> list[int]:
        """The layers Focal Guidance guides and ``finetune`` trains: ``forced`` if given, else the verdict's band.

        Why one rule: guiding or training layers the data does not single out would claim a
        band the test did not find, so without a band (and without ``forced``) this refuses
        in one line that names the verdict and a candidate the user could force (``hint``
        says how, e.g. ``--layers {A}-{B}``).
        """
        if forced:
            return sorted({int(layer) for layer in forced})
        if self.weak_layers:
            return list(self.weak_layers)
        candidate = self.candidate_layers()
        first, last = (candidate[0], candidate[-1]) if candidate else ("A", "B")
        how = (hint or "force layers, e.g. {A}-{B}").format(A=first, B=last, layers=candidate)
        raise RankingError(f"{source}: {self.verdict or 'it names no weak layers'}; nothing to guide. {how}")

    def candidate_layers(self) -> list[int]:
        """Layers a user could force when there is no verdict: the best candidate band if the
        test named one, else the middle third of the recorded layers (never beyond the model)."""
        if self.band:
            return list(self.band)
        recorded = [int(row["layer"]) for row in self.layers]
        if not recorded:
            return []
        third = max(1, len(recorded) // 3)
        return recorded[third : len(recorded) - third] or recorded[:1]

    def table(self) -> str:
        """A readable terminal table: means with 95% intervals, P(in band), weak layers starred."""
        lines = []
        if self.expert:
            lines.append(f"expert {self.expert}")
        width = max([10] + [len(str(row["block"])) for row in self.layers])  # MMDiT: single_transformer_blocks.17
        extra = self.metric in ("rms", "auroc")  # that column only when it is what is ranked
        head = f" {self.metric:>9} {'95% CI':>21}" if extra else ""
        lines.append(
            f"{'layer':>5}  {'block':<{width}} {'moran_i':>8} {'95% CI':>17} {'std':>7} {'95% CI':>17}{head} "
            f"{'P(band)':>7}  weak"
        )
        for row in self.layers:
            star = "*" if row["layer"] in self.weak_layers else ""
            value, ci = row.get(self.metric), row.get(f"{self.metric}_ci")
            extra_cells = f" {_number(value, 9, 6)} {_interval(ci, 6):>21}" if extra else ""
            lines.append(
                f"{row['layer']:>5}  {row['block']:<{width}} {_number(row['moran_i'], 8, 4)} "
                f"{_interval(row['moran_i_ci']):>17} {_number(row['std'], 7, 4)} "
                f"{_interval(row['std_ci']):>17}{extra_cells} {_number(row['p_in_band'], 7, 2)}  {star}"
            )
        if self.interval_unit == "step":
            lines.append("95% CIs: bootstrap over the steps of the single run ('-': one step, no interval)")
            lines.append(
                "note: one run gives no verdict (no p-value, no band): its steps share the prompt, seed and "
                "noise; rank a sweep of prompts x seeds (layerscope sweep, then layerscope rank DIR)"
            )
        elif self.interval_unit == "prompt":
            lines.append(f"95% CIs: bootstrap over {self.n_units} prompts ({self.n_runs} runs, seeds averaged)")
        else:
            lines.append(f"95% CIs: bootstrap over {self.n_runs} runs")
        lines.append(f"verdict ({self.metric}): {self.verdict}")
        if self.edges.get("sentence"):
            lines.append(self.edges["sentence"])
        if self.method != "band":
            lines.append(
                f"weak layers ({self.method} on {self.metric}, chosen regardless of the verdict): "
                f"{_ranges(self.weak_layers)}"
            )
        else:
            lines.append(f"weak layers: {_ranges(self.weak_layers)}")
        if self.agreement:
            lines.append(self.agreement.get("sentence", ""))
        for name, sub in self.per_expert.items():
            lines.append(f"expert {name}: {sub.get('verdict', '')}")
        return "\n".join(line for line in lines if line)


def _interval(ci: Any, digits: int = 4) -> str:
    if not ci or ci[0] is None or not np.isfinite(ci[0]):
        return "-"
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _number(value: Any, width: int, digits: int) -> str:
    """A right-aligned number, or '-' for a missing one (NaN in memory, null in a loaded file)."""
    if value is None or not np.isfinite(value):
        return f"{'-':>{width}}"
    return f"{value:>{width}.{digits}f}"


def _finite(value: Any) -> Any:
    """NaN/inf -> None so the file is strict JSON (json.dumps would write NaN)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


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


def select_weak(
    values: np.ndarray, method: str, k: int | None = None, threshold: float | None = None
) -> tuple[list[int], str, dict[str, Any]]:
    """Positions chosen by the forcing methods ``bottom-k`` and ``threshold`` (NaN never chosen)."""
    values = np.where(np.isnan(np.asarray(values, dtype=np.float64)), np.inf, values)
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
    raise RankingError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def parse_step_window(text: str | None) -> slice | None:
    """``"A:B"`` -> slice over step *indices* (Python semantics, B exclusive)."""
    if not text:
        return None
    try:
        start, _, stop = text.partition(":")
        return slice(int(start) if start else None, int(stop) if stop else None)
    except ValueError:
        raise RankingError(f"cannot read --steps {text!r}; use A:B, e.g. 0:25") from None


@dataclass
class RunSummary:
    """What ranking needs from one run, small enough to ship between dask workers.

    ``values[metric]`` is (steps, layers): the mean over keywords and frames of each
    step's maps (NaN where every map of that layer and step was constant).
    """

    name: str
    layers: list[int]
    blocks: list[str]
    steps: list[int]
    step_expert: list[int]
    experts: list[str]
    values: dict[str, np.ndarray]
    maps_per_step: int
    nan_maps: np.ndarray  # (steps, layers): constant maps (NaN Moran's I) per step and layer
    attrs: dict[str, Any]
    #: per layer ``double``/``single`` (MMDiT stores' ``stream`` coordinate), empty otherwise
    streams: list[str] = field(default_factory=list)

    def only_stream(self, stream: str) -> RunSummary:
        """This run restricted to one block kind's layers (``rank --stream single``)."""
        keep = [i for i, s in enumerate(self.streams) if s == stream]
        if not keep:
            kinds = ", ".join(sorted(set(self.streams))) or "none (one-stream model)"
            raise RankingError(f"--stream {stream}: run {self.name or '?'} has no such layers (streams: {kinds})")
        return RunSummary(
            name=self.name,
            layers=[self.layers[i] for i in keep],
            blocks=[self.blocks[i] for i in keep],
            steps=self.steps,
            step_expert=self.step_expert,
            experts=self.experts,
            values={key: value[:, keep] for key, value in self.values.items()},
            maps_per_step=self.maps_per_step,
            nan_maps=self.nan_maps[:, keep],
            attrs=self.attrs,
            streams=[self.streams[i] for i in keep],
        )

    def step_mask(self, expert: int | None) -> np.ndarray:
        """Which of this run's steps belong to ``expert`` (all steps for ``None``)."""
        if expert is None:
            return np.ones(len(self.steps), dtype=bool)
        return np.asarray(self.step_expert) == expert


RUN_ATTRS = ("prompt", "seed", "status", "sweep_id", "dimension", "model_id", "weights", "pipeline_class", "num_layers")


def summarize_run(ds: Any, name: str = "", steps: slice | None = None) -> RunSummary:
    """Reduce one run with metrics (see ``ensure_metrics``) to a :class:`RunSummary`."""
    window = ds if steps is None else ds.isel(step=steps)
    if ds.attrs.get("status", "complete") != "complete":
        # a partial store: only the steps that were written carry maps
        written = set(ds.attrs.get("steps_written", []))
        window = window.sel(step=[s for s in window["step"].values.tolist() if s in written])
    if window.sizes["step"] == 0:
        raise RankingError(f"--steps selects no step (runs have {ds.sizes['step']} steps)")
    values, nan_maps = {}, None
    names = rankable_metrics() + tuple(m for m in OPTIONAL_METRICS if m in window)
    loaded = window[list(names)].compute()  # one read of every statistic, not one per variable
    for metric in names:
        data = loaded[metric].transpose("step", "layer", ...).values
        flat = data.reshape(data.shape[0], data.shape[1], -1)
        finite = np.isfinite(flat)
        counts = finite.sum(axis=-1)
        sums = np.where(finite, flat, 0.0).sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            values[metric] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        if metric == "moran_i":
            nan_maps = (~finite).sum(axis=2)
            maps_per_step = flat.shape[2]
    expert = window["expert"].values.tolist() if "expert" in window.coords else [0] * window.sizes["step"]
    attrs = {key: _plain(ds.attrs.get(key)) for key in RUN_ATTRS}
    attrs["probe"] = _plain(ds.attrs.get("probe", {}))
    attrs["grid"] = _plain(ds.attrs.get("grid"))
    attrs["transformation"] = ds["moran_i"].attrs.get("transformation", "b")
    return RunSummary(
        name=name,
        layers=[int(v) for v in ds["layer"].values],
        blocks=[str(v) for v in ds["block"].values],
        steps=[int(s) for s in window["step"].values],
        step_expert=[int(e) for e in expert],
        experts=list(ds.attrs.get("experts", ["transformer"])),
        values=values,
        maps_per_step=int(maps_per_step),
        nan_maps=np.asarray(nan_maps),
        attrs=attrs,
        streams=[str(v) for v in ds["stream"].values] if "stream" in ds.coords else [],
    )


def _plain(value: Any) -> Any:
    """numpy scalars/arrays in attrs -> JSON-able Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


UNITS = ("prompt", "run")


def _units(
    summaries: list[RunSummary], metric: str, expert: int | None, unit: str = "prompt"
) -> tuple[np.ndarray, str, np.ndarray | None]:
    """(units x layers) matrix the statistics run on, what a unit is, and per-run means.

    Runs that share a prompt (a sweep's seeds) are averaged into one unit with
    ``unit="prompt"``: seeds of one prompt share its content, so they are not independent
    draws of what a finding about the model generalises over.  One run gives its steps
    (description only: never a verdict) and no per-run means.
    """
    rows = []
    for summary in summaries:
        step_rows = summary.values[metric][summary.step_mask(expert)]
        if step_rows.shape[0] == 0:
            raise RankingError(f"run {summary.name or '?'} has no step of the chosen expert in the --steps window")
        rows.append(step_rows)
    if len(rows) == 1:
        return rows[0], "step", None
    with np.errstate(invalid="ignore"):
        means = np.stack([_nanmean_rows(r) for r in rows])
    if unit == "prompt":
        keys = [s.attrs.get("prompt") or f"run {i}" for i, s in enumerate(summaries)]
        if len(set(keys)) < len(keys):
            groups = list(dict.fromkeys(keys))
            grouped = np.stack([_nanmean_rows(means[[k == g for k in keys]]) for g in groups])
            return grouped, "prompt", means
    return means, "run", means


def _nanmean_rows(rows: np.ndarray) -> np.ndarray:
    finite = np.isfinite(rows)
    counts = finite.sum(axis=0)
    return np.where(counts > 0, np.where(finite, rows, 0.0).sum(axis=0) / np.maximum(counts, 1), np.nan)


def _effect(test: Any) -> dict[str, Any]:
    """The effect sizes of a band test as the ranking JSON stores them."""
    return {
        "drop": test.drop,
        "drop_ci": list(test.drop_ci),
        "dip": test.dip,
        "distinct": test.distinct,
        "distinct_ci": list(test.distinct_ci),
        "heldout_drop": test.heldout_drop,
        "heldout_distinct": test.heldout_distinct,
        "p_dip": test.p_dip,
        "p_distinct": test.p_distinct,
    }


def _edges(test: Any, layers: list[int]) -> dict[str, Any]:
    from layerscope.significance import describe_edges

    if test.start is None or test.start_ci is None:
        return {}
    return {
        "start": layers[test.start],
        "end": layers[test.end],
        "start_ci": [layers[int(round(v))] for v in test.start_ci] if all(np.isfinite(test.start_ci)) else None,
        "end_ci": [layers[int(round(v))] for v in test.end_ci] if all(np.isfinite(test.end_ci)) else None,
        # edges of a band that is not there are noise: said only for a band or a trough
        "sentence": describe_edges(test, layers) if test.kind in ("band", "trough") else "",
    }


def rank_summaries(
    summaries: list[RunSummary],
    *,
    metric: str = "moran_i",
    method: str = "band",
    k: int | None = None,
    threshold: float | None = None,
    alpha: float = 0.05,
    splits: int | None = None,
    bootstrap: int = 1000,
    min_runs: int | None = None,
    min_drop: float | None = None,
    min_distinct: float | None = None,
    unit: str = "prompt",
    seed: int = 0,
    expert: str | None = None,
    steps: slice | None = None,
    per_expert: bool = True,
) -> Ranking:
    """Rank layers over runs; the statistics of :mod:`layerscope.significance` decide the band.

    ``None`` thresholds take the defaults of :mod:`layerscope.significance`; every value
    used goes into ``params`` so the JSON says what the verdict was held to.
    """
    from layerscope import significance as sig

    splits = sig.SPLITS if splits is None else splits
    min_runs = sig.MIN_RUNS if min_runs is None else min_runs
    min_drop = sig.MIN_DROP if min_drop is None else min_drop
    min_distinct = sig.MIN_DISTINCT if min_distinct is None else min_distinct
    if metric not in all_metrics():
        raise RankingError(f"unknown metric {metric!r}; choose one of {', '.join(all_metrics())}")
    if method not in METHODS:
        raise RankingError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    names = rankable_metrics() + tuple(m for m in OPTIONAL_METRICS if all(m in s.values for s in summaries))
    if metric not in names:
        lacking = next(s.name or "?" for s in summaries if metric not in s.values)
        raise RankingError(
            f"--metric {metric}: run {lacking} has no {metric}; write it with `layerscope testbed auroc --stores ...`"
        )
    if unit not in UNITS:
        raise RankingError(f"unknown --unit {unit!r}; choose one of {', '.join(UNITS)}")
    if not summaries:
        raise RankingError("no runs to rank; pass stores or a sweep directory")
    first = summaries[0]
    for summary in summaries[1:]:
        if summary.layers != first.layers:
            raise RankingError("runs record different layers; rank runs of the same model and --layers")
    experts = first.experts
    expert_index = None
    if expert is not None:
        if expert not in experts:
            raise RankingError(f"--expert {expert!r} is not in this model (experts: {', '.join(experts)})")
        expert_index = experts.index(expert)
    tests, per_run = {}, {}
    try:
        for name in names:
            units, unit_name, per_run[name] = _units(summaries, name, expert_index, unit)
            tests[name] = sig.band_test(
                units,
                alpha=alpha,
                splits=splits,
                resamples=bootstrap,
                min_runs=min_runs,
                min_drop=min_drop,
                min_distinct=min_distinct,
                seed=seed,
                unit=unit_name,
            )
    except sig.SignificanceError as error:
        raise RankingError(str(error)) from None
    main = tests[metric]
    table = []
    for position, layer in enumerate(first.layers):
        row: dict[str, Any] = {"layer": layer, "block": first.blocks[position]}
        for name, test in tests.items():
            # the point estimate and its interval come from the same (NaN-filled) units
            row[name] = float(test.curve[position])
            row[f"{name}_ci"] = [float(test.ci_low[position]), float(test.ci_high[position])]
            if per_run[name] is not None:
                row[f"{name}_per_run"] = [float(v) for v in per_run[name][:, position]]
        row["ci"] = row[f"{metric}_ci"]
        row["p_in_band"] = float(main.p_in_band[position])
        row["n_maps"] = int(sum(s.maps_per_step * int(s.step_mask(expert_index).sum()) for s in summaries))
        row["nan_maps"] = int(sum(int(s.nan_maps[s.step_mask(expert_index), position].sum()) for s in summaries))
        table.append(row)
    nan_maps = int(sum(int(s.nan_maps[s.step_mask(expert_index)].sum()) for s in summaries))
    verdict = sig.describe(main, first.layers, len(summaries))
    band_layers = [first.layers[p] for p in range(main.start, main.end + 1)] if main.start is not None else None
    if method == "band":
        positions = main.layers
        explanation = _explanation(main, alpha)
        params: dict[str, Any] = {}
    else:
        curve = np.array([row[metric] for row in table])
        positions, explanation, params = select_weak(curve, method, k, threshold)
    other = "std" if metric == "moran_i" else "moran_i"
    agreement = _agreement(tests[metric], tests[other], first.layers, metric, other)
    runs = [
        {
            "path": s.name,
            "prompt": s.attrs.get("prompt", ""),
            "seed": s.attrs.get("seed"),
            "status": s.attrs.get("status"),
            "id": s.attrs.get("sweep_id"),
            "steps": [step for step, used in zip(s.steps, s.step_mask(expert_index)) if used],
        }
        for s in summaries
    ]
    ranking = Ranking(
        metric=metric,
        method=method,
        params={
            **params,
            "steps": None if steps is None else f"{_or_blank(steps.start)}:{_or_blank(steps.stop)}",
            "transformation": first.attrs.get("transformation", "b"),
            "unit": unit,
            "splits": splits,
            "choose_share": sig.CHOOSE_SHARE,
            "gamma": sig.GAMMA,
            "min_runs": min_runs,
            "min_drop": min_drop,
            "min_distinct": min_distinct,
            "trend_degree": sig.TREND_DEGREE,
            "bootstrap": bootstrap,
            "seed": seed,
            "statistic": (
                "split-sample: band chosen on a random share of the units, held-out one-sided t tests of the "
                "dip below both flanks and of the depth a quadratic trend does not explain; split p-values "
                "combined by quantile aggregation (Meinshausen, Meier & Buhlmann 2009)"
            ),
            "aggregation": "mean over steps, keywords, frames per run, then over runs (and prompts)",
        },
        layers=table,
        weak_layers=[first.layers[p] for p in positions],
        explanation=explanation + (f"; {nan_maps} constant maps (NaN) left out" if nan_maps else ""),
        verdict=verdict,
        verdict_kind=main.kind,
        significant=main.significant if main.p_value is not None else None,
        p_value=main.p_value,
        alpha=alpha,
        n_runs=len(summaries),
        n_units=main.n_units,
        interval_unit=main.unit,
        band=band_layers,
        effect=_effect(main) if main.p_value is not None else {},
        edges=_edges(main, first.layers) if main.p_value is not None else {},
        agreement=agreement,
        by_metric={
            name: {
                "verdict": sig.describe(test, first.layers, len(summaries)),
                "verdict_kind": test.kind,
                "weak_layers": [first.layers[p] for p in test.layers],
            }
            for name, test in tests.items()
        },
        expert=expert,
        runs=runs,
        model={key: first.attrs.get(key) for key in ("model_id", "weights", "pipeline_class", "num_layers", "grid")},
        probe=dict(first.attrs.get("probe") or {}),
        nan_maps=nan_maps,
    )
    if per_expert and expert is None and len(experts) > 1:
        options = dict(
            metric=metric,
            method=method,
            k=k,
            threshold=threshold,
            alpha=alpha,
            splits=splits,
            bootstrap=bootstrap,
            min_runs=min_runs,
            min_drop=min_drop,
            min_distinct=min_distinct,
            unit=unit,
            seed=seed,
            steps=steps,
            per_expert=False,
        )
        for name in experts:
            try:
                sub = rank_summaries(summaries, expert=name, **options)
            except RankingError as error:
                ranking.per_expert[name] = {"verdict": f"not ranked: {error}", "weak_layers": []}
                continue
            ranking.per_expert[name] = _finite(
                {k: v for k, v in sub.to_dict().items() if k not in ("runs", "model", "probe")}
            )
    return ranking


def _explanation(test: Any, alpha: float) -> str:
    """How the verdict was reached, in one sentence for the JSON, the table and the report."""
    from layerscope.significance import CHOOSE_SHARE

    if test.kind == "no_test":
        return "band: no interior band exists with fewer than 3 layers"
    if test.kind == "too_few":
        if test.unit == "step":
            return (
                "band: one run gives no verdict (its steps are not independent replicates); the intervals "
                "describe this run only"
            )
        return f"band: a verdict needs at least {test.min_runs} independent {test.unit}s (--min-runs)"
    return (
        f"band: chosen on {round(100 * CHOOSE_SHARE)}% of the {test.unit}s in each of {test.splits} random "
        f"splits and tested on the rest (dip below both flanks p={test.p_dip:.3g}; depth beyond a quadratic trend "
        f"p={'n/a' if test.p_distinct is None else f'{test.p_distinct:.3g}'}; alpha {alpha:g}); thresholds "
        f"--min-drop {test.min_drop:g}, --min-distinct {test.min_distinct:g} on held-out values "
        f"(drop {_fmt(test.heldout_drop)}, distinct share {_fmt(test.heldout_distinct)})"
    )


def _fmt(value: float) -> str:
    return f"{value:.2f}" if value is not None and np.isfinite(value) else "n/a"


_KIND_WORDS = {
    "band": "also finds a weak band",
    "trough": "finds a smooth trough, no distinct band",
    "none": "finds no weak band",
}


def _agreement(main: Any, other: Any, layers: list[int], metric: str, other_metric: str) -> dict[str, Any]:
    """Do Moran's I and std single out the same band?  Jaccard of their best bands."""
    label = metric_label(other_metric)
    if main.p_value is None or other.p_value is None:
        return {
            "metric": other_metric,
            "band": None,
            "p_value": None,
            "significant": None,
            "jaccard": None,
            "agree": None,
            "sentence": f"{label}: no verdict either",
        }
    a = set(range(main.start, main.end + 1))
    b = set(range(other.start, other.end + 1))
    jaccard = len(a & b) / len(a | b)
    sentence = (
        f"{label} {_KIND_WORDS[other.kind]} (best {layers[other.start]}-{layers[other.end]}, "
        f"p={other.p_value:.3g}); overlap with the {metric_label(metric)} band (Jaccard) {jaccard:.2f}"
    )
    both = main.significant and other.significant
    return {
        "metric": other_metric,
        "band": [layers[i] for i in sorted(b)],
        "p_value": other.p_value,
        "significant": other.significant,
        "kind": other.kind,
        "jaccard": jaccard,
        "agree": bool(both and jaccard >= 0.5) or (not main.significant and not other.significant),
        "sentence": sentence,
    }


def instrument_agreement(ranking: Ranking) -> dict[str, Any]:
    """Which layers each map statistic of a ranking's runs calls weak, and how their layer
    curves agree.

    Every statistic the stores carry (Moran's I, std, RMS, AUROC where written) was tested
    by :func:`rank_summaries` with the same band test (``ranking.by_metric``); nothing is
    recomputed here.  ``correlation`` is Spearman's rho between their per-layer means (None
    where a curve is constant or has gaps).  Why: an instrument never shown to see the
    thing is absence of evidence; instruments that disagree say so here.
    """
    from scipy.stats import spearmanr

    names = [name for name in all_metrics() if name in ranking.by_metric]
    curves = {name: np.array([row[name] for row in ranking.layers], dtype=np.float64) for name in names}
    rows = [
        {
            "metric": name,
            "label": metric_label(name),
            **ranking.by_metric[name],
            "weak_text": _ranges(ranking.by_metric[name]["weak_layers"]),
        }
        for name in names
    ]
    correlation: dict[str, dict[str, float | None]] = {}
    for a in names:
        correlation[a] = {}
        for b in names:
            x, y = curves[a], curves[b]
            usable = np.isfinite(x).all() and np.isfinite(y).all() and x.std() > 0 and y.std() > 0
            correlation[a][b] = float(spearmanr(x, y).statistic) if usable else None
    probe = (ranking.probe or {}).get("kind", "hidden")
    return {"probe": probe, "rows": rows, "correlation": correlation, "labels": [metric_label(n) for n in names]}


def rank_datasets(
    datasets: list[Any], *, names: list[str] | None = None, steps: slice | None = None, **kwargs: Any
) -> Ranking:
    """Rank layers over runs already opened with metrics (the report's and the accessor's path)."""
    summaries = [summarize_run(ds, names[i] if names else "", steps) for i, ds in enumerate(datasets)]
    return rank_summaries(summaries, steps=steps, **kwargs)


def _summarize_store(path: str, transformation: str, recompute: bool, allow_partial: bool, steps: slice | None):
    from layerscope.metrics import ensure_metrics

    ds = ensure_metrics(path, transformation, recompute=recompute, allow_partial=allow_partial)
    return summarize_run(ds, path, steps)


def summarize_stores(
    paths: list[str | Path],
    *,
    transformation: str = "b",
    allow_partial: bool = False,
    recompute: bool = False,
    steps: slice | None = None,
    scheduler: str | None = None,
    progress: bool = False,
) -> list[RunSummary]:
    """Metrics (computed once, cached in each store) and summaries of many stores, via dask.

    One delayed task per store; with ``scheduler`` (a ``dask.distributed`` address, e.g.
    ``tcp://host:8786``) the tasks run on that cluster, else on local threads.  The
    results do not depend on where they ran: each task is a pure function of its store.
    """
    import dask

    from layerscope.locations import location

    # absolute paths (URLs as given): workers of a cluster need not share this process's
    # working directory
    tasks = [
        dask.delayed(_summarize_store, pure=False)(
            str(location(p).resolve()), transformation, recompute, allow_partial, steps
        )
        for p in paths
    ]
    if scheduler:
        try:
            from distributed import Client
        except ImportError:  # pragma: no cover - it is a core dependency
            raise RankingError("--scheduler needs the 'distributed' package: pip install distributed") from None
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as error:
            raise RankingError(
                f"--scheduler {scheduler}: cannot connect ({error}); start one with `dask scheduler`"
            ) from None
        with client:
            return list(client.gather(client.compute(tasks)))
    if progress and len(tasks) > 1:
        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=2.0):
            return list(dask.compute(*tasks, scheduler="threads"))
    return list(dask.compute(*tasks, scheduler="threads"))


def check_rank_options(
    paths: list[str | Path],
    *,
    metric: str | None = None,
    method: str | None = None,
    k: int | None = None,
    threshold: float | None = None,
    alpha: float | None = None,
    expert: str | None = None,
) -> None:
    """Refuse impossible ranking options before any store is read beyond its attributes."""
    if not paths:
        raise RankingError("no runs to rank; pass stores or a sweep directory")
    if metric is not None and metric not in all_metrics():
        raise RankingError(f"unknown metric {metric!r}; choose one of {', '.join(all_metrics())}")
    if method is not None and method not in METHODS:
        raise RankingError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "bottom-k" and (k is None or k < 1):
        raise RankingError("bottom-k needs --k N (N >= 1)")
    if method == "threshold" and threshold is None:
        raise RankingError("the threshold method needs --threshold T")
    if alpha is not None and not 0 < alpha < 1:
        raise RankingError(f"--alpha must be between 0 and 1 (got {alpha})")
    if expert is not None:
        from layerscope.locations import location

        meta = location(paths[0]) / "zarr.json"
        try:
            experts = json.loads(meta.read_text(encoding="utf-8"))["attributes"].get("experts", ["transformer"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # not readable as a store: opening it will say why
        if expert not in experts:
            raise RankingError(f"--expert {expert!r} is not in this model (experts: {', '.join(experts)})")


@dataclass(frozen=True)
class RankOptions:
    """What ``layerscope rank`` parses (see ``layerscope rank --help``); ``None`` thresholds
    take :mod:`layerscope.significance`'s defaults.  :func:`rank_stores` documents each."""

    transformation: str = "b"
    allow_partial: bool = False
    recompute: bool = False
    steps: slice | None = None
    scheduler: str | None = None
    progress: bool = False
    stream: str | None = None
    metric: str = "moran_i"
    method: str = "band"
    k: int | None = None
    threshold: float | None = None
    alpha: float = 0.05
    splits: int | None = None
    bootstrap: int = 1000
    min_runs: int | None = None
    min_drop: float | None = None
    min_distinct: float | None = None
    unit: str = "prompt"
    seed: int = 0
    expert: str | None = None


def rank(paths: list[str | Path], options: RankOptions) -> Ranking:
    """:func:`rank_stores` with its options in one value (the CLI's entry)."""
    return rank_stores(paths, **{f.name: getattr(options, f.name) for f in fields(options)})


def rank_stores(
    paths: list[str | Path],
    *,
    transformation: str = "b",
    allow_partial: bool = False,
    recompute: bool = False,
    steps: slice | None = None,
    scheduler: str | None = None,
    progress: bool = False,
    stream: str | None = None,
    **kwargs: Any,
) -> Ranking:
    """Compute (or reuse) metrics in each store, then rank (what ``layerscope rank`` runs).

    Options that need no data are checked first, so a typo costs one line, not the
    metrics of every store.  ``stream`` (``double``/``single``, MMDiT models) ranks one
    block kind's layers only: the band test then looks for a dip inside that stream.
    """
    check_rank_options(paths, **{k: kwargs.get(k) for k in ("metric", "method", "k", "threshold", "alpha", "expert")})
    summaries = summarize_stores(
        paths,
        transformation=transformation,
        allow_partial=allow_partial,
        recompute=recompute,
        steps=steps,
        scheduler=scheduler,
        progress=progress,
    )
    models = {s.attrs.get("model_id") for s in summaries}
    if len(models) > 1:
        raise RankingError(f"runs come from different models ({', '.join(map(str, models))}); rank one model at a time")
    if stream is not None:
        summaries = [summary.only_stream(stream) for summary in summaries]
    ranking = rank_summaries(summaries, steps=steps, **kwargs)
    if stream is not None:
        ranking.params["stream"] = stream
    return ranking
