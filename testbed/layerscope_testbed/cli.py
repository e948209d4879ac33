"""The testbed's commands, plugged into ``layerscope`` by entry points: ``testbed`` and ``eval``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from layerscope.cli.options import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    rank_inputs,
    unit_interval,
)
from layerscope.errors import UsageError
from layerscope_testbed.tiny_families import TINY_FAMILIES, build_tiny


def _is_shapes_model(marker: Path) -> bool:
    """A shapes-world model made by ``testbed train`` or ``testbed plant`` (256x256, 9 frames)."""
    import json

    try:
        return json.loads(marker.read_text(encoding="utf-8"))["name"].startswith("layerscope-shapes-wan-i2v")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _text_encoder_heads(init: str | None) -> int:
    """Attention heads per text-encoder layer of the model ``testbed train`` will train: ``init``'s, or a new one's."""
    import json

    from layerscope_testbed import TEXT_HEADS

    if not init:
        return TEXT_HEADS
    try:
        return int(json.loads((Path(init).expanduser() / "text_encoder" / "config.json").read_text())["num_heads"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"--init {init}: cannot read text_encoder/config.json ({error}); is it complete?") from None


def add_testbed_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("testbed", help="the embedded models: build the random one, train the shapes-world one")
    p.add_argument(
        "action",
        choices=("build", "build-tiny", "path", "train", "prompts", "export-bench", "plant", "auroc"),
        help="build: write the random tiny model (once); build-tiny: write a tiny random pipeline of --family "
        "to --out; path: print where --model default/random lives; "
        "train: train the shapes-world model (long: run it in the background); "
        "prompts: write a sweep prompt file (prompts.jsonl + images) of --scenes held-out scenes to --out; "
        "auroc: write each --stores store's AUROC against the subject's mask (then `rank --metric auroc`)",
    )
    p.add_argument("--stores", nargs="+", help="auroc: sweep directories or stores recorded from `testbed prompts`")
    p.add_argument("--out", help="directory to write to (build: default the cache directory; train: required)")
    p.add_argument("--model", choices=("default", "random"), default="default", help="path: which model")
    p.add_argument(
        "--family",
        choices=tuple(TINY_FAMILIES),
        default="wan-i2v",
        help="build-tiny: the model family (real diffusers classes at toy size, random weights)",
    )
    p.add_argument(
        "--condition-type",
        choices=("token_replace", "latent_concat"),
        default="token_replace",
        help="build-tiny, hunyuan-video-i2v: the released checkpoints' image conditioning (16 or 33 channels)",
    )
    train = p.folded_group("train (shapes-world model)")
    planting = p.folded_group("plant (known text-blind layers)")
    train.add_argument("--minutes", type=positive_float, default=60.0, help="train: total time budget")
    p.add_argument("--seed", type=non_negative_int, default=0, help="train: seed (data, init, batches)")
    p.add_argument(
        "--scenes",
        type=positive_int,
        default=None,
        help="train: number of training scenes (>= 8, default 480); prompts: number of prompts (default 20)",
    )
    train.add_argument(
        "--replay",
        metavar="MODEL_JSON",
        help="train: repeat a finished run step for step from its layerscope_model.json (ignores the other "
        "options but --init, which a continued run needs again)",
    )
    train.add_argument(
        "--init",
        metavar="MODEL_DIR",
        help="train: continue this trained shapes-world model (its VAE, CLIP and encoders kept, its DiT trained on)",
    )
    train.add_argument(
        "--focus-weight",
        type=non_negative_float,
        default=8.0,
        help="train: extra DiT loss weight where the clip changes or shows a shape (0: plain MSE; default 8)",
    )
    train.add_argument(
        "--ema", type=unit_interval, default=0.999, help="train: EMA decay of the saved DiT (0: last weights)"
    )
    train.add_argument("--lr-dit", type=positive_float, default=1e-3, help="train: peak DiT learning rate")
    train.add_argument(
        "--lr-text",
        type=non_negative_float,
        default=0.0,
        help="train: peak learning rate of the text encoder, trained with the DiT (default 0: frozen)",
    )
    train.add_argument(
        "--text-role-heads",
        type=non_negative_int,
        default=0,
        help="train: text-encoder heads per layer made to attend only before / only after each word, "
        "so word order reaches the DiT (even; default 0: none)",
    )
    train.add_argument(
        "--push-scenes",
        type=non_negative_int,
        default=0,
        help="train: extra interaction-only training scenes, on top of --scenes (default 0)",
    )
    train.add_argument(
        "--push-swaps",
        action="store_true",
        help="train: add each training push scene's role-swapped twin (same first frame, 'the B pushes the A')",
    )
    train.add_argument("--cache", help="train: cache encoded training clips here (reruns skip the encoding)")
    train.add_argument(
        "--device",
        default="cpu",
        help="train: where to encode and train, e.g. cuda (recorded; a replay uses its run's device)",
    )
    train.add_argument(
        "--dit-batch", type=positive_int, default=4, help="train: DiT batch size (default 4; raise it on a GPU)"
    )
    train.add_argument(
        "--grow-layers",
        type=non_negative_int,
        default=0,
        help="train, with --init: append this many DiT blocks that start as the identity (default 0)",
    )
    planting.add_argument("--layers", default="4-7", help="plant: blocks whose cross-attention never sees the text")
    planting.add_argument("--steps", type=non_negative_int, default=20, help="plant: fine-tune steps (batch 4)")
    planting.add_argument("--clips", type=positive_int, default=8, help="plant: training clips for the fine-tune")
    planting.add_argument(
        "--tune-readout",
        action="store_true",
        help="plant: also choose the blind blocks' to_v.bias so their maps lack spatial structure "
        "(CIRCULAR: the ranking then recovers this choice, not text-blindness; off by default)",
    )
    p.set_defaults(func=_cmd_testbed)


def _cmd_testbed(args: argparse.Namespace) -> int:
    from layerscope_testbed import default_cache_dir, ensure_default_model, shipped_model_dir

    if args.action == "path":  # where the model is (or will be built), without building it
        print((shipped_model_dir() if args.model == "default" else None) or default_cache_dir())
        return 0
    if args.action == "train":
        return _train(args)
    if args.action == "export-bench":  # a `layerscope bench` prompt file
        return _testbed_export_bench(args)
    if args.action == "build-tiny":
        return _build_tiny(args)
    if args.action == "auroc":
        from layerscope_testbed.shapes.localisation import write_auroc

        if not args.stores:
            raise UsageError("testbed auroc needs --stores (a sweep directory or stores)")
        stores = rank_inputs(args.stores, allow_partial=False)
        for store in stores:
            score = write_auroc(store)
            print(f"{store}: AUROC mean {float(score.mean(skipna=True)):.3f}")
        return 0
    if args.action == "plant":  # planted truth: known semantic-weak layers (testbed/shapes/plant.py)
        from layerscope_testbed.shapes.plant import PlantConfig, check_plant, parse_layers, plant

        if not args.out:
            raise UsageError("testbed plant needs --out DIR (e.g. runs/planted)")
        config = PlantConfig(
            args.out, parse_layers(args.layers), args.seed, args.clips, args.steps, tune_readout=args.tune_readout
        )
        check_plant(config)
        print(plant(config))
        return 0
    if args.action == "prompts":
        from layerscope_testbed.shapes.evaluate import write_prompt_file

        if not args.out:
            raise UsageError("testbed prompts needs --out DIR (it writes DIR/prompts.jsonl and DIR/images/)")
        count = args.scenes or 20
        print(f"wrote {write_prompt_file(args.out, count, seed=args.seed)} ({count} prompts)")
        return 0
    print(ensure_default_model(args.out))
    return 0


def _build_tiny(args: argparse.Namespace) -> int:
    """``testbed build-tiny --family F --out DIR``: a tiny random pipeline saved like a checkpoint."""
    from layerscope.outputs import check_output_path

    if not args.out:
        raise UsageError("testbed build-tiny needs --out DIR (e.g. runs/tiny-hunyuan)")
    out = check_output_path(args.out, "--out", directory=True)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {args.out} exists and is not an empty directory; choose a new directory")
    print(build_tiny(args.family, out, seed=args.seed, condition_type=args.condition_type))
    return 0


def _train(args: argparse.Namespace) -> int:
    from layerscope_testbed.shapes.train import TrainConfig, TrainingError, replay_config, train

    if not args.out:
        raise UsageError("testbed train needs --out DIR (e.g. runs/shapes-model)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {args.out} exists and is not an empty directory; choose a new directory")
    from layerscope.loading import MODEL_INFO_FILE, check_device
    from layerscope.outputs import check_output_path

    if args.init and not _is_shapes_model(Path(args.init).expanduser() / MODEL_INFO_FILE):
        raise UsageError(f"--init {args.init}: not a trained shapes-world model directory (no {MODEL_INFO_FILE})")
    if args.cache:
        check_output_path(args.cache, "--cache", directory=True)
    if args.replay:
        if args.device != "cpu" or args.dit_batch != 4 or args.grow_layers or args.lr_text or args.text_role_heads:
            raise UsageError(
                "--replay repeats its run's recorded --device, --dit-batch, --grow-layers, --lr-text and "
                "--text-role-heads; drop them"
            )
        try:
            config = replay_config(args.replay, args.out, init=args.init)
        except (OSError, ValueError) as error:
            raise UsageError(f"--replay: {error}") from None
    else:
        if args.scenes is not None and args.scenes < 8:
            raise UsageError(f"testbed train needs --scenes >= 8 (the VAE check uses 8 clips), got {args.scenes}")
        if args.grow_layers and not args.init:
            raise UsageError("--grow-layers deepens a trained model's DiT; give that model with --init DIR")
        if args.text_role_heads:
            from layerscope_testbed.shapes.roles import check_head_count

            check_head_count(args.text_role_heads, _text_encoder_heads(args.init))
        config = TrainConfig(
            out=args.out,
            seed=args.seed,
            minutes=args.minutes,
            train_scenes=args.scenes or 480,
            dit_focus_weight=args.focus_weight,
            ema_decay=args.ema,
            lr_dit=args.lr_dit,
            lr_text=args.lr_text,
            text_role_heads=args.text_role_heads,
            push_scenes=args.push_scenes,
            push_swaps=args.push_swaps,
            init=args.init,
            device=args.device,
            dit_batch=args.dit_batch,
            grow_layers=args.grow_layers,
        )
    check_device(config.device)  # a GPU recipe on a machine without one fails here, before --out exists
    config.cache = args.cache
    try:
        print(train(config))
    except TrainingError as error:
        print(f"layerscope testbed: training failed: {error}", file=sys.stderr)
        return 1
    return 0


def _testbed_export_bench(args: argparse.Namespace) -> int:
    """``testbed export-bench --out DIR``: the eval scenes as a `layerscope bench` prompt file."""
    from layerscope_testbed.shapes.bench import export_bench

    if not args.out:
        raise UsageError("testbed export-bench needs --out DIR (it writes DIR/prompts.jsonl and DIR/images/)")
    count = args.scenes or 30
    print(f"wrote {export_bench(args.out, count, seed=args.seed)} ({count} prompts with questions and scenes)")
    return 0
