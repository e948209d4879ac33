"""``layerscope sweep``: one store per (prompt, seed); resumable, shardable."""

from __future__ import annotations

import argparse

from layerscope.cli.options import (
    add_recording_options,
    load_intervention,
    model_attrs,
    record_config,
    resolve_model,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="record one store per (prompt, seed) from a JSONL prompt file; resumable, shardable",
        description="PROMPTS is JSONL, one run a line: image (relative to the file), prompt, keywords, and "
        "optional id, dimension, questions. Resuming is the default: complete stores are skipped, "
        "interrupted ones recorded again. Under `accelerate launch -m layerscope sweep ...` or "
        "`torchrun --nproc-per-node N -m layerscope sweep ...` each process records its share.",
    )
    p.add_argument(
        "prompts", help="JSONL prompt file, e.g. the prompts.jsonl that `layerscope testbed prompts --out DIR` writes"
    )
    p.add_argument("--out-dir", required=True, help="directory or fsspec URL for the stores, sweep.json, index.json")
    p.add_argument("--seeds", default="0", help="seeds per prompt, e.g. 0-4 or 0,3,7 (default 0)")
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="record every run again, replacing complete stores (default: resume, skipping them)",
    )
    add_recording_options(p)
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from layerscope.loading import resolve_model_dir
    from layerscope.sweep import SweepOptions, run_sweep

    options = SweepOptions(
        prompts=args.prompts,
        out_dir=args.out_dir,
        seeds=args.seeds,
        resume=args.resume,
        device=args.device,
        dtype=args.dtype,
        cpu_offload=args.cpu_offload,
        progress=not args.quiet,
    )
    return run_sweep(
        options,
        make_config=lambda entry, seed, overwrite: record_config(
            args, entry.prompt, list(entry.keywords), seed, overwrite
        ),
        model_dir=lambda: resolve_model_dir(resolve_model(args.model)),
        model_attrs=lambda model_dir: model_attrs(args, model_dir),
        intervention=lambda: load_intervention(args),
    )
