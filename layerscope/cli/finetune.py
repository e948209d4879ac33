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
    import json

    from layerscope.finetune_job import FinetuneOptions, run_finetune
    from layerscope.recording import parse_index_ranges

    _, default_frames, default_height, default_width = model_defaults(args.model, "finetune")
    options = FinetuneOptions(
        model_dir=resolve_model(args.model),
        data=args.data,
        out=args.out,
        frames=args.frames or default_frames,
        height=args.height or default_height,
        width=args.width or default_width,
        layers=parse_index_ranges(args.layers, 10_000, "--layers") if args.layers else None,
        ranking=args.ranking,
        steps=args.steps,
        lr=args.lr,
        grad_accum=args.grad_accum,
        seed=args.seed,
        focal_guidance=args.fg,
        freeze_anchors=args.freeze_anchors,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        dtype=args.dtype,
        device=args.device,
        clip=args.clip,
        intervene_config=args.intervene_config,
        fg_settings=dict(args.fg_set or []),
        progress=not args.quiet,
    )
    result = run_finetune(options)
    record_path = result / "layerscope_finetune.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        print(
            f"wrote {result}: layers {record['layers']}, {record['trainable_parameters']:,} trainable parameters "
            f"({100 * record['trainable_share']:.2f}% of the transformer), fixed-sample loss "
            f"{record['eval_loss_before']:.4f} -> {record['eval_loss_after']:.4f}; "
            f"use it with: layerscope record --model {result} ..."
        )
    return 0
