"""``layerscope`` command line: a thin layer over the Python API.

Heavy libraries (torch, diffusers, esda) are imported inside the commands, so
``layerscope --help`` answers in well under a second.  Usage errors print one line
and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from layerscope.errors import LayerScopeError, UsageError
from layerscope.registry import JUDGES, PROBES

EXIT_USAGE = 2


class _HelpAll(argparse.Action):
    """``--help-all``: every option of the command, the groups ``--help`` folds included."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.show_all = True
        parser.print_help()
        parser.exit()


class _Formatter(argparse.HelpFormatter):
    """Option names never broken at their hyphens; help text aligned at column 30."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=30)

    def _fill_text(self, text, width, indent):
        import textwrap

        text = " ".join(text.split())
        return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)

    def _split_lines(self, text, width):
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class _Parser(argparse.ArgumentParser):
    """A parser whose ``--help`` fits on a screen.

    Why: ``record`` alone has 30 options.  ``--help`` shows the options most runs need in
    full and each further group as one line naming its options; ``--help-all`` shows every
    option.  The usage line names only what is required (``[options]`` for the rest).
    """

    show_all = False

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        if kwargs.get("add_help", True):
            self.add_argument("--help-all", action=_HelpAll, nargs=0, help="show every option, folded groups too")

    def folded_group(self, title: str, description: str | None = None) -> argparse._ArgumentGroup:
        """An option group ``--help`` folds into one line (``--help-all`` shows it)."""
        group = self.add_argument_group(title, description)
        group.folded = True
        return group

    def format_usage(self) -> str:
        return f"usage: {self._compact_usage()}\n"

    def _compact_usage(self) -> str:
        if self.usage is not None:
            return self.usage % {"prog": self.prog}
        parts = [self.prog]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                parts.append("COMMAND")
            elif not action.option_strings:
                name = action.metavar or action.dest.upper()
                parts.append(
                    f"[{name}]" if action.nargs in ("?", "*") else f"{name} ..." if action.nargs == "+" else name
                )
            elif action.required:
                parts.append(f"{action.option_strings[0]} {action.metavar or action.dest.upper()}")
        return " ".join([*parts, "[options]"])

    def format_help(self) -> str:
        formatter = self._get_formatter()
        formatter.add_text(f"usage: {self._compact_usage()}")
        formatter.add_text(self.description)
        for group in self._action_groups:
            if not group._group_actions:
                continue
            formatter.start_section(group.title)
            if getattr(group, "folded", False) and not self.show_all:
                names = ", ".join(a.option_strings[0] for a in group._group_actions if a.option_strings)
                formatter.add_text(f"{names} (see --help-all)")
            else:
                formatter.add_text(group.description)
                formatter.add_arguments(group._group_actions)
            formatter.end_section()
        formatter.add_text(self.epilog)
        return formatter.format_help()


def _fraction(option: str, upper_open: bool = False):
    """An argparse type for a share in [0, 1] (or [0, 1) with ``upper_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (0 <= value < 1 if upper_open else 0 <= value <= 1):
            raise argparse.ArgumentTypeError(f"{option} is a share in [0, 1{')' if upper_open else ']'} (got {text})")
        return value

    return parse


def _int_at_least(minimum: int, why: str):
    """An argparse type for integers >= ``minimum``; ``why`` documents the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__doc__ = f"argparse type: an integer >= {minimum} ({why})"
    return parse


_positive_int = _int_at_least(1, "0 would silently mean 'use the default'")
_non_negative_int = _int_at_least(0, "seeds")


def _positive_float(text: str) -> float:
    """argparse type: a number > 0 (time budgets)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    """argparse type: a number >= 0 (loss weights)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1) (decays)."""
    value = _non_negative_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"must be below 1, got {text}")
    return value


def _add_record(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "record",
        help="run an I2V pipeline and stream per-layer, per-step similarity maps into a Zarr store",
        description="Record visual-keyword similarity maps of every block and denoising step. "
        "With no --image/--prompt/--keywords the packaged example is used.",
    )
    p.add_argument("--out", required=True, help="store to write, e.g. runs/demo.zarr")
    p.add_argument("--image", help="reference image (PNG/JPEG); default: the packaged example")
    p.add_argument("--prompt", help="text prompt; default: the packaged example prompt")
    p.add_argument("--keywords", help="comma-separated words of the prompt to probe, e.g. 'circle,square'")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    _add_recording_options(p)
    p.set_defaults(func=_cmd_record)


