"""What the commands share: the parser that fits on a screen, argument types, the option
groups of recording and interventions, and where a model's name and defaults come from.

Why one module: ``record``, ``sweep``, ``bench`` and ``eval`` take the same intervention
options and ``record``/``sweep`` the same recording options; defining them once keeps
their spelling and meaning the same everywhere.  Nothing here imports torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from layerscope.errors import UsageError
from layerscope.registry import EXAMPLES, MODELS, PROBES


class _HelpAll(argparse.Action):
    """``--help-all``: every option of the command, the groups ``--help`` folds included."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.show_all = True
        parser.print_help()
        parser.exit()


class Formatter(argparse.HelpFormatter):
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


class Parser(argparse.ArgumentParser):
    """A parser whose ``--help`` fits on a screen.

    Why: ``record`` alone has 30 options.  ``--help`` shows the options most runs need in
    full and each further group as one line naming its options; ``--help-all`` shows every
    option.  The usage line names only what is required (``[options]`` for the rest).
    """

    show_all = False

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", Formatter)
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


def fraction(option: str, upper_open: bool = False):
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


def int_at_least(minimum: int, why: str):
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


positive_int = int_at_least(1, "0 would silently mean 'use the default'")
non_negative_int = int_at_least(0, "seeds")


def positive_float(text: str) -> float:
    """argparse type: a number > 0 (time budgets)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0 (loss weights)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1) (decays)."""
    value = non_negative_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"must be below 1, got {text}")
    return value


def add_recording_options(p: Parser) -> None:
    """Options shared by ``record`` and ``sweep``: the model, the run's shape, probes, device."""
    p.add_argument(
        "--model",
        default="default",
        help="'default' (trained shapes-world model), 'random' (random tiny model) or a local diffusers pipeline dir",
    )
    p.add_argument("--steps", type=positive_int, help="denoising steps (default: the model's; 6 testbed, 50 else)")
    p.add_argument("--frames", type=positive_int, help="video frames, 4n+1 (default 9 testbed, 81 else)")
    p.add_argument("--height", type=positive_int, help="pixels (default 256 testbed, 480 else)")
    p.add_argument("--width", type=positive_int, help="pixels (default 256 testbed, 832 else)")
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
    add_intervention_options(p)


def add_intervention_options(p: Parser, clip_flag: str = "--clip") -> None:
    """The one intervention option group (record, sweep, eval, bench): which, its ranking, its settings."""
    g = p.folded_group("interventions (e.g. Focal Guidance from fg_intervene)")
    g.add_argument("--intervene", help="intervention to apply, e.g. focal-guidance")
    g.add_argument("--ranking", help="ranking JSON from `layerscope rank` (its weak_layers are guided)")
    g.add_argument("--intervene-config", help="TOML file with the intervention's settings")
    g.add_argument(
        clip_flag, dest="clip" if clip_flag == "--clip" else clip_flag.lstrip("-").replace("-", "_"),
        help="open_clip checkpoint dir matching the image encoder (default: <model>/clip)",
    )  # fmt: skip
    add_fg_set(g)


def setting(text: str) -> tuple[str, object]:
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


def add_fg_set(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--fg-set",
        type=setting,
        action="append",
        metavar="NAME=VALUE",
        help="set one intervention option, repeatable: --fg-set lambda_lat=0.3 --fg-set inject_at=attn-input "
        "(wins over --intervene-config; weak_layers=[4,5] overrides the ranking; the ablations: "
        "attention_cache=false is FSG only, fsg=false the Attention Cache only)",
    )


def load_intervention(args: argparse.Namespace):
    if not args.intervene:
        if args.ranking or args.intervene_config or args.clip or args.fg_set:
            raise UsageError("--ranking/--intervene-config/--fg-set/--clip need --intervene focal-guidance")
        return None
    from layerscope.interventions import load_intervention

    return load_intervention(
        args.intervene, ranking=args.ranking, config=args.intervene_config, clip=args.clip,
        settings=dict(args.fg_set or []),
    )  # fmt: skip


