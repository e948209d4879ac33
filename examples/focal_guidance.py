"""The paper's workflow in one command: record -> rank -> record with Focal Guidance -> report.

    python examples/focal_guidance.py                       # built-in model, packaged example
    python examples/focal_guidance.py --out-dir runs/fg --fg-mode fsg
    python examples/focal_guidance.py --model /path/to/Wan2.1-I2V-14B-480P-Diffusers \\
        --clip /path/to/open_clip_vit_h14 --image ref.png --prompt "..." --keywords "..." \\
        --device cuda --dtype bfloat16

Writes OUT_DIR/baseline.zarr, OUT_DIR/ranking.json, OUT_DIR/focal_guidance.zarr and
OUT_DIR/compare.html (open it in a browser).  Both recordings use the same seed and
probes, so the report compares like with like.

Which layers get guidance: one run rarely carries a significant weak band (the ranking
says "no significant weak band" and Focal Guidance then refuses to pick layers).  Rank a
sweep first and pass ``--ranking runs/ranking.json``, or force layers with
``--weak-layers 11-26`` (the choice is then yours, and the store says so).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: the ablations of the paper's Table 4 as `layerscope record` settings
ABLATIONS = {
    "fsg+cache": [],
    "fsg": ["--fg-set", "attention_cache=false"],
    "cache": ["--fg-set", "fsg=false"],
    "baseline": ["--fg-set", "fsg=false", "--fg-set", "attention_cache=false"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="runs/focal-guidance")
    parser.add_argument("--model", default="default")
    parser.add_argument("--clip", help="open_clip checkpoint dir (default: <model>/clip)")
    parser.add_argument("--image")
    parser.add_argument("--prompt")
    parser.add_argument("--keywords", help="probed keywords (and, unless the config names others, guided ones)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fg-mode", choices=tuple(ABLATIONS), default="fsg+cache", help="which mechanisms run")
    parser.add_argument("--intervene-config", help="TOML with Focal Guidance settings (lambdas, taus, ...)")
    parser.add_argument("--method", default="band", choices=("band", "bottom-k", "threshold"))
    parser.add_argument("--ranking", help="use this ranking (e.g. of a sweep) instead of ranking the baseline")
    parser.add_argument("--weak-layers", help="force the guided layers, e.g. 11-26 or 3,5,7 (skips the verdict)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cpu-offload", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from layerscope.cli import main as layerscope

    args = parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--model", args.model, "--seed", str(args.seed), "--dtype", args.dtype, "--device", args.device]
    for flag in ("image", "prompt", "keywords", "steps", "frames", "height", "width"):
        value = getattr(args, flag)
        if value is not None:
            common += [f"--{flag}", str(value)]
    if args.cpu_offload:
        common.append("--cpu-offload")

    print("1/4 baseline recording")
    if code := layerscope(["record", "--out", str(out / "baseline.zarr"), "--overwrite", *common]):
        return code
    ranking = Path(args.ranking) if args.ranking else out / "ranking.json"
    if not args.ranking:
        print("2/4 ranking the semantic-weak layers of the baseline")
        if code := layerscope(["rank", str(out / "baseline.zarr"), "--out", str(ranking), "--method", args.method]):
            return code
    else:
        print(f"2/4 using the ranking {ranking}")
    print(f"3/4 recording with Focal Guidance ({args.fg_mode})")
    guided = ["--intervene", "focal-guidance", "--ranking", str(ranking), *ABLATIONS[args.fg_mode]]
    if args.weak_layers:
        from layerscope.recording import parse_index_ranges

        layers = parse_index_ranges(args.weak_layers, 10_000, "--weak-layers")
        guided += ["--fg-set", f"weak_layers={layers}"]
    if args.intervene_config:
        guided += ["--intervene-config", args.intervene_config]
    if args.clip:
        guided += ["--clip", args.clip]
    if code := layerscope(["record", "--out", str(out / "focal_guidance.zarr"), "--overwrite", *common, *guided]):
        return code
    print("4/4 before/after report")
    return layerscope(
        [
            "report",
            str(out / "baseline.zarr"),
            "--compare",
            str(out / "focal_guidance.zarr"),
            "--out",
            str(out / "compare.html"),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