def _add_recording_options(p: _Parser) -> None:
    """Options shared by ``record`` and ``sweep``: the model, the run's shape, probes, device."""
    p.add_argument(
        "--model",
        default="default",
        help="'default' (trained shapes-world model), 'random' (random tiny model) or a local diffusers pipeline dir",
    )
    p.add_argument("--steps", type=_positive_int, help="denoising steps (default: the model's; 6 testbed, 50 else)")
    p.add_argument("--frames", type=_positive_int, help="video frames, 4n+1 (default 9 testbed, 81 else)")
    p.add_argument("--height", type=_positive_int, help="pixels (default 256 testbed, 480 else)")
    p.add_argument("--width", type=_positive_int, help="pixels (default 256 testbed, 832 else)")
    p.add_argument(
        "--probe",
        choices=PROBES.names(),
        default="hidden",
        help="hidden: Eq. 10 (default); contrastive: minus the prompt's other words; influence: output "
        "change when the keyword is replaced",
    )
    p.add_argument("--layers", help="blocks to record, e.g. 0-39 or 0-3,10 (default all)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (under a launcher: one GPU each)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="model dtype")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    more = p.folded_group("generation and recording")
    more.add_argument(
        "--guidance",
        type=float,
        default=5.0,
        help="classifier-free guidance scale (HunyuanVideo-I2V: its embedded guidance, used with a guidance embedding)",
    )
    more.add_argument(
        "--true-cfg",
        type=float,
        default=1.0,
        help="HunyuanVideo-I2V: true classifier-free guidance scale; > 1 runs cond and uncond calls each step",
    )
    more.add_argument("--negative-prompt", default=None)
    more.add_argument("--branch", choices=("cond", "uncond", "both"), default="cond")
    more.add_argument("--record-steps", help="steps to record, e.g. 0-49 (default all)")
    more.add_argument("--store-dtype", choices=("float16", "float32"), default="float16")
    more.add_argument(
        "--cpu-offload",
        nargs="?",
        const="model",
        choices=("model", "sequential"),
        help="diffusers CPU offload: 'model' (bare flag; one component on the device at a time) or "
        "'sequential' (submodules streamed; for components larger than GPU memory)",
    )
    _add_intervention_options(p)


def _add_intervention_options(p: _Parser, clip_flag: str = "--clip") -> None:
    """The one intervention option group (record, sweep, eval, bench): which, its ranking, its settings."""
    g = p.folded_group("interventions (e.g. Focal Guidance from fg_intervene)")
    g.add_argument("--intervene", help="intervention to apply, e.g. focal-guidance")
    g.add_argument("--ranking", help="ranking JSON from `layerscope rank` (its weak_layers are guided)")
    g.add_argument("--intervene-config", help="TOML file with the intervention's settings")
    g.add_argument(
        clip_flag, dest="clip" if clip_flag == "--clip" else clip_flag.lstrip("-").replace("-", "_"),
        help="open_clip checkpoint dir matching the image encoder (default: <model>/clip)",
    )  # fmt: skip
    g.add_argument(
        "--fg-mode",
        choices=("fsg+cache", "fsg", "cache", "baseline"),
        help="Focal Guidance ablation: both mechanisms (default), FSG only, Attention Cache only, or none",
    )
    _add_fg_set(g)


def _setting(text: str) -> tuple[str, object]:
    """argparse type for ``--fg-set name=value``; the value is JSON if it parses, else a string."""
    import json

    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not name=value, e.g. lambda_lat=0.3")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return name.strip(), parsed


def _add_fg_set(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--fg-set",
        type=_setting,
        action="append",
        metavar="NAME=VALUE",
        help="set one intervention option, repeatable: --fg-set lambda_lat=0.3 --fg-set inject_at=attn-input "
        "(wins over --intervene-config; weak_layers=[4,5] overrides the ranking)",
    )


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

    from layerscope.testbed import TEXT_HEADS

    if not init:
        return TEXT_HEADS
    try:
        return int(json.loads((Path(init).expanduser() / "text_encoder" / "config.json").read_text())["num_heads"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"--init {init}: cannot read text_encoder/config.json ({error}); is it complete?") from None


def _testbed_sized(model: str) -> bool:
    """Does ``model`` take the testbed's small defaults (6 steps, 9 frames, 256x256)?  The
    embedded models do, and so does a ``layerscope finetune`` of one of them."""
    if model in ("default", "random"):
        return True
    from layerscope.loading import MODEL_INFO_FILE, LoadError, read_finetune

    if _is_shapes_model(Path(model).expanduser() / MODEL_INFO_FILE):  # testbed train / plant output
        return True
    try:
        finetune = read_finetune(Path(model).expanduser())
    except (LoadError, OSError):
        return False
    return finetune is not None and (Path(finetune["base_dir"]) / MODEL_INFO_FILE).is_file()


def _declared_defaults(model: str) -> tuple[int, int, int, int] | None:
    """(steps, frames, height, width) a model folder declares in ``layerscope_model.json``
    (``record_defaults``; the tiny build-tiny pipelines do, so a bare ``record`` stays small)."""
    import json

    from layerscope.loading import MODEL_INFO_FILE

    try:
        info = json.loads((Path(model).expanduser() / MODEL_INFO_FILE).read_text(encoding="utf-8"))
        declared = info["record_defaults"]
        values = tuple(int(declared[key]) for key in ("steps", "frames", "height", "width"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return values if all(v > 0 for v in values) else None


def _record_config(args: argparse.Namespace, prompt: str, keywords: list[str], seed: int, overwrite: bool):
    """The :class:`RecordConfig` of one run from the shared options (defaults depend on the model)."""
    from layerscope import testbed
    from layerscope.recording import RecordConfig

    defaults = (testbed.EXAMPLE_STEPS, testbed.EXAMPLE_FRAMES, testbed.EXAMPLE_HEIGHT, testbed.EXAMPLE_WIDTH)
    if not _testbed_sized(args.model):
        defaults = _declared_defaults(args.model) or (50, 81, 480, 832)
    config = RecordConfig(
        prompt=prompt,
        keywords=keywords,
        height=args.height or defaults[2],
        width=args.width or defaults[3],
        num_frames=args.frames or defaults[1],
        num_inference_steps=args.steps or defaults[0],
        seed=seed,
        guidance_scale=args.guidance,
        negative_prompt=args.negative_prompt,
        true_cfg_scale=args.true_cfg,
        probe=args.probe,
        layers=args.layers,
        record_steps=args.record_steps,
        branch=args.branch,
        dtype=args.store_dtype,
        overwrite=overwrite,
    )
    config.check_guidance()
    return config


def _model_attrs(args: argparse.Namespace, model_dir: Path) -> dict[str, object]:
    from layerscope.loading import model_info

    info = model_info(model_dir)
    is_testbed = args.model in ("default", "random")
    return {**info, "model_path": args.model if is_testbed else str(model_dir), "model_dtype": args.dtype}


def _cmd_record(args: argparse.Namespace) -> int:
    from layerscope import testbed
    from layerscope.keywords import check_keywords_in_prompt, parse_keywords
    from layerscope.loading import load_image, load_pipeline, resolve_model_dir
    from layerscope.recording import record
    from layerscope.store import check_store_target

    # every check that needs no model comes first: a typo costs one line, not a model load
    out = check_store_target(args.out, overwrite=args.overwrite)
    if args.prompt is not None and not args.keywords:
        raise UsageError("--keywords is required with --prompt; name words of the prompt, e.g. --keywords 'cat,ball'")
    image = load_image(args.image) if args.image is not None else testbed.example_image()
    prompt = args.prompt if args.prompt is not None else testbed.EXAMPLE_PROMPT
    keywords = parse_keywords(args.keywords) if args.keywords else list(testbed.EXAMPLE_KEYWORDS)
    config = _record_config(args, prompt, keywords, args.seed, args.overwrite)
    check_keywords_in_prompt(config.prompt, config.keywords)
    model_dir = resolve_model_dir(testbed.resolve_model(args.model))
    intervention = _load_intervention(args)
    pipe, model_dir = load_pipeline(model_dir, dtype=args.dtype, device=args.device, cpu_offload=args.cpu_offload)
    attrs = _model_attrs(args, model_dir)
    summary = record(pipe, out, config, image=image, attrs=attrs, progress=not args.quiet, intervention=intervention)
    if attrs["weights"] == "random":
        print(f"note: {attrs['weights_note']}")
    print(summary.line())
    return 0 if summary.status == "complete" else 1


def _add_sweep(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--out-dir", required=True, help="directory for the stores, sweep.json and index.json")
    p.add_argument("--seeds", default="0", help="seeds per prompt, e.g. 0-4 or 0,3,7 (default 0)")
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="record every run again, replacing complete stores (default: resume, skipping them)",
    )
    _add_recording_options(p)
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from layerscope import testbed
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
        make_config=lambda entry, seed, overwrite: _record_config(
            args, entry.prompt, list(entry.keywords), seed, overwrite
        ),
        model_dir=lambda: resolve_model_dir(testbed.resolve_model(args.model)),
        model_attrs=lambda model_dir: _model_attrs(args, model_dir),
        intervention=lambda: _load_intervention(args),
    )


def _load_intervention(args: argparse.Namespace):
    if not args.intervene:
        if args.ranking or args.intervene_config or args.fg_mode or args.clip or args.fg_set:
            raise UsageError("--ranking/--intervene-config/--fg-mode/--fg-set/--clip need --intervene focal-guidance")
        return None
    from layerscope.interventions import load_intervention

    modes = {"fsg+cache": (True, True), "fsg": (True, False), "cache": (False, True), "baseline": (False, False)}
    fsg, cache = modes[args.fg_mode] if args.fg_mode else (None, None)
    return load_intervention(
        args.intervene,
        ranking=args.ranking,
        config=args.intervene_config,
        clip=args.clip,
        settings=dict(args.fg_set or []),
        fsg=fsg,
        attention_cache=cache,
    )


def _add_testbed(sub: argparse._SubParsersAction) -> None:
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
        choices=("wan-i2v", "hunyuan-video-i2v"),
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
    train.add_argument("--minutes", type=_positive_float, default=60.0, help="train: total time budget")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="train: seed (data, init, batches)")
    p.add_argument(
        "--scenes",
        type=_positive_int,
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
        type=_non_negative_float,
        default=8.0,
        help="train: extra DiT loss weight where the clip changes or shows a shape (0: plain MSE; default 8)",
    )
    train.add_argument(
        "--ema", type=_unit_interval, default=0.999, help="train: EMA decay of the saved DiT (0: last weights)"
    )
    train.add_argument("--lr-dit", type=_positive_float, default=1e-3, help="train: peak DiT learning rate")
    train.add_argument(
        "--lr-text",
        type=_non_negative_float,
        default=0.0,
        help="train: peak learning rate of the text encoder, trained with the DiT (default 0: frozen)",
    )
    train.add_argument(
        "--text-role-heads",
        type=_non_negative_int,
        default=0,
        help="train: text-encoder heads per layer made to attend only before / only after each word, "
        "so word order reaches the DiT (even; default 0: none)",
    )
    train.add_argument(
        "--push-scenes",
        type=_non_negative_int,
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
        "--dit-batch", type=_positive_int, default=4, help="train: DiT batch size (default 4; raise it on a GPU)"
    )
    train.add_argument(
        "--grow-layers",
        type=_non_negative_int,
        default=0,
        help="train, with --init: append this many DiT blocks that start as the identity (default 0)",
    )
    planting.add_argument("--layers", default="4-7", help="plant: blocks whose cross-attention never sees the text")
    planting.add_argument("--steps", type=_non_negative_int, default=20, help="plant: fine-tune steps (batch 4)")
    planting.add_argument("--clips", type=_positive_int, default=8, help="plant: training clips for the fine-tune")
    planting.add_argument(
        "--tune-readout",
        action="store_true",
        help="plant: also choose the blind blocks' to_v.bias so their maps lack spatial structure "
        "(CIRCULAR: the ranking then recovers this choice, not text-blindness; off by default)",
    )
    p.set_defaults(func=_cmd_testbed)


def _cmd_testbed(args: argparse.Namespace) -> int:
    from layerscope.testbed import default_cache_dir, ensure_default_model, shipped_model_dir

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
        from layerscope.testbed.shapes.localisation import write_auroc

        if not args.stores:
            raise UsageError("testbed auroc needs --stores (a sweep directory or stores)")
        stores = _rank_inputs(args.stores, allow_partial=False)
        for store in stores:
            score = write_auroc(store)
            print(f"{store}: AUROC mean {float(score.mean(skipna=True)):.3f}")
        return 0
    if args.action == "plant":  # planted truth: known semantic-weak layers (testbed/shapes/plant.py)
        from layerscope.testbed.shapes.plant import PlantConfig, check_plant, parse_layers, plant

        if not args.out:
            raise UsageError("testbed plant needs --out DIR (e.g. runs/planted)")
        config = PlantConfig(
            args.out, parse_layers(args.layers), args.seed, args.clips, args.steps, tune_readout=args.tune_readout
        )
        check_plant(config)
        print(plant(config))
        return 0
    if args.action == "prompts":
        from layerscope.testbed.shapes.evaluate import write_prompt_file

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
    if args.family == "hunyuan-video-i2v":
        from layerscope.testbed.hunyuan_video import save_tiny_pipeline

        print(save_tiny_pipeline(out, args.condition_type, seed=args.seed))
    else:
        from layerscope.testbed import ensure_default_model

        print(ensure_default_model(out))
    return 0


def _train(args: argparse.Namespace) -> int:
    from layerscope.testbed.shapes.train import TrainConfig, TrainingError, replay_config, train

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
            from layerscope.testbed.shapes.roles import check_head_count

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


def _add_rank(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rank",
        help="rank layers over runs and test for a semantic-weak band (CIs, split-sample test, verdict)",
        description="Metrics are computed once per store (written back as moran_i, moran_z, std, rms) and reused. "
        "The prompt (or run) is the unit: the band is chosen on some prompts and tested on the others, "
        "its drop and edges come with bootstrap intervals, and the verdict is 'weak band', 'smooth trough, "
        "no distinct band', 'no weak band', or 'too few runs for a verdict' (below --min-runs, one run "
        "included: no p-value, no band).",
    )
    p.add_argument("stores", nargs="+", help="a sweep directory, or one or more recorded stores")
    p.add_argument("--out", help="ranking JSON to write, e.g. runs/ranking.json")
    p.add_argument(
        "--metric",
        choices=("moran_i", "std", "rms", "auroc"),
        default="moran_i",
        help="moran_i (paper, default) or std: spatial structure; rms: magnitude (for --probe contrastive/"
        "influence); auroc: localisation of the keyword's object (shapes world, `testbed auroc`)",
    )
    p.add_argument("--steps", help="step-index window A:B (B exclusive), e.g. 0:25")
    p.add_argument(
        "--method",
        choices=("band", "bottom-k", "threshold"),
        default="band",
        help="band (default): weak layers only if the band is significant; bottom-k/threshold force a choice",
    )
    p.add_argument("--k", type=int, help="number of layers for bottom-k")
    p.add_argument("--threshold", type=float, help="cut for the threshold method")
    stats = p.folded_group("the band test's thresholds and resampling")
    stats.add_argument("--alpha", type=float, default=0.05, help="significance level of the band test (default 0.05)")
    stats.add_argument(
        "--min-runs",
        type=_int_at_least(4, "each half of a split needs two units"),
        default=None,
        help="fewest independent prompts (or runs) for a verdict (default 10: 4 choose the band, 6 test it)",
    )
    stats.add_argument(
        "--min-drop",
        type=_fraction("--min-drop", upper_open=True),
        default=None,
        help="smallest held-out relative drop below the weaker flank that counts (default 0.1; the paper's is 0.75)",
    )
    stats.add_argument(
        "--min-distinct",
        type=_fraction("--min-distinct"),
        default=None,
        help="smallest held-out share of the dip a quadratic trend does not explain (default 0.55; else a trough)",
    )
    p.add_argument(
        "--unit",
        choices=("prompt", "run"),
        default="prompt",
        help="independent unit: prompt (seeds of a prompt averaged; default) or run (a claim about one prompt's seeds)",
    )
    stats.add_argument("--splits", type=_int_at_least(10, "split p-values are combined by a quantile"), default=50)
    stats.add_argument("--bootstrap", type=_int_at_least(100, "percentile CIs need resamples"), default=1000)
    stats.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the splits and resamples")
    scope = p.folded_group("what is ranked, and where")
    scope.add_argument("--expert", help="rank only this expert's steps (Wan2.2: transformer or transformer_2)")
    scope.add_argument(
        "--stream",
        choices=("double", "single"),
        help="MMDiT (HunyuanVideo-I2V): rank only the double- or single-stream blocks (FG acts on single)",
    )
    scope.add_argument(
        "--scheduler", help="dask.distributed scheduler address for the per-store work, e.g. tcp://host:8786"
    )
    stats.add_argument("--transformation", choices=("b", "r"), default="b", help="binary (paper) or row-standardised")
    scope.add_argument("--allow-partial", action="store_true", help="analyse interrupted stores (their written steps)")
    scope.add_argument("--recompute", action="store_true", help="recompute metrics even if the store has them")
    p.set_defaults(func=_cmd_rank)


def _rank_inputs(paths: list[str], allow_partial: bool) -> list[str]:
    """Stores named directly, or the stores of sweep directories (complete ones; with
    ``--allow-partial`` also interrupted and killed ones, for their whole steps)."""
    from layerscope.store import is_store
    from layerscope.sweep import PLAN_FILE, sweep_index

    stores: list[str] = []
    usable = {"complete", "interrupted", "killed"} if allow_partial else {"complete"}
    for given in paths:
        path = Path(given)
        if path.is_dir() and not is_store(path) and (path / PLAN_FILE).is_file():
            runs = sweep_index(path)["runs"]
            chosen = [run for run in runs if run["status"] in usable]
            left_out = [f"{run['store']} ({run['status']})" for run in runs if run["status"] not in usable]
            if left_out:
                hint = "" if allow_partial else "; --allow-partial adds interrupted and killed ones"
                print(f"note: {len(left_out)} runs of {path} are left out{hint}: {', '.join(left_out[:5])}")
            if not chosen:
                raise UsageError(f"{path}: the sweep has no complete store yet; run `layerscope sweep` to finish it")
            stores.extend(str(path / run["store"]) for run in chosen)
        else:
            stores.append(given)
    return stores


def _cmd_rank(args: argparse.Namespace) -> int:
    from layerscope.outputs import check_output_path
    from layerscope.ranking import parse_step_window, rank_stores

    if args.out is not None:
        check_output_path(args.out)  # before the metrics work
    if not 0 < args.alpha < 1:
        raise UsageError(f"--alpha must be between 0 and 1, e.g. 0.05 (got {args.alpha})")
    ranking = rank_stores(
        _rank_inputs(args.stores, args.allow_partial),
        transformation=args.transformation,
        allow_partial=args.allow_partial,
        recompute=args.recompute,
        scheduler=args.scheduler,
        progress=True,
        metric=args.metric,
        steps=parse_step_window(args.steps),
        method=args.method,
        k=args.k,
        threshold=args.threshold,
        alpha=args.alpha,
        splits=args.splits,
        bootstrap=args.bootstrap,
        min_runs=args.min_runs,
        min_drop=args.min_drop,
        min_distinct=args.min_distinct,
        unit=args.unit,
        seed=args.seed,
        expert=args.expert,
        stream=args.stream,
    )
    print(ranking.table())
    if ranking.model.get("weights") == "random":
        print("note: the model has random weights; this ranking shows the machinery, not learned semantics")
    if args.out:
        ranking.save(args.out)
        print(f"wrote {args.out}")
    return 0


def _add_finetune(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--steps", type=_positive_int, default=50, help="optimizer steps (default 50)")
    p.add_argument("--lr", type=_positive_float,
                   help="AdamW learning rate (default the paper's: 1e-5 Wan, 1e-4 HunyuanVideo-I2V)")  # fmt: skip
    t = p.folded_group("training engine")
    t.add_argument("--grad-accum", type=_positive_int, default=1, help="samples per step (paper batch: 8)")
    t.add_argument("--seed", type=_non_negative_int, default=0)
    t.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no", help="accelerate's (bf16 on GPUs)")
    t.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory (large models)")
    t.add_argument("--checkpoint-every", type=_positive_int, default=25, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--frames", type=_positive_int, help="clip frames, 4n+1 (default 9 for the testbed, else 81)")
    p.add_argument("--height", type=_positive_int, help="pixels (default 256 for the testbed, else 480)")
    p.add_argument("--width", type=_positive_int, help="pixels (default 256 for the testbed, else 832)")
    t.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="model dtype")
    p.add_argument("--device", default="cpu", help="torch device (under a launcher each process takes its own)")
    t.add_argument("--clip", help="open_clip checkpoint dir for Focal Guidance (default: <model>/clip)")
    t.add_argument("--intervene-config", help="TOML with Focal Guidance settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_fg_set(t)
    p.set_defaults(func=_cmd_finetune)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from layerscope import testbed
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
    is_testbed = _testbed_sized(args.model)
    frames, height, width = (args.frames or (9 if is_testbed else 81), args.height or (256 if is_testbed else 480),
                             args.width or (256 if is_testbed else 832))  # fmt: skip
    ranking = Ranking.load(args.ranking) if args.ranking else None
    if args.layers:
        layers = parse_index_ranges(args.layers, 10_000, "--layers") or []
    elif ranking is not None:
        layers = list(ranking.weak_layers)
        if not layers:
            candidate = ranking.candidate_layers()
            example = f"{candidate[0]}-{candidate[-1]}" if candidate else "A-B"
            raise UsageError(
                f"--ranking {args.ranking}: {ranking.verdict or 'no weak layers'}; pass --layers {example}"
            )
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
    model_dir = resolve_model_dir(testbed.resolve_model(args.model))
    data_path = args.data
    if args.data.startswith("shapes:"):
        count = args.data.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise UsageError(f"--data {args.data}: use shapes:N with N >= 1 generated clips, e.g. shapes:64")
        if height != width:
            raise UsageError("shapes:N clips are square; use --height equal to --width")
        from layerscope.testbed.shapes.evaluate import write_training_data

        data_path = out / "data" / "train.jsonl"
        if state.is_main_process and not (args.resume and data_path.is_file()):
            write_training_data(out / "data", int(count), seed=args.seed, frames=frames, size=height)
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
    from layerscope.sweep import process_device

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


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a run, or of a before/after pair",
        description="One file, no external requests: figures and video are embedded.",
    )
    p.add_argument(
        "store",
        help="the run (the 'before' run with --compare), a sweep directory (verdict over its runs), "
        "or a `layerscope eval` JSON (its HTML section)",
    )
    p.add_argument("--compare", help="the 'after' run, e.g. recorded with --intervene focal-guidance")
    p.add_argument("--out", required=True, help="HTML file to write, e.g. runs/report.html")
    p.add_argument("--force", action="store_true", help="compare runs even if model/prompt/seed/grid differ")
    p.add_argument("--steps-shown", type=_positive_int, default=5, help="steps shown in the similarity grids")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    import time

    from layerscope.report import write

    started = time.perf_counter()
    if Path(args.store).suffix == ".json":  # an eval file: its HTML section, not a run's
        if args.compare:
            raise UsageError("--compare pairs two recorded runs; pair two evals with `layerscope eval --compare A B`")
        from layerscope.outputs import check_output_path

        out = _write_eval_page(Path(args.store), check_output_path(args.out))
    else:
        out = write(args.store, args.out, args.compare, force=args.force, steps_shown=args.steps_shown)
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({size:.2f} MB in {time.perf_counter() - started:.1f} s); open it in a browser")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="instruction-following benchmark on held-out shapes-world prompts (all-correct rule)",
        description="Generates one video per held-out prompt and scores it from pixels: colour changed? moved "
        "left? contact? A prompt counts only if every question passes.",
    )
    p.add_argument("--model", default="default")
    p.add_argument("--out", help="JSON results, e.g. runs/eval.json")
    p.add_argument("--count", type=_positive_int, help="prompts, balanced over the three dimensions (default 30)")
    p.add_argument("--split", choices=("heldout", "train"), default="heldout")
    p.add_argument("--steps", type=_positive_int, help="denoising steps (default 12)")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=_non_negative_int, default=0, help="scene seed: which prompts (default 0)")
    p.add_argument("--seeds", default="0", help="generation seeds per prompt, e.g. 0-4 (the paper's five; default 0)")
    p.add_argument("--quick", action="store_true", help="6 prompts, 4 steps: a smoke test")
    p.add_argument(
        "--vae-ceiling",
        action="store_true",
        help="also score the ground truth after the model's VAE (its own ceiling; ~6 s a prompt on 2 CPU cores)",
    )
    p.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), help="paired test of two eval JSONs (B - A), no generation"
    )
    p.add_argument("--variant", default="baseline", help="--compare: which variant of both files (default baseline)")
    p.add_argument(
        "--across-settings",
        action="store_true",
        help="--compare: A and B are one model under other --steps/--guidance (a sampler comparison)",
    )
    p.add_argument(
        "--skip-baseline",
        action="store_true",
        help="with --intervene: evaluate only the intervened variant (half the time; no paired test in the file)",
    )
    _add_intervention_options(p)
    # --compare refuses generation options that differ from these (read from the parser, not copied)
    generation = ("model", "split", "guidance", "seed", "seeds")
    p.set_defaults(func=_cmd_eval, generation_defaults={name: p.get_default(name) for name in generation})


