"""The paper's Table 3 on the shapes testbed: baseline, FG zero-shot, post-training without FG,
post-training with FG, on the same held-out prompts and seeds, with 95% intervals and
paired p-values against the baseline.

    python examples/table3.py --ranking runs/sweep-ranking.json --out-dir runs/table3          # full: 30 x 5
    python examples/table3.py --ranking runs/sweep-ranking.json --out-dir runs/t3 --quick      # minutes
    python examples/table3.py --layers 4-7 --model runs/planted --out-dir runs/t3-planted      # named layers

`--layers` guides and trains the named layers instead of a ranking's band (a ranking
with no significant band has none; the table then says which layers it used and why).

Steps (each a `layerscope` command, so every piece is reproducible on its own):
  1. finetune the ranking's weak layers' cross-attention twice: with FG on (paper) and with --no-fg;
  2. eval the shipped model with and without FG (rows "baseline", "FG zero-shot");
  3. eval the --no-fg fine-tune without FG ("post-training only");
  4. eval the FG fine-tune with FG ("post-training + FG").
Writes OUT_DIR/table3.json and OUT_DIR/table3.md.  `--baseline-eval DIR` reuses an
earlier `layerscope eval --intervene focal-guidance --out DIR` of the same prompts and seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranking", help="ranking JSON whose weak band is guided and trained")
    parser.add_argument("--layers", help="guide and train these layers instead, e.g. 4-7")
    parser.add_argument("--model", default="default", help="the model of every row (default: the shipped one)")
    parser.add_argument("--out-dir", default="runs/table3")
    parser.add_argument("--quick", action="store_true", help="6 prompts, 2 seeds, 4 steps, 8 clips x 5 steps")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--baseline-eval", help="reuse this eval directory for the baseline and FG zero-shot rows")
    # 1000, not 50: on the planted v6 model 50 steps (8 s) left all 150 outcomes unchanged
    parser.add_argument("--train-steps", type=int, default=1000, help="fine-tune steps of both post-trainings")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args(argv)
    if bool(args.ranking) == bool(args.layers):
        parser.error("name the layers: --ranking R.json (its weak band) or --layers L-M, not both")

    from layerscope.cli import main as layerscope

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = "0-1" if args.quick else args.seeds
    clips, train_steps = (8, 5) if args.quick else (args.clips, args.train_steps)
    size = ["--count", "6", "--steps", "4"] if args.quick else []
    if args.ranking:
        fg, chosen = ["--intervene", "focal-guidance", "--ranking", args.ranking], ["--ranking", args.ranking]
    else:
        from layerscope_testbed.shapes.plant import parse_layers

        layers = list(parse_layers(args.layers))
        fg = ["--intervene", "focal-guidance", "--fg-set", f"weak_layers={layers}"]
        chosen = ["--layers", args.layers]

    def run(argv: list[str]) -> None:
        print("$ layerscope " + " ".join(argv), flush=True)
        if code := layerscope(argv):
            raise SystemExit(code)

    for name, extra in (("ft-fg", []), ("ft-nofg", ["--no-fg"])):
        if (out / name / "layerscope_finetune.json").is_file():
            check_finished_finetune(out / name, steps=train_steps, lr=args.lr, clips=clips)
        else:
            data = ["--data", f"shapes:{clips}", *chosen, "--steps", str(train_steps)]
            again = ["--resume"] if (out / name).is_dir() else []  # an interrupted run continues (cache, checkpoints)
            target = ["--lr", str(args.lr), "--out", str(out / name), "--quiet"]
            run(["finetune", "--model", args.model, *data, *target, *extra, *again])
    evals = {  # `layerscope eval --out` directories: one bench output per variant
        "zero-shot": Path(args.baseline_eval) if args.baseline_eval else out / "eval-default",
        "ft-nofg": out / "eval-ft-nofg",
        "ft-fg": out / "eval-ft-fg",
    }
    if not (evals["ft-nofg"] / "baseline" / "results.json").is_file():
        run(["eval", "--model", str(out / "ft-nofg"), "--seeds", seeds, *size, "--out", str(evals["ft-nofg"])])
    if not (evals["ft-fg"] / "focal-guidance" / "results.json").is_file():
        only_fg = [*fg, "--skip-baseline"]  # its row is the fine-tune *with* FG; a baseline would go unused
        run(["eval", "--model", str(out / "ft-fg"), "--seeds", seeds, *size, "--out", str(evals["ft-fg"]), *only_fg])
    if not (evals["zero-shot"] / "focal-guidance" / "results.json").is_file():
        run(["eval", "--model", args.model, "--seeds", seeds, *size, "--out", str(evals["zero-shot"]), *fg])
    from layerscope.bench.results import compare, load_results

    sources = {
        "baseline": evals["zero-shot"] / "baseline",
        "FG zero-shot": evals["zero-shot"] / "focal-guidance",
        "post-training only": evals["ft-nofg"] / "baseline",
        "post-training + FG": evals["ft-fg"] / "focal-guidance",
    }
    loaded = {name: load_results(path) for name, path in sources.items()}
    if len({protocol(results) for results in loaded.values()}) > 1:
        raise SystemExit(
            "the evals scored different prompt sets or settings: "
            + "; ".join(f"{name} ({protocol(results)})" for name, results in loaded.items())
            + "; rerun them with the same --seeds, --count and --steps"
        )
    rows = {name: results["summary"] for name, results in loaded.items()}
    comparisons = {
        name: compare(loaded["baseline"], results)["all_correct"]
        for name, results in loaded.items()
        if name != "baseline"
    }
    table = (
        f"Table 3 on the shapes testbed ({len(rows['baseline']['outcomes'])} held-out prompts x seeds {seeds}; "
        f"model {args.model}, layers {'of ' + args.ranking if args.ranking else args.layers}; "
        "95% intervals: bootstrap over prompts)\n\n"
        f"{format_rows(rows)}\n\npaired against the baseline (sign-flip test over prompts):\n\n"
        f"{format_comparisons(comparisons)}\n"
    )
    print(table)
    (out / "table3.md").write_text(table)
    layers_used = {"ranking": args.ranking, "layers": args.layers, "model": args.model}
    (out / "table3.json").write_text(
        json.dumps({"rows": rows, "comparisons": comparisons, "layers": layers_used}, indent=2, default=float)
    )
    print(f"wrote {out / 'table3.json'} and {out / 'table3.md'}")
    return 0


def format_rows(rows: dict) -> str:
    """All-correct rate per dimension and overall, with the overall 95% interval, one row per variant."""
    dimensions = list(dict.fromkeys(next(iter(rows.values()))["dimensions"]))
    lines = ["| row | " + " | ".join(dimensions) + " | overall |", "|---" * (len(dimensions) + 2) + "|"]
    for name, summary in rows.items():
        low, high = summary["overall"]["ci"]
        cells = [f"{summary['per_dimension'][d]['all_correct']:.3f}" for d in dimensions]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {summary['overall']['all_correct']:.3f} "
                     f"[{low:.2f}, {high:.2f}] |")  # fmt: skip
    return "\n".join(lines)


def format_comparisons(comparisons: dict) -> str:
    lines = ["| row - baseline | overall | p (sign-flip) |", "|---|---|---|"]
    for name, result in comparisons.items():
        lines.append(f"| {name} | {result['overall']['difference']:+.3f} | {result['overall']['p_value']:.3g} |")
    return "\n".join(lines)


def check_finished_finetune(directory: Path, **wanted: float) -> None:
    """Refuse to reuse a fine-tune made with other settings: a rerun with new --train-steps would
    otherwise report the old post-training under the new settings."""
    info = json.loads((directory / "layerscope_finetune.json").read_text())
    found = {"steps": info["config"]["steps"], "lr": info["config"]["lr"], "clips": info["clips"]}
    if any(found[key] != value for key, value in wanted.items()):
        have = ", ".join(f"{key} {value:g}" for key, value in found.items())
        asked = ", ".join(f"{key} {value:g}" for key, value in wanted.items())
        raise SystemExit(
            f"{directory} was fine-tuned with {have}, this run asks for {asked}: "
            "pass another --out-dir, or remove that directory and its eval-* directories to train again"
        )


def protocol(results: dict) -> str:
    """What must match for two eval rows to be paired prompt x seed by prompt x seed."""
    summary, settings = results["summary"], results["settings"]
    return f"{len(summary['prompt_ids'])} prompts, seeds {summary['seeds']}, steps {settings['steps']}"


if __name__ == "__main__":
    sys.exit(main())
