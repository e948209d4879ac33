"""Does the map see the text?  Every instrument on a cause-only planted model and on v7.

    python examples/instrument_study.py --out-dir runs/instruments            # 20 prompts x 5 seeds
    python examples/instrument_study.py --out-dir runs/instruments-q --quick  # 10 prompts x 1 seed

Steps (each a `layerscope` command, reproducible on its own; finished steps are reused):
  1. `testbed plant --layers 4-7`: the shipped model (v7) with blocks 4-7 text-blind and
     nothing chosen by looking at maps (to_v.bias the parent's; no readout tuning);
  2. `testbed prompts`: held-out sweep prompts, each line carrying its scene;
  3. `sweep` both models with each probe: hidden (Eq. 10), contrastive, influence;
  4. `testbed auroc` on every sweep: each map's AUROC against the subject's mask;
  5. `rank` each instrument (a probe and a statistic) with the run-level band test.
Then, per model: each instrument's verdict, its Jaccard with the planted layers, and the
Spearman rank correlation between instruments' layer curves.  Writes OUT/instruments.json
and OUT/instruments.md.

The instruments: Moran's I and std of Eq. 10's map (the paper's), AUROC of Eq. 10's map,
RMS and AUROC of the contrastive map, RMS and AUROC of the causal influence map.  A
low-valued band is what `rank` looks for in every one of them (for RMS: little text
signal; for AUROC: poor localisation).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROBES = ("hidden", "contrastive", "influence")
#: (name, probe, statistic)
INSTRUMENTS = (
    ("Eq. 10 Moran's I", "hidden", "moran_i"),
    ("Eq. 10 std", "hidden", "std"),
    ("Eq. 10 AUROC", "hidden", "auroc"),
    ("contrastive RMS", "contrastive", "rms"),
    ("contrastive AUROC", "contrastive", "auroc"),
    ("influence RMS", "influence", "rms"),
    ("influence AUROC", "influence", "auroc"),
)


def jaccard(a: list[int], b: list[int]) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    union = set(a) | set(b)
    return len(set(a) & set(b)) / len(union) if union else 1.0


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rho of two layer curves (None when either is constant or has gaps)."""
    import numpy as np
    from scipy.stats import spearmanr

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not (np.isfinite(x).all() and np.isfinite(y).all()) or x.std() == 0 or y.std() == 0:
        return None
    return float(spearmanr(x, y).statistic)


def summarise(ranking: dict, statistic: str, planted: list[int]) -> dict:
    """What the study keeps of one ranking JSON."""
    return {
        "verdict": ranking["verdict"],
        "verdict_kind": ranking.get("verdict_kind"),
        "p_value": ranking["p_value"],
        "band": ranking["band"],
        "weak_layers": ranking["weak_layers"],
        "drop": (ranking.get("effect") or {}).get("drop"),
        "drop_ci": (ranking.get("effect") or {}).get("drop_ci"),
        "jaccard_with_planted": jaccard(ranking["weak_layers"], planted),
        "curve": [row[statistic] for row in ranking["layers"]],
        "n_runs": ranking["n_runs"],
    }


def correlations(instruments: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """Spearman's rho between every pair of instruments' layer curves."""
    names = list(instruments)
    return {a: {b: spearman(instruments[a]["curve"], instruments[b]["curve"]) for b in names} for a in names}


def report(result: dict) -> str:
    planted = result["planted_layers"]
    lines = [f"# Instruments: does the map see the text? (planted text-blind layers {planted})", ""]
    sweep = result["sweep"]
    lines += [
        f"Sweeps: {sweep['prompts']} held-out prompts x seeds {sweep['seeds']}, {sweep['steps']} steps; "
        "verdicts from `layerscope rank` (split-sample band test).",
        "",
    ]
    for model, instruments in result["models"].items():
        lines += [f"## {model}", "", "| instrument | verdict | weak layers | Jaccard with planted |"]
        lines += ["| --- | --- | --- | --- |"]
        for name, r in instruments.items():
            weak = ", ".join(map(str, r["weak_layers"])) or "none"
            lines.append(f"| {name} | {r['verdict']} | {weak} | {r['jaccard_with_planted']:.2f} |")
        lines += ["", "Spearman rank correlation between instruments' layer curves:", ""]
        names = list(instruments)
        lines += ["| | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
        table = result["correlations"][model]
        for a in names:
            cells = ["-" if table[a][b] is None else f"{table[a][b]:+.2f}" for b in names]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="runs/instruments")
    parser.add_argument("--quick", action="store_true", help="10 prompts x 1 seed (the fewest for a verdict)")
    parser.add_argument("--layers", default="4-7", help="the planted text-blind band")
    parser.add_argument("--prompts", type=int, default=20, help="sweep prompts (x --seeds)")
    parser.add_argument("--seeds", default="0-4", help="sweep seeds")
    parser.add_argument("--steps", type=int, default=6, help="denoising steps per recording")
    parser.add_argument("--seed", type=int, default=0, help="plant seed")
    args = parser.parse_args(argv)

    from layerscope.cli import main as layerscope
    from layerscope_testbed.shapes.plant import parse_layers

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    planted = list(parse_layers(args.layers))
    seeds = "0" if args.quick else args.seeds
    prompts = 10 if args.quick else args.prompts
    model = out / "planted"

    def run(argv: list[str]) -> None:
        print("$ layerscope " + " ".join(argv), flush=True)
        if code := layerscope(argv):
            raise SystemExit(code)

    if not (model / "layerscope_model.json").is_file():
        run(["testbed", "plant", "--layers", args.layers, "--seed", str(args.seed), "--out", str(model)])
    prompt_file = out / "prompts" / "prompts.jsonl"
    if not prompt_file.is_file():
        run(["testbed", "prompts", "--out", str(out / "prompts"), "--scenes", str(prompts)])
    models = {"planted (4-7 text-blind, cause only)": str(model), "default (v7)": "default"}
    result: dict = {
        "planted_layers": planted,
        "quick": args.quick,
        "sweep": {"prompts": prompts, "seeds": seeds, "steps": args.steps},
        "models": {},
        "correlations": {},
    }
    for label, target in models.items():
        tag = "planted" if target != "default" else "default"
        instruments = {}
        for probe in PROBES:
            sweep = out / f"sweep-{tag}-{probe}"
            marker = sweep / ".auroc-done"
            if not marker.is_file():
                run(["sweep", str(prompt_file), "--out-dir", str(sweep), "--seeds", seeds, "--model", target,
                     "--probe", probe, "--steps", str(args.steps), "--quiet"])  # fmt: skip
                run(["testbed", "auroc", "--stores", str(sweep)])
                marker.write_text("done\n")
            for name, instrument_probe, statistic in INSTRUMENTS:
                if instrument_probe != probe:
                    continue
                path = out / f"ranking-{tag}-{probe}-{statistic}.json"
                if not path.is_file():
                    run(["rank", str(sweep), "--metric", statistic, "--out", str(path)])
                instruments[name] = summarise(json.loads(path.read_text()), statistic, planted)
        result["models"][label] = instruments
        result["correlations"][label] = correlations(instruments)
    (out / "instruments.json").write_text(json.dumps(result, indent=2))
    text = report(result)
    (out / "instruments.md").write_text(text)
    print(text)
    print(f"wrote {out / 'instruments.json'} and {out / 'instruments.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