def _cmd_eval(args: argparse.Namespace) -> int:
    from layerscope.loading import load_pipeline, model_info
    from layerscope.outputs import check_output_path
    from layerscope.sweep import parse_seeds
    from layerscope.testbed.shapes.evaluate import (
        check_intervention,
        evaluate_pipeline,
        format_comparisons,
        format_question_rates,
        format_table,
        paired_comparison,
        reference_points,
        vae_round_trip,
        write_results,
    )

    if args.compare:
        return _eval_compare(args)
    if args.variant != "baseline" or args.across_settings:
        flag = "--across-settings" if args.across_settings else "--variant"
        raise UsageError(f"{flag} qualifies two files under --compare A B; drop it or add --compare")
    if args.skip_baseline and not args.intervene:
        raise UsageError("--skip-baseline drops the un-intervened run of an --intervene eval; add --intervene")
    seeds = parse_seeds(args.seeds)
    if args.quick and (args.count is not None or args.steps is not None):
        raise UsageError("--quick sets --count 6 --steps 4; drop --quick or --count/--steps")
    count, steps = (6, 4) if args.quick else (args.count or 30, args.steps or 12)
    _load_intervention(args)  # validate the options (and refuse them without --intervene) first
    factory = (lambda: _load_intervention(args)) if args.intervene else None
    from layerscope.testbed import resolve_model

    if args.out:
        check_output_path(args.out)
    pipe, model_dir = load_pipeline(resolve_model(args.model))
    common = {"count": count, "split": args.split, "seed": args.seed, "steps": steps, "guidance": args.guidance}
    common["seeds"] = seeds
    if factory is not None:
        check_intervention(pipe, factory, split=args.split, seed=args.seed)  # before the long part
    results = {} if args.skip_baseline else {"baseline": evaluate_pipeline(pipe, **common)}
    comparisons = {}
    if factory is not None:
        results[args.intervene] = evaluate_pipeline(pipe, intervention_factory=factory, **common)
        if "baseline" in results:
            comparisons[args.intervene] = paired_comparison(results["baseline"], results[args.intervene])
    info = model_info(model_dir)
    references = reference_points(count=count, split=args.split, seed=args.seed)
    if args.vae_ceiling:
        references["VAE round trip"] = vae_round_trip(pipe, count=count, split=args.split, seed=args.seed)
    table = (
        f"model {info['model_id']} (weights: {info['weights']}), {count} {args.split} prompts, {steps} steps, "
        f"guidance {args.guidance:g}, generation seeds {args.seeds} (95% intervals: bootstrap over prompts)"
        f"\n\n{format_table(results)}\n\n"
        f"questions passed, by kind (which step of an instruction fails):\n\n{format_question_rates(results)}\n\n"
        + (
            f"paired over prompt x seed (sign-flip test over prompts):\n\n{format_comparisons(comparisons)}\n\n"
            if comparisons
            else ""
        )
        + f"the scorer on the same prompts (ceiling and chance level):\n\n{format_table(references)}\n"
    )
    print(table)
    if args.out:
        out = write_results(
            {"model": info, "results": results, "comparisons": comparisons, "reference_points": references}, args.out
        )
        out.with_suffix(".md").write_text(table)
        page = _write_eval_page(out, out.with_suffix(".html"))
        print(f"wrote {out}, {out.with_suffix('.md')} and {page} (open it in a browser)")
    return 0


