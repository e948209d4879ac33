"""``layerscope finetune``: post-train the weak layers with Focal Guidance on."""

from __future__ import annotations

import argparse

from layerscope.cli.options import (
    add_fg_set,
    model_defaults,
    non_negative_int,
    positive_float,
    positive_int,
    resolve_model,
)
from layerscope.errors import UsageError
from layerscope.registry import DATASETS


def add_parser(sub: argparse._SubParsersAction) -> None:
    from layerscope.finetune import MIXED_PRECISION

    p = sub.add_parser(
        "finetune",
        help="post-train the weak layers' cross-attention with Focal Guidance on (paper Table 3)",
        description="Trains only the attention of the ranked weak layers (or --layers; Wan blocks.<l>.attn2, "
        "HunyuanVideo-I2V single_transformer_blocks.<s>.attn) with the flow-matching loss, Focal Guidance "
        "installed for every sample unless --no-fg, its anchors learning unless --freeze-anchors. "
        "Writes the changed tensors and a "
        "provenance JSON to --out; `layerscope record --model OUT` merges them into the base on load. "
        "Multi-GPU: `accelerate launch -m layerscope finetune ...`.",
    )
    p.add_argument("--model", default="default", help="'default', 'random' or a local Wan/HunyuanVideo I2V dir")
    p.add_argument("--data", required=True, help="training JSONL (video, caption, keywords, image), or shapes:N")
    p.add_argument("--ranking", help="ranking JSON from `layerscope rank`: its weak band is trained and guided")
    p.add_argument("--layers", help="train these layers instead, e.g. 11-26 (needed when the ranking has no band)")
    p.add_argument("--out", required=True, help="output directory, e.g. runs/finetuned")
    p.add_argument("--no-fg", dest="fg", action="store_false", help="train without Focal Guidance (ablation)")
    p.add_argument("--freeze-anchors", action="store_true",
                   help="FG's anchors V_k^vis as constants: no gradient through them (ablation)")  # fmt: skip
    p.add_argument("--steps", type=positive_int, default=50, help="optimizer steps (default 50)")
    p.add_argument("--lr", type=positive_float,
                   help="AdamW learning rate (default the paper's: 1e-5 Wan, 1e-4 HunyuanVideo-I2V)")  # fmt: skip
    t = p.folded_group("training engine")
    t.add_argument("--grad-accum", type=positive_int, default=1, help="samples per step (paper batch: 8)")
    t.add_argument("--seed", type=non_negative_int, default=0)
    t.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no", help="accelerate's (bf16 on GPUs)")
    t.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory (large models)")
    t.add_argument("--checkpoint-every", type=positive_int, default=25, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--frames", type=positive_int, help="clip frames, 4n+1 (default: the model's; 81 for checkpoints)")
    p.add_argument("--height", type=positive_int, help="pixels (default: the model's; 480 for checkpoints)")
    p.add_argument("--width", type=positive_int, help="pixels (default: the model's; 832 for checkpoints)")
    t.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="model dtype")
    p.add_argument("--device", default="cpu", help="torch device (under a launcher each process takes its own)")
    t.add_argument("--clip", help="open_clip checkpoint dir for Focal Guidance (default: <model>/clip)")
    t.add_argument("--intervene-config", help="TOML with Focal Guidance settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_fg_set(t)
    p.set_defaults(func=_cmd_finetune)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from layerscope.finetune import FinetuneConfig, finetune, latest_checkpoint
    from layerscope.loading import load_pipeline, model_info, resolve_model_dir
    from layerscope.outputs import check_output_path
    from layerscope.ranking import Ranking
    from layerscope.recording import parse_index_ranges
    from layerscope.training_data import read_training_data

    out = check_output_path(args.out, "--out", directory=True)
    from datetime import timedelta

    from accelerate import PartialState

    # every process checks before any of them writes: under a launcher they share --out
    state = PartialState(cpu=args.device == "cpu", timeout=timedelta(days=7))
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise UsageError(f"--out {out} exists and is not empty; pass --resume to continue it or choose another --out")
    state.wait_for_everyone()
    _, default_frames, default_height, default_width = model_defaults(args.model, "finetune")
    frames, height, width = args.frames or default_frames, args.height or default_height, args.width or default_width
    ranking = Ranking.load(args.ranking) if args.ranking else None
    forced = parse_index_ranges(args.layers, 10_000, "--layers") if args.layers else None
    if ranking is not None:
        layers = ranking.layers_to_guide(forced, source=f"--ranking {args.ranking}", hint="pass --layers {A}-{B}")
    elif forced:
        layers = forced
    else:
        raise UsageError("name the layers to train: --ranking R.json (its weak band) or --layers 11-26")
    config = FinetuneConfig(
        layers=layers,
        steps=args.steps,
        lr=args.lr,
        grad_accum=args.grad_accum,
        seed=args.seed,
        focal_guidance=args.fg,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        checkpoint_every=args.checkpoint_every,
        height=height,
        width=width,
        num_frames=frames,
    )
    model_dir = resolve_model_dir(resolve_model(args.model))
    data_path = args.data
    name, _, count = args.data.partition(":")
    if count and name in DATASETS:  # a generated set, e.g. shapes:64 from the testbed
        if not count.isdigit() or int(count) < 1:
            raise UsageError(f"--data {args.data}: use {name}:N with N >= 1 generated clips, e.g. {name}:64")
        if height != width:
            raise UsageError(f"{name}:N clips are square; use --height equal to --width")
        data_path = out / "data" / "train.jsonl"
        if state.is_main_process and not (args.resume and data_path.is_file()):
            DATASETS.load(name)(out / "data", int(count), seed=args.seed, frames=frames, size=height)
        state.wait_for_everyone()  # the others read what the main process wrote
    clips = read_training_data(data_path)
    short = [c for c in clips if len(c.frames) < frames]
    if short:
        raise UsageError(f"--data: {short[0].video} has {len(short[0].frames)} frames, fewer than --frames {frames}")
    intervention = None
    if args.fg:
        from layerscope.interventions import load_intervention

        settings = {**dict(args.fg_set or []), "weak_layers": layers}
        if args.freeze_anchors:
            settings["anchor_gradients"] = False
        intervention = load_intervention(
            "focal-guidance", ranking=args.ranking, config=args.intervene_config, clip=args.clip, settings=settings
        )
    elif args.fg_set or args.intervene_config or args.clip or args.freeze_anchors:
        raise UsageError(
            "--fg-set/--intervene-config/--clip/--freeze-anchors configure Focal Guidance; drop them with --no-fg"
        )
    if args.resume and latest_checkpoint(out) is None:
        print(f"note: no checkpoint in {out}; starting from step 0")
    from layerscope.launching import process_device

    pipe, model_dir = load_pipeline(model_dir, dtype=args.dtype, device=process_device(args.device, state))
    pipe.set_progress_bar_config(disable=True)
    info = model_info(model_dir)
    provenance = {
        "ranking": {"path": args.ranking, "verdict": ranking.verdict if ranking else None,
                    "weak_layers": ranking.weak_layers if ranking else None},
        "data": str(data_path),
        "intervention": intervention.to_dict() if intervention is not None else "none",
    }  # fmt: skip
    config.extra = {"model_id": info["model_id"], "base_model_id": info.get("base_model_id")}
    result = finetune(
        pipe, model_dir, clips, config, out, intervention=intervention, resume=args.resume,
        progress=not args.quiet, provenance=provenance,
    )  # fmt: skip
    record_path = result / "layerscope_finetune.json"
    if record_path.is_file():
        import json

        record = json.loads(record_path.read_text())
        print(
            f"wrote {result}: layers {layers}, {record['trainable_parameters']:,} trainable parameters "
            f"({100 * record['trainable_share']:.2f}% of the transformer), fixed-sample loss "
            f"{record['eval_loss_before']:.4f} -> {record['eval_loss_after']:.4f}; "
            f"use it with: layerscope record --model {result} ..."
        )
    return 0
