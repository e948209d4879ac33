"""``layerscope record``: one run's maps into a Zarr store."""

from __future__ import annotations

import argparse

from layerscope.cli.options import (
    add_recording_options,
    default_example,
    load_intervention,
    model_attrs,
    non_negative_int,
    record_config,
    resolve_model,
)
from layerscope.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "record",
        help="run an I2V pipeline and stream per-layer, per-step similarity maps into a Zarr store",
        description="Record visual-keyword similarity maps of every block and denoising step. "
        "With no --image/--prompt/--keywords the packaged example is used.",
    )
    p.add_argument(
        "--out", required=True, help="store to write, e.g. runs/demo.zarr or an fsspec URL (s3://b/demo.zarr)"
    )
    p.add_argument("--image", help="reference image (PNG/JPEG); default: the packaged example")
    p.add_argument("--prompt", help="text prompt; default: the packaged example prompt")
    p.add_argument("--keywords", help="comma-separated words of the prompt to probe, e.g. 'circle,square'")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    add_recording_options(p)
    p.set_defaults(func=_cmd_record)


def _cmd_record(args: argparse.Namespace) -> int:
    from layerscope.keywords import check_keywords_in_prompt, parse_keywords
    from layerscope.loading import load_image, load_pipeline, resolve_model_dir
    from layerscope.recording import record
    from layerscope.store import check_store_target

    # every check that needs no model comes first: a typo costs one line, not a model load
    out = check_store_target(args.out, overwrite=args.overwrite)
    if args.prompt is not None and not args.keywords:
        raise UsageError("--keywords is required with --prompt; name words of the prompt, e.g. --keywords 'cat,ball'")
    if args.image is None or args.prompt is None:
        example_image, example_prompt, example_keywords = default_example()
    image = load_image(args.image) if args.image is not None else example_image
    prompt = args.prompt if args.prompt is not None else example_prompt
    keywords = parse_keywords(args.keywords) if args.keywords else example_keywords
    config = record_config(args, prompt, keywords, args.seed, args.overwrite)
    check_keywords_in_prompt(config.prompt, config.keywords)
    model_dir = resolve_model_dir(resolve_model(args.model))
    intervention = load_intervention(args)
    pipe, model_dir = load_pipeline(model_dir, dtype=args.dtype, device=args.device, cpu_offload=args.cpu_offload)
    attrs = model_attrs(args, model_dir)
    summary = record(pipe, out, config, image=image, attrs=attrs, progress=not args.quiet, intervention=intervention)
    if attrs["weights"] == "random":
        print(f"note: {attrs['weights_note']}")
    print(summary.line())
    return 0 if summary.status == "complete" else 1
