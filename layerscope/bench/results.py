"""From per-video answers to the paper's table: all-correct rates with intervals, per-question
pass rates, consistency means, and paired comparisons of two benchmark runs.

The prompt is the statistical unit (its seeds share its difficulty): intervals are the
percentile bootstrap over prompts and comparisons the paired sign-flip test over prompts
of :mod:`layerscope.proportions`; Wilson intervals over all (prompt, seed) outcomes are
given too.  A prompt-seed counts only if *all* its questions pass (paper Eq. 14).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from layerscope.bench.prompts import BenchInputError, BenchPrompt

RESULTS_FORMAT = "layerscope-bench/1"
CONSISTENCY = ("subject_consistency", "background_consistency")


def _rate_block(outcomes: np.ndarray, question_rates: list[float]) -> dict[str, Any]:
    from layerscope.proportions import prompt_bootstrap_interval, wilson_interval

    return {
        "all_correct": float(outcomes.mean()),
        "ci": list(prompt_bootstrap_interval(outcomes)),
        "wilson": list(wilson_interval(int(outcomes.sum()), int(outcomes.size))),
        "questions": float(np.mean(question_rates)),
        "prompts": int(outcomes.shape[0]),
        "seeds": int(outcomes.shape[1]),
    }


def _mean_block(values: np.ndarray) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {
        "mean": float(finite.mean()),
        "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        "n": int(finite.size),
    }


def total_score(
    outcomes: np.ndarray,
    consistency: dict[str, np.ndarray],
    groups: dict[str, list[int]],
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The paper's Total Score (Table 1): the arithmetic mean of I2V Subject, I2V Background
    and each dimension's all-correct rate, with a 95% percentile interval.

    The interval resamples prompts within each dimension (stratified: the total averages
    dimensions, so each must stay present) and recomputes every component from the same
    resampled prompts.  Without consistency scores (no CLIP) the total is not defined.
    """
    subject, background = consistency["subject_consistency"], consistency["background_consistency"]
    if not (np.isfinite(subject).any() and np.isfinite(background).any()):
        return {"value": None, "ci": [None, None], "components": {}, "note": "no consistency scores (no CLIP)"}

    def components(rows_by_dim: dict[str, np.ndarray]) -> dict[str, float]:
        every = np.concatenate(list(rows_by_dim.values()))
        values = {
            "I2V subject": float(np.nanmean(subject[every])),
            "I2V background": float(np.nanmean(background[every])),
        }
        values.update({d: float(outcomes[rows].mean()) for d, rows in rows_by_dim.items()})
        return values

    observed = components({d: np.asarray(rows) for d, rows in groups.items()})
    rng = np.random.default_rng(seed)
    totals = np.empty(resamples)
    for index in range(resamples):
        picked = {d: rng.choice(np.asarray(rows), size=len(rows), replace=True) for d, rows in groups.items()}
        totals[index] = np.mean(list(components(picked).values()))
    low, high = np.percentile(totals, [2.5, 97.5])
    return {
        "value": float(np.mean(list(observed.values()))),
        "ci": [float(low), float(high)],
        "components": observed,
        "definition": "mean of I2V subject, I2V background and each dimension's all-correct rate (paper Table 1)",
    }


def aggregate(
    prompts: list[BenchPrompt], seeds: list[int], records: dict[tuple[str, int], dict[str, Any]]
) -> dict[str, Any]:
    """The benchmark's summary from ``records[(prompt id, seed)]`` = one video's scores.

    Each record has ``answers`` (dicts with ``passed`` and ``margin``) and optionally
    ``consistency`` (``subject_consistency``, ``background_consistency``).
    """
    shape = (len(prompts), len(seeds))
    outcomes = np.zeros(shape)
    consistency = {name: np.full(shape, np.nan) for name in CONSISTENCY}
    per_question = []
    question_rate_of_prompt = []
    for i, prompt in enumerate(prompts):
        passes = np.zeros((len(prompt.questions), len(seeds)))
        margins = np.full((len(prompt.questions), len(seeds)), np.nan)
        for j, seed in enumerate(seeds):
            record = records[prompt.id, seed]
            answers = record["answers"]
            for q, answer in enumerate(answers):
                passes[q, j] = bool(answer["passed"])
                if answer.get("margin") is not None:
                    margins[q, j] = float(answer["margin"])
            outcomes[i, j] = float(all(a["passed"] for a in answers))
            for name in CONSISTENCY:
                value = (record.get("consistency") or {}).get(name)
                if value is not None:
                    consistency[name][i, j] = float(value)
        question_rate_of_prompt.append(float(passes.mean()))
        for q, question in enumerate(prompt.questions):
            finite = margins[q][np.isfinite(margins[q])]
            per_question.append(
                {
                    "id": prompt.id,
                    "dimension": prompt.dimension,
                    "question": question,
                    "pass_rate": float(passes[q].mean()),
                    "passes": int(passes[q].sum()),
                    "trials": len(seeds),
                    "mean_margin": float(finite.mean()) if finite.size else None,
                }
            )
    dimensions = [p.dimension for p in prompts]
    groups = {d: [i for i, x in enumerate(dimensions) if x == d] for d in dict.fromkeys(dimensions)}
    rates = np.array(question_rate_of_prompt)
    summary = {
        "per_dimension": {d: _rate_block(outcomes[rows], list(rates[rows])) for d, rows in groups.items()},
        "overall": _rate_block(outcomes, list(rates)),
    }
    consistency_summary = {}
    for name, values in consistency.items():
        consistency_summary[name] = {
            "overall": _mean_block(values.ravel()),
            "per_dimension": {d: _mean_block(values[rows].ravel()) for d, rows in groups.items()},
        }
    with np.errstate(invalid="ignore"):
        total = total_score(outcomes, consistency, groups)
    return {
        **summary,
        "total_score": total,
        "consistency": consistency_summary,
        "per_question": per_question,
        "prompt_ids": [p.id for p in prompts],
        "dimensions": dimensions,
        "seeds": list(seeds),
        "outcomes": outcomes.astype(int).tolist(),
        "consistency_values": {
            k: [[None if math.isnan(x) else x for x in row] for row in v.tolist()] for k, v in consistency.items()
        },
    }


