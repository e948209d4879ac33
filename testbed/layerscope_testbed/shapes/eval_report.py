"""The HTML section of ``layerscope eval``: one self-contained page per eval JSON.

Why a page beside the JSON and the markdown: the markdown carries the headline table, but
a reader checking a claim ("push 0.12 [0.00, 0.32]") also wants to see *where* the
outcomes come from — which prompts pass under which seeds, which question fails — and
the prompt x seed grid is unreadable as markdown.  The page is rendered from the eval
JSON alone (``layerscope report EVAL.json --out PAGE.html`` renders an old one), with
the same jinja2 environment and base template as the run reports.
"""

from __future__ import annotations

from typing import Any

from layerscope_testbed.shapes.world import DIMENSIONS


def _complete(result: dict[str, Any]) -> dict[str, Any]:
    """A variant's results with the keys older eval files lack filled as "not measured"."""
    result = {**result, "by_question": result.get("by_question", {})}
    result["overall"] = {"ci": None, "wilson": None, **result["overall"]}
    result["per_dimension"] = {d: {"ci": None, **entry} for d, entry in result.get("per_dimension", {}).items()}
    return result


def outcome_grid(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per prompt: its text, dimension and, per generation seed, pass/fail with the failed questions."""
    cells: dict[int, dict[int, dict[str, Any]]] = {}
    prompts: dict[int, tuple[str, str]] = {}
    for position, score in enumerate(result["scores"]):
        # evals from before prompt_index/seed were stored scored one seed, in prompt order
        index, seed = score.get("prompt_index", position), score.get("seed", 0)
        prompts[index] = (score["prompt"], score["dimension"])
        failed = [text for text, passed in score["questions"].items() if not passed]
        cells.setdefault(index, {})[seed] = {"passed": bool(score["all_correct"]), "failed": failed}
    rows = []
    for index in sorted(cells):
        ordered = [cells[index][seed] for seed in sorted(cells[index])]
        prompt, dimension = prompts[index]
        rows.append(
            {
                "index": index,
                "prompt": prompt,
                "dimension": dimension,
                "cells": ordered,
                "passed": sum(cell["passed"] for cell in ordered),
            }
        )
    return rows


def render_eval_html(data: dict[str, Any]) -> str:
    """HTML of one eval (``data`` as ``layerscope eval --out`` writes it; see :mod:`.evaluate`)."""
    from layerscope import __version__
    from layerscope.report.render import _environment

    results = {name: _complete(result) for name, result in data["results"].items()}
    first = next(iter(results.values()))  # every variant ran the same protocol; "baseline" may be skipped
    present = {d for result in results.values() for d in result["per_dimension"]}
    dimensions = [d for d in DIMENSIONS if d in present]
    for result in results.values():
        for d in dimensions:  # a variant without a dimension shows it as not measured
            result["per_dimension"].setdefault(d, {"all_correct": float("nan"), "ci": None})
    # dimensions in the world's order, each one's questions in the order they are asked
    questions = list(
        dict.fromkeys((d, k) for d in dimensions for r in results.values() for k in r["by_question"].get(d, {}))
    )
    comparisons = data.get("comparisons") or {}
    columns = list(next(iter(comparisons.values()))) if comparisons else []
    protocol = {
        key: first.get(key, default)
        for key, default in (("split", "heldout"), ("count", len(first.get("outcomes", []))), ("seed", 0))
    }
    protocol.update(
        steps=first.get("steps", "?"),
        guidance=first.get("guidance", "?"),
        seeds=first.get("seeds", [0]),
    )
    model = {"model_id": "unknown model", "weights": "unknown", **(data.get("model") or {})}
    template = _environment().get_template("eval.html.j2")
    return template.render(
        model=model,
        protocol=protocol,
        dimensions=dimensions,
        variants=list(results.items()),
        questions=questions,
        comparisons=comparisons,
        comparison_columns=columns,
        references=[(name, _complete(result)) for name, result in (data.get("reference_points") or {}).items()],
        grids=[{"variant": name, "rows": outcome_grid(result)} for name, result in results.items()],
        layerscope_version=__version__,
    )
