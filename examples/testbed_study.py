"""The testbed study end to end: planted truth, then the paper's Table 3, in one command.

    python examples/testbed_study.py --out-dir runs/study --quick     # minutes on 2 cores
    python examples/testbed_study.py --out-dir runs/study             # hours on 2 cores

1. `examples/planted_truth.py`: plant text-blind layers 4-7 into the shipped model, sweep
   and rank the planted and the unplanted model, evaluate FG on the planted band, on a
   random band and none (OUT_DIR/planted-truth/).
2. `examples/table3.py`: baseline / FG zero-shot / post-training without FG /
   post-training with FG, five seeds, intervals and paired tests (OUT_DIR/table3/).
   Which layers?  The shipped model's own ranking band when that ranking is significant
   (the paper's setting).  When it is not, the shipped model has no weak layers for FG
   to guide or for post-training to target, and the study runs Table 3 on the planted
   model with the band its ranking found, where weak layers exist by construction; the
   JSON says which and why.
Writes OUT_DIR/study.json and OUT_DIR/study.md; finished steps are reused on a rerun.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table3_target(planted_dir: Path) -> dict:
    """Model, ranking and the reason for Table 3, from the planted-truth run's two rankings."""
    default = json.loads((planted_dir / "ranking-default.json").read_text())
    if default.get("significant"):
        return {
            "model": "default",
            "ranking": str(planted_dir / "ranking-default.json"),
            "why": f"the shipped model's ranking: {default['verdict']}",
        }
    planted = json.loads((planted_dir / "ranking-planted.json").read_text())
    if not planted.get("significant"):
        raise SystemExit(
            "neither ranking found a significant weak band; Table 3 needs layers: "
            "run examples/table3.py --layers L-M yourself"
        )
    return {
        "model": str(planted_dir / "planted"),
        "ranking": str(planted_dir / "ranking-planted.json"),
        "why": f"the shipped model has no significant band ({default['verdict']}); "
        f"the planted model's ranking: {planted['verdict']}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="runs/study")
    parser.add_argument("--quick", action="store_true", help="both studies in their --quick sizes")
    parser.add_argument("--seeds", default="0-4", help="generation seeds of every sweep and eval")
    args = parser.parse_args(argv)

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quick = ["--quick"] if args.quick else []
    planted_dir = out / "planted-truth"
    if code := _example("planted_truth").main(["--out-dir", str(planted_dir), "--seeds", args.seeds, *quick]):
        return code
    target = table3_target(planted_dir)
    print(f"Table 3 on {target['model']}: {target['why']}", flush=True)
    table_args = ["--ranking", target["ranking"], "--model", target["model"], "--out-dir", str(out / "table3")]
    if code := _example("table3").main([*table_args, "--seeds", args.seeds, *quick]):
        return code

    planted = json.loads((planted_dir / "planted_truth.json").read_text())
    table3 = json.loads((out / "table3" / "table3.json").read_text())
    study = {"quick": args.quick, "seeds": args.seeds, "planted_truth": planted, "table3_target": target,
             "table3": table3}  # fmt: skip
    (out / "study.json").write_text(json.dumps(study, indent=2, default=float))
    text = (
        (planted_dir / "planted_truth.md").read_text()
        + f"\n# Table 3\n\nOn {target['model']}: {target['why']}.\n\n"
        + (out / "table3" / "table3.md").read_text()
    )
    (out / "study.md").write_text(text)
    print(f"wrote {out / 'study.json'} and {out / 'study.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