def _write_eval_page(eval_json: Path, page: Path) -> Path:
    """The eval's HTML section, rendered from the JSON as written (so an old file renders the same way)."""
    from layerscope.outputs import write_text_atomic
    from layerscope.testbed.shapes.eval_report import render_eval_html
    from layerscope.testbed.shapes.evaluate import read_results

    return write_text_atomic(page, render_eval_html(read_results(eval_json)))


def _eval_compare(args: argparse.Namespace) -> int:
    """``layerscope eval --compare A B``: paired differences of two finished evals, nothing generated."""
    import json

    from layerscope.outputs import check_output_path, write_text_atomic
    from layerscope.testbed.shapes.evaluate import compare_results, format_comparisons, read_results

    options = ("intervene", "quick", "count", "steps", "ranking", "intervene_config", "fg_mode", "clip", "fg_set")
    options = (*options, "vae_ceiling", "skip_baseline")  # generation-only flags: --compare generates nothing
    generating = [name for name in options if getattr(args, name)]
    generating += [name for name, value in args.generation_defaults.items() if getattr(args, name) != value]
    if generating:
        flags = ", ".join("--" + name.replace("_", "-") for name in generating)
        raise UsageError(f"--compare A B reads two finished evals and generates nothing; drop {flags}")
    target = check_output_path(args.out) if args.out else None
    a, b = (read_results(path) for path in args.compare)
    result = compare_results(a, b, args.variant, across_settings=args.across_settings)
    result["files"] = list(args.compare)
    protocol = ", ".join(
        [f"{k} {v}" for k, v in result["protocol"].items()]
        + [f"{k} {va} (A) vs {vb} (B)" for k, (va, vb) in result["settings_compared"].items()]
    )
    table = (
        f"B - A, paired over prompt x seed (sign-flip test over prompts); A = {result['a']} ({args.compare[0]}), "
        f"B = {result['b']} ({args.compare[1]}), variant {args.variant}; {protocol}\n\n"
        + format_comparisons({_compare_label(result): result["comparison"]})
        + "\n"
    )
    print(table)
    if target is not None:
        write_text_atomic(target, json.dumps(result, indent=2))
        write_text_atomic(target.with_suffix(".md"), table)
        print(f"wrote {target} and {target.with_suffix('.md')}")
    return 0