def load_results(path: str | Path, option: str = "--compare") -> dict[str, Any]:
    """A ``results.json`` (or the bench directory holding one)."""
    from layerscope.outputs import read_json_object

    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    data = read_json_object(
        path, option, "pass a `layerscope bench` output directory or its results.json", BenchInputError
    )
    if data.get("format") != RESULTS_FORMAT:
        raise BenchInputError(f"{option} {path} is not a layerscope bench results file (format {data.get('format')!r})")
    return data


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """B minus A on the same prompts and seeds: differences and paired sign-flip p-values."""
    from layerscope.proportions import paired_sign_flip_test

    sa, sb = a["summary"], b["summary"]
    if sa["prompt_ids"] != sb["prompt_ids"] or sa["seeds"] != sb["seeds"]:
        raise BenchInputError(
            "--compare needs two runs over the same prompts and seeds (paired test); "
            f"got {len(sa['prompt_ids'])} prompts x seeds {sa['seeds']} vs {len(sb['prompt_ids'])} x {sb['seeds']}"
        )
    oa, ob = np.array(sa["outcomes"], float), np.array(sb["outcomes"], float)
    dims = np.array(sa["dimensions"])
    result: dict[str, Any] = {"all_correct": {}, "consistency": {}}
    for name in ["overall", *dict.fromkeys(sa["dimensions"])]:
        rows = np.ones(len(dims), bool) if name == "overall" else dims == name
        result["all_correct"][name] = {
            "a": float(oa[rows].mean()),
            "b": float(ob[rows].mean()),
            "difference": float(ob[rows].mean() - oa[rows].mean()),
            "p_value": paired_sign_flip_test(oa[rows], ob[rows]),
            "prompts": int(rows.sum()),
        }
    for name in CONSISTENCY:
        va = np.array(sa["consistency_values"][name], dtype=float)
        vb = np.array(sb["consistency_values"][name], dtype=float)
        if np.isnan(va).any() or np.isnan(vb).any():
            continue
        result["consistency"][name] = {
            "a": float(va.mean()),
            "b": float(vb.mean()),
            "difference": float(vb.mean() - va.mean()),
            "p_value": paired_sign_flip_test(va, vb),
        }
    return result


def _cell(block: dict[str, Any]) -> str:
    text = f"{block['all_correct']:.3f}"
    ci = block.get("ci") or []
    if len(ci) == 2 and all(np.isfinite(ci)):
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    return text


def _total_cell(total: dict[str, Any]) -> str:
    if total.get("value") is None:
        return "-"
    low, high = total["ci"]
    return f"{total['value']:.4f} [{low:.2f}, {high:.2f}]"


def markdown(results: dict[str, Any]) -> str:
    """The summary table (all-correct with 95% intervals, consistency), then per-question pass rates."""
    summary = results["summary"]
    dims = list(summary["per_dimension"])
    cons = summary["consistency"]
    lines = [
        f"model {results['model'].get('model_id', results['settings']['model'])}, judge {results['judge']['judge']}, "
        f"{summary['overall']['prompts']} prompts x seeds {','.join(map(str, summary['seeds']))} "
        "(all-correct rate; 95% interval: bootstrap over prompts)",
        "",
        "| " + " | ".join([*dims, "overall", "I2V subject", "I2V background", "total score"]) + " |",
        "|" + " --- |" * (len(dims) + 4),
        "| "
        + " | ".join(
            [_cell(summary["per_dimension"][d]) for d in dims]
            + [_cell(summary["overall"])]
            + [f"{cons[n]['overall']['mean']:.4f}" for n in CONSISTENCY]
            + [_total_cell(summary.get("total_score") or {})]
        )
        + " |",
        "",
        "| prompt | question | pass rate | mean margin |",
        "| --- | --- | --- | --- |",
    ]
    for q in summary["per_question"]:
        margin = "" if q["mean_margin"] is None else f"{q['mean_margin']:+.3f}"
        lines.append(f"| {q['id']} | {q['question']} | {q['passes']}/{q['trials']} | {margin} |")
    return "\n".join(lines) + "\n"


def markdown_comparison(comparison: dict[str, Any], a: str, b: str) -> str:
    names = list(comparison["all_correct"])
    lines = [f"B - A, A = {a}, B = {b} (paired over prompt x seed; sign-flip test over prompts)", ""]
    lines.append("| | " + " | ".join(names) + " |")
    lines.append("|" + " --- |" * (len(names) + 1))
    cells = [
        f"{comparison['all_correct'][n]['a']:.3f} -> {comparison['all_correct'][n]['b']:.3f} "
        f"({comparison['all_correct'][n]['difference']:+.3f}, p={comparison['all_correct'][n]['p_value']:.3g})"
        for n in names
    ]
    lines.append("| all-correct | " + " | ".join(cells) + " |")
    for name, c in comparison["consistency"].items():
        lines.append(f"\n{name}: {c['a']:.4f} -> {c['b']:.4f} ({c['difference']:+.4f}, p={c['p_value']:.3g})")
    return "\n".join(lines) + "\n"


def dumps(data: dict[str, Any]) -> str:
    """Strict JSON: NaN becomes null (browsers and jq reject NaN)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(data), indent=2, default=str)
