"""Planted truth on the shapes testbed: does the ranking find weak layers that are known
by construction, and does Focal Guidance on them help?

    python examples/planted_truth.py --out-dir runs/planted-truth            # full: 20 prompts x 5 seeds
    python examples/planted_truth.py --out-dir runs/pt-quick --quick         # minutes on 2 cores

Steps (the first four are `layerscope` commands, each reproducible on its own):
  1. `testbed plant --layers 4-7`: the shipped model with blocks 4-7 text-blind
     (testbed/layerscope_testbed/shapes/plant.py says how and why);
  2. `testbed prompts`: held-out sweep prompts;
  3. `sweep` the unplanted default and the planted model over prompts x seeds;
  4. `rank` both: verdict, split-sample p, drop, band, Jaccard overlap with the planted layers;
  5. eval the planted model on held-out prompts x seeds: no guidance, FG on the planted
     band, FG on an equally wide random band (drawn with --seed, not overlapping the
     planted band), with 95% intervals and paired sign-flip tests against no guidance.
Writes OUT_DIR/planted_truth.json and OUT_DIR/planted_truth.md.  Finished steps are
reused when the script is run again (stores resume; existing JSON is read back).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path


def jaccard(a: list[int], b: list[int]) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    union = set(a) | set(b)
    return len(set(a) & set(b)) / len(union) if union else 1.0


def random_band(depth: int, width: int, avoid: list[int], seed: int) -> list[int]:
    """A contiguous band of ``width`` layers that does not overlap ``avoid`` (on 12 layers with
    4-7 planted only 0-3 and 8-11 qualify; FG can guide any layers, the interior rule is the
    ranking's)."""
    starts = [s for s in range(0, depth - width + 1) if not set(range(s, s + width)) & set(avoid)]
    start = random.Random(seed).choice(starts)
    return list(range(start, start + width))


def summarise_ranking(ranking: dict, planted: list[int]) -> dict:
    return {
        "verdict": ranking["verdict"],
        "significant": ranking["significant"],
        "p_value": ranking["p_value"],
        "band": ranking["band"],
        "n_runs": ranking["n_runs"],
        "drop": (ranking.get("effect") or {}).get("drop"),
        "drop_ci": (ranking.get("effect") or {}).get("drop_ci"),
        "jaccard_with_planted": jaccard(ranking["band"] or [], planted),
        "std_agreement": ranking["agreement"],
        "moran_i": {str(r["layer"]): [r["moran_i"], *r["moran_i_ci"]] for r in ranking["layers"]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="runs/planted-truth")
    parser.add_argument(
        "--quick", action="store_true", help="tiny fine-tune, 10 prompts x 1 seed (fewest for a verdict), 6-prompt eval"
    )
    parser.add_argument("--layers", default="4-7", help="the planted band")
    parser.add_argument("--prompts", type=int, default=20, help="sweep prompts (x --seeds)")
    parser.add_argument("--seeds", default="0-4", help="sweep and eval generation seeds")
    parser.add_argument("--eval-count", type=int, default=30, help="held-out eval prompts")
    parser.add_argument("--eval-steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="plant seed and the random band's draw")
    parser.add_argument(
        "--skip-default", action="store_true", help="do not sweep the unplanted default model (its row says so)"
    )
    args = parser.parse_args(argv)

    from layerscope.cli import main as layerscope
    from layerscope_testbed.shapes.plant import parse_layers

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    planted_layers = list(parse_layers(args.layers))
    seeds = "0" if args.quick else args.seeds
    prompts = 10 if args.quick else args.prompts
    count, eval_steps = (6, 4) if args.quick else (args.eval_count, args.eval_steps)
    model = out / "planted"

    def run(argv: list[str]) -> None:
        print("$ layerscope " + " ".join(argv), flush=True)
        if code := layerscope(argv):
            raise SystemExit(code)

    if not (model / "layerscope_model.json").is_file():
        size = ["--steps", "3", "--clips", "2"] if args.quick else []
        run(["testbed", "plant", "--layers", args.layers, "--seed", str(args.seed), "--out", str(model), *size])
    if not (out / "prompts" / "prompts.jsonl").is_file():
        run(["testbed", "prompts", "--out", str(out / "prompts"), "--scenes", str(prompts)])
    rankings = {}
    for name, target in (("planted", str(model)), ("default", "default")):
        path = out / f"ranking-{name}.json"
        if name == "default" and args.skip_default and not path.is_file():
            rankings[name] = None
            continue
        if not path.is_file():
            sweep = str(out / f"sweep-{name}")
            run(["sweep", str(out / "prompts" / "prompts.jsonl"), "--out-dir", sweep, "--seeds", seeds,
                 "--model", target, "--quiet"])  # fmt: skip
            run(["rank", sweep, "--out", str(path)])
        rankings[name] = summarise_ranking(json.loads(path.read_text()), planted_layers)

    depth = len(rankings["planted"]["moran_i"])
    control = random_band(depth, len(planted_layers), planted_layers, args.seed)
    eval_path = out / "eval.json"
    if eval_path.is_file():
        evals = json.loads(eval_path.read_text())
        evals["table"] = table(evals["results"])
    else:
        evals = evaluate(model, planted_layers, control, count=count, steps=eval_steps, seeds=seeds)
        eval_path.write_text(json.dumps(evals, indent=2))

    result = {
        "planted_layers": planted_layers,
        "random_band": control,
        "quick": args.quick,
        "sweep": {"prompts": prompts, "seeds": seeds},
        "rankings": rankings,
        "eval": {k: v for k, v in evals.items() if k != "results"},
    }
    (out / "planted_truth.json").write_text(json.dumps(result, indent=2))
    text = report(result, evals)
    (out / "planted_truth.md").write_text(text)
    print(text)
    print(f"wrote {out / 'planted_truth.json'} and {out / 'planted_truth.md'}")
    return 0


def evaluate(model: Path, planted: list[int], control: list[int], *, count: int, steps: int, seeds: str) -> dict:
    """No guidance / FG on the planted band / FG on the control band, one pipeline, same prompts and seeds."""
    from layerscope.interventions import load_intervention
    from layerscope.launching import parse_seeds
    from layerscope.loading import load_pipeline
    from layerscope_testbed.shapes.evaluate import check_intervention, evaluate_pipeline, paired_comparison

    pipe, _ = load_pipeline(model)
    common = {"count": count, "steps": steps, "seeds": parse_seeds(seeds)}
    factories = {
        name: (lambda layers=layers: load_intervention("focal-guidance", settings={"weak_layers": layers}))
        for name, layers in (("FG planted band", planted), ("FG random band", control))
    }
    for factory in factories.values():
        check_intervention(pipe, factory)
    results = {"no guidance": evaluate_pipeline(pipe, **common)}
    for name, factory in factories.items():
        results[name] = evaluate_pipeline(pipe, intervention_factory=factory, **common)
    comparisons = {name: paired_comparison(results["no guidance"], results[name]) for name in factories}
    comparisons["FG planted - FG random"] = paired_comparison(results["FG random band"], results["FG planted band"])
    return {"count": count, "steps": steps, "seeds": seeds, "table": table(results), "comparisons": comparisons,
            "results": results}  # fmt: skip


def table(results: dict) -> dict:
    """Per variant: all-correct [95% bootstrap over prompts] per dimension and overall, the share
    of single questions passed, first-frame consistency."""
    return {
        name: {
            "overall": [r["overall"]["all_correct"], *r["overall"]["ci"]],
            **{d: [v["all_correct"], *v["ci"]] for d, v in r["per_dimension"].items()},
            "questions": r["overall"]["questions"],
            "first_frame_consistency": r["overall"].get("first_frame_consistency"),
            "seconds": r["seconds"],
        }
        for name, r in results.items()
    }


def report(result: dict, evals: dict) -> str:
    from layerscope_testbed.shapes.evaluate import format_comparisons

    lines = [f"# Planted truth: layers {result['planted_layers']} text-blind", ""]
    lines += ["| model | verdict | p | band | Jaccard with planted | n_runs |", "| --- | --- | --- | --- | --- | --- |"]
    for name, r in result["rankings"].items():
        if r is None:
            lines.append(f"| {name} | not swept in this run (--skip-default) | | | | |")
            continue
        lines.append(
            f"| {name} | {r['verdict']} | {'-' if r['p_value'] is None else format(r['p_value'], '.3g')} "
            f"| {r['band']} | {r['jaccard_with_planted']:.2f} "
            f"| {r['n_runs']} |"
        )
    lines += ["", "Moran's I per layer, mean [95% CI over runs]:", ""]
    lines += ["| layer | default | planted |", "| --- | --- | --- |"]
    for layer in result["rankings"]["planted"]["moran_i"]:
        cells = [(result["rankings"][m] or {}).get("moran_i", {}).get(layer) for m in ("default", "planted")]
        text = ["-" if c is None else f"{c[0]:.4f} [{c[1]:.4f}, {c[2]:.4f}]" for c in cells]
        lines.append(f"| {layer} | " + " | ".join(text) + " |")
    lines += ["", f"Eval of the planted model: {evals['count']} held-out prompts x seeds {evals['seeds']}, "
              f"{evals['steps']} steps; random band {result['random_band']}; all-correct [95% bootstrap over prompts]:",
              ""]  # fmt: skip
    skip = ("questions", "first_frame_consistency", "seconds")
    dims = [k for k in next(iter(evals["table"].values())) if k not in skip]
    header = "| variant | " + " | ".join(dims) + " | questions passed | first-frame consistency |"
    lines += [header, "| --- " * (len(dims) + 3) + "|"]
    for name, row in evals["table"].items():
        cells = " | ".join(f"{row[d][0]:.3f} [{row[d][1]:.2f}, {row[d][2]:.2f}]" for d in dims)
        ffc = row["first_frame_consistency"]
        lines.append(f"| {name} | {cells} | {row['questions']:.2f} | {'' if ffc is None else f'{ffc:.3f}'} |")
    lines += ["", "Paired over prompt x seed (sign-flip test over prompts):", ""]
    lines.append(format_comparisons(evals["comparisons"]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