def rank_inputs(paths: list[str], allow_partial: bool) -> list[str]:
    """Stores named directly, or the stores of sweep directories (complete ones; with
    ``--allow-partial`` also interrupted and killed ones, for their whole steps)."""
    from layerscope.locations import LocationError, is_url, location
    from layerscope.store import is_store
    from layerscope.sweep import PLAN_FILE, sweep_index

    stores: list[str] = []
    usable = {"complete", "interrupted", "killed"} if allow_partial else {"complete"}
    for given in paths:
        try:
            path = location(given, "STORES")  # a directory, or an fsspec URL
        except LocationError as error:
            raise UsageError(str(error)) from None
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
            stores.append(str(path) if is_url(given) else given)
    return stores


def record_config(args: argparse.Namespace, prompt: str, keywords: list[str], seed: int, overwrite: bool):
    """The :class:`RecordConfig` of one run from the shared options (defaults: :func:`model_defaults`)."""
    from layerscope.recording import RecordConfig

    defaults = model_defaults(args.model, "record")
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


def model_attrs(args: argparse.Namespace, model_dir: Path) -> dict[str, object]:
    from layerscope.loading import model_info

    info = model_info(model_dir)
    named = args.model in MODELS  # a registered name (the testbed's default/random) stays a name
    return {**info, "model_path": args.model if named else str(model_dir), "model_dtype": args.dtype}


def resolve_model(model: str) -> Path:
    """A registered model name (``--model default``, from an installed testbed) or a directory."""
    if model in MODELS:
        return Path(MODELS.load(model)())
    if model in ("default", "random"):
        raise UsageError(
            f"--model {model} names a testbed model, and no testbed is installed: "
            "pip install ./testbed (or `make install`), or pass --model DIR"
        )
    return Path(model)


#: Only for a folder whose pipeline class cannot be read (loading it then fails with its own
#: message): Wan2.1-I2V 480p's sizes.
UNREADABLE_MODEL_DEFAULTS = (50, 81, 480, 832)


def pipeline_defaults(folder: Path) -> tuple[int, int, int, int] | None:
    """(steps, frames, height, width) as the checkpoint folder's pipeline class defaults them
    (:func:`layerscope.adapters.registry.pipeline_call_defaults`)."""
    import json

    from layerscope.adapters.registry import pipeline_call_defaults

    try:
        name = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))["_class_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pipeline_call_defaults(str(name))


def model_defaults(model: str, purpose: str = "record") -> tuple[int, int, int, int]:
    """(steps, frames, height, width) for ``purpose`` (record, bench, finetune), from one place.

    The model folder's ``layerscope_model.json`` (``generation_defaults.<purpose>``, else
    ``generation_defaults.record``, else ``record_defaults``; a ``layerscope finetune``
    output reads its base's), then the pipeline class's own defaults (:func:`pipeline_defaults`).
    """
    import json

    from layerscope.loading import MODEL_INFO_FILE, LoadError, read_finetune

    folder = resolve_model(model) if model in MODELS else Path(model).expanduser()
    try:
        finetune = read_finetune(folder)
    except (LoadError, OSError):
        finetune = None
    if finetune is not None:
        folder = Path(finetune["base_dir"])
    try:
        info = json.loads((folder / MODEL_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    declared: Any = None
    if isinstance(info, dict):
        table = info.get("generation_defaults") or {}
        declared = table.get(purpose) or table.get("record") or info.get("record_defaults")
    try:
        values = tuple(int(declared[key]) for key in ("steps", "frames", "height", "width"))
        if all(v > 0 for v in values):
            return values
    except (KeyError, TypeError, ValueError):
        pass
    return pipeline_defaults(folder) or UNREADABLE_MODEL_DEFAULTS


def default_example() -> tuple[Any, str, list[str]]:
    """(image, prompt, keywords) of the installed testbed's example, for ``record`` without inputs."""
    if "default" not in EXAMPLES:
        raise UsageError("pass --image, --prompt and --keywords (no testbed with a packaged example is installed)")
    image, prompt, keywords = EXAMPLES.load("default")()
    return image, prompt, list(keywords)
