"""``layerscope plan``: what a recording will cost (store, probe memory, compute), from configs alone."""

from __future__ import annotations

import argparse

from layerscope.cli.options import model_defaults, positive_int
from layerscope.registry import PROBES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="predict a recording's store size, probe memory and extra compute from configs (no weights)",
        description="Print what recording a model at a video size costs: token grid, text tokens, transformer "
        "parameters (exact, instantiated on the meta device), store bytes, the probe's extra peak memory per layer "
        "and its compute relative to one forward pass (FLOPs counted on meta tensors). No weights are read.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a diffusers pipeline folder, its transformer/config.json, a bare transformer config.json "
        "(with --pipeline) or a published-configs file (with --entry)",
    )
    p.add_argument("--entry", help="which model of a published-configs file, e.g. Wan2.1-I2V-14B-480P")
    p.add_argument("--pipeline", help="pipeline class of a bare transformer config, e.g. WanImageToVideoPipeline")
    sized = "(default: the model folder's, the published entry's, else the pipeline's own default"
    p.add_argument("--frames", type=positive_int, help=f"video frames {sized}, e.g. 81 for Wan2.1)")
    p.add_argument("--height", type=positive_int, help=f"pixels {sized}, e.g. 480)")
    p.add_argument("--width", type=positive_int, help=f"pixels {sized}, e.g. 832)")
    p.add_argument("--steps", type=positive_int, help=f"denoising steps {sized}, e.g. 50)")
    p.add_argument("--layers", help="blocks to record, e.g. 0-39 or 0-3,10 (default all)")
    p.add_argument("--record-steps", help="steps to record, e.g. 0-9 (default all)")
    p.add_argument("--probe", default="hidden", help=f"probe kind: {', '.join(PROBES.names())} (default hidden)")
    p.add_argument("--dtype", default="bfloat16", help="model dtype: float32, bfloat16 or float16 (default bfloat16)")
    p.add_argument("--store-dtype", default="float16", help="map dtype in the store: float16 or float32")
    p.add_argument("--keywords", type=positive_int, default=2, help="keywords recorded (default 2)")
    p.add_argument("--branch", default="cond", help="cond, uncond or both (default cond)")
    p.set_defaults(func=_cmd_plan)


def _cmd_plan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from layerscope.planning import PlanOptions, make_plan

    if Path(args.model).expanduser().is_dir():  # what `record --model DIR` would use: the folder's sizes first
        declared = dict(zip(("steps", "frames", "height", "width"), model_defaults(args.model), strict=True))
        for name, value in declared.items():
            if getattr(args, name) is None:
                setattr(args, name, value)

    options = PlanOptions(
        model=args.model,
        entry=args.entry,
        pipeline=args.pipeline,
        frames=args.frames,
        height=args.height,
        width=args.width,
        steps=args.steps,
        layers=args.layers,
        record_steps=args.record_steps,
        probe=args.probe,
        dtype=args.dtype,
        store_dtype=args.store_dtype,
        keywords=args.keywords,
        branch=args.branch,
    )
    print(make_plan(options).table())
    return 0