def _compare_label(result: dict) -> str:
    """The row name of an eval comparison: the models, or the settings when they are what differs."""
    if not result["settings_compared"]:
        return f"{result['b']} - {result['a']}"
    side = [" ".join(f"{key} {values[i]:g}" for key, values in result["settings_compared"].items()) for i in (1, 0)]
    return f"{side[0]} - {side[1]}"


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="instruction-following benchmark on a JSONL prompt set: videos x seeds, a judge, consistency, HTML",
        description="PROMPTS is JSONL, one prompt a line: image (relative to the file), prompt, dimension, questions "
        "(yes/no, expected yes), optional keywords, id, scene; `layerscope testbed export-bench` writes the shapes "
        "world's set. Generation resumes (saved videos are kept). A prompt-seed counts only if every question "
        "passes; 95% intervals bootstrap over prompts. Also: --compare A B (paired test of two runs) and "
        "--judge-validity (a judge against the shapes world's programmatic oracle).",
    )
    p.add_argument("prompts", nargs="?", help="JSONL prompt file, e.g. runs/shapes-bench/prompts.jsonl")
    p.add_argument("--out", help="output directory (--compare: a JSON file, optional)")
    p.add_argument(
        "--judge",
        help=f"one of {', '.join(JUDGES.names())}: shapes (the shapes world's scorer) or vlm:PATH (a local "
        "transformers VLM folder)",
    )
    p.add_argument("--seeds", default="0", help="generation seeds per prompt, e.g. 0-4 (the paper's five)")
    p.add_argument("--model", default="default", help="'default', 'random' or a local diffusers pipeline dir")
    p.add_argument("--steps", type=_positive_int, help="denoising steps (default 12 for the testbed models, else 50)")
    p.add_argument("--frames", type=_positive_int, help="frames, 4n+1 (default 9 for the testbed models, else 81)")
    p.add_argument("--height", type=_positive_int, help="pixels (default 256 for the testbed models, else 480)")
    p.add_argument("--width", type=_positive_int, help="pixels (default 256 for the testbed models, else 832)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="generator dtype")
    p.add_argument("--device", default="cpu", help="torch device for generation, consistency and (default) the judge")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    gen = p.folded_group("generation")
    gen.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    gen.add_argument(
        "--true-cfg", type=float, default=1.0, help="HunyuanVideo-I2V: true CFG scale (> 1: cond + uncond)"
    )
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--fps", type=_positive_int, default=16, help="frame rate of the saved mp4 (Wan2.1: 16)")
    gen.add_argument("--cpu-offload", nargs="?", const="model", choices=("model", "sequential"))
    gen.add_argument("--record", action="store_true", help="also record similarity maps (needs keywords per line)")
    gen.add_argument("--no-resume", dest="resume", action="store_false", help="generate every video again")
    j = p.folded_group("judge, consistency, comparisons")
    j.add_argument("--judge-frames", type=_positive_int, default=8, help="vlm: frames sampled uniformly per video")
    j.add_argument("--judge-batch", type=_positive_int, default=8, help="vlm: questions per forward pass")
    j.add_argument("--judge-device", help="vlm: torch device (default --device)")
    j.add_argument("--judge-dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    j.add_argument(
        "--judge-without-prompt",
        action="store_true",
        help="vlm: do not show the judge the generation prompt S (ablation; the paper's Eq. 14 conditions on S)",
    )
    j.add_argument("--clip", help="open_clip folder for consistency features (default: the shipped model's clip/)")
    j.add_argument("--no-consistency", action="store_true", help="skip I2V subject/background consistency")
    j.add_argument("--compare", nargs=2, metavar=("A", "B"), help="paired comparison of two bench outputs (B - A)")
    j.add_argument("--judge-validity", action="store_true", help="score --judge against the shapes oracle on "
                   "ground-truth and shuffled shapes videos (--scenes of them, default 30)")  # fmt: skip
    j.add_argument("--scenes", type=_positive_int, help="--judge-validity: number of shapes scenes (default 30)")
    _add_intervention_options(p, clip_flag="--fg-clip")
    p.set_defaults(func=_cmd_bench)


def _bench_judges() -> dict:
    """Every registered judge factory (:data:`layerscope.registry.JUDGES`: vlm, and the testbed's shapes)."""
    from layerscope.registry import JUDGES

    return JUDGES.load_all()


def _cmd_bench(args: argparse.Namespace) -> int:
    from layerscope.bench.run import run_compare

    if args.compare:
        if args.prompts or args.judge or args.judge_validity:
            raise UsageError("--compare A B takes two bench outputs only; drop PROMPTS/--judge/--judge-validity")
        return run_compare(args.compare[0], args.compare[1], args.out)
    if not args.judge:
        raise UsageError("name a judge: --judge shapes (shapes-world prompts) or --judge vlm:/path/to/model")
    if not args.out:
        raise UsageError("bench needs --out DIR (videos, scores, results.json, report.html go there)")
    judge_options = {
        "frames": args.judge_frames,
        "batch_size": args.judge_batch,
        "device": args.judge_device or args.device,
        "dtype": args.judge_dtype,
        "fps": args.fps,
    }
    if args.judge_without_prompt:
        judge_options["with_instruction"] = False
    if args.judge_validity:
        return _bench_judge_validity(args, judge_options)
    if not args.prompts:
        raise UsageError("bench needs PROMPTS (a JSONL file; `layerscope testbed export-bench --out DIR` writes one)")
    from layerscope import testbed
    from layerscope.bench.generation import GenerationSettings
    from layerscope.bench.run import BenchOptions, run_bench
    from layerscope.loading import load_pipeline, resolve_model_dir

    small = _testbed_sized(args.model)
    steps, frames, height, width = (12, 9, 256, 256) if small else (50, 81, 480, 832)
    settings = GenerationSettings(
        model=args.model if args.model in ("default", "random") else str(Path(args.model).expanduser().resolve()),
        steps=args.steps or steps,
        frames=args.frames or frames,
        height=args.height or height,
        width=args.width or width,
        guidance=args.guidance,
        negative_prompt=args.negative_prompt,
        true_cfg=args.true_cfg,
        dtype=args.dtype,
        fps=args.fps,
        record=args.record,
    )
    clip = None
    if not args.no_consistency:
        clip = args.clip or str((testbed.shipped_model_dir() or testbed.ensure_default_model()) / "clip")
    elif args.clip:
        raise UsageError("--clip and --no-consistency contradict each other; drop one")
    options = BenchOptions(
        prompts=args.prompts, out_dir=args.out, settings=settings, judge=args.judge, seeds=args.seeds,
        resume=args.resume, clip=clip, device=args.device, judge_options=judge_options, progress=not args.quiet,
    )  # fmt: skip
    fg_args = argparse.Namespace(**{**vars(args), "clip": args.fg_clip})
    _load_intervention(fg_args)  # refuses FG options without --intervene before anything is created
    state: dict = {}

    def model_dir() -> Path:
        if "dir" not in state:
            state["dir"] = resolve_model_dir(testbed.resolve_model(args.model))
        return state["dir"]

    return run_bench(
        options,
        factories=_bench_judges(),
        prepare=model_dir,
        load_pipe=lambda device: load_pipeline(
            model_dir(), dtype=args.dtype, device=device, cpu_offload=args.cpu_offload or False
        )[0],
        model_info=lambda: _model_attrs(args, model_dir()),
        intervention=lambda: _load_intervention(fg_args) if args.intervene else None,
    )


def _bench_judge_validity(args: argparse.Namespace, judge_options: dict) -> int:
    import json

    from layerscope.bench.judges import make_judge
    from layerscope.outputs import check_output_path
    from layerscope.testbed.shapes.bench import judge_validity

    if args.prompts:
        raise UsageError("--judge-validity makes its own shapes-world videos; drop PROMPTS")
    out = check_output_path(args.out, "--out", directory=True)
    judge = make_judge(args.judge, _bench_judges(), prompts=[], **judge_options)
    result = judge_validity(judge, out, count=args.scenes or 30, log=lambda _: None)
    print(json.dumps(result, indent=2))
    return 0


def _testbed_export_bench(args: argparse.Namespace) -> int:
    """``testbed export-bench --out DIR``: the eval scenes as a `layerscope bench` prompt file."""
    from layerscope.testbed.shapes.bench import export_bench

    if not args.out:
        raise UsageError("testbed export-bench needs --out DIR (it writes DIR/prompts.jsonl and DIR/images/)")
    count = args.scenes or 30
    print(f"wrote {export_bench(args.out, count, seed=args.seed)} ({count} prompts with questions and scenes)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from layerscope import __version__

    parser = _Parser(
        prog="layerscope",
        description="Record, rank and report per-layer text-visual similarity in I2V diffusion transformers.",
    )
    parser.add_argument("--version", action="version", version=f"layerscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_record(sub)
    _add_sweep(sub)
    _add_finetune(sub)
    _add_rank(sub)
    _add_report(sub)
    _add_eval(sub)
    _add_bench(sub)
    _add_testbed(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("layerscope: interrupted", file=sys.stderr)
        return 130
    except LayerScopeError as error:
        message = " ".join(str(error).split())  # one line, whatever the message holds
        print(f"layerscope {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
