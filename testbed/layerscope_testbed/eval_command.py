"""``layerscope eval``: ``layerscope bench`` preset to the shapes world (its prompts, its judge).

Why a preset and not a benchmark of its own: generation, the all-correct rule, intervals,
the paired test, resuming and the HTML page are ``bench``'s; what the shapes world adds is
its held-out prompt set (exported here with ``testbed export-bench``'s writer) and its
pixel judge (``--judge shapes``).  ``eval --out DIR`` writes ``DIR/prompts/`` and one bench
output per variant (``DIR/baseline``, ``DIR/<intervention>``), then pairs them with
``bench --compare`` (``DIR/comparison.json``).  Files written by the eval of LayerScope
before this preset (one ``eval.json``) still render with ``layerscope report EVAL.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from layerscope.cli.options import add_intervention_options, load_intervention, non_negative_int, positive_int
from layerscope.errors import UsageError

#: what ``--quick`` means: a smoke test of the whole path
QUICK = {"count": 6, "steps": 4}
DEFAULT_COUNT = 30


def add_eval_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="`bench` preset to the shapes world: held-out prompts, the pixel judge, FG paired with the baseline",
        description="Writes the held-out shapes-world prompts to OUT/prompts and runs `layerscope bench --judge "
        "shapes` on them: OUT/baseline and, with --intervene, OUT/<intervention> and their paired comparison "
        "(OUT/comparison.json). A prompt x seed counts only if every question passes.",
    )
    p.add_argument("--out", help="output directory (--compare: a JSON file, optional)")
    p.add_argument("--model", default="default", help="'default', 'random' or a shapes-world model directory")
    p.add_argument(
        "--count", type=positive_int, help=f"prompts, balanced over the dimensions (default {DEFAULT_COUNT})"
    )
    p.add_argument("--split", choices=("heldout", "train"), default="heldout")
    p.add_argument("--steps", type=positive_int, help="denoising steps (default: the model's, 12 for the testbed)")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=non_negative_int, default=0, help="scene seed: which prompts (default 0)")
    p.add_argument("--seeds", default="0", help="generation seeds per prompt, e.g. 0-4 (the paper's five; default 0)")
    p.add_argument(
        "--quick", action="store_true", help=f"{QUICK['count']} prompts, {QUICK['steps']} steps: a smoke test"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="paired test of two eval outputs (B - A)")
    p.add_argument("--variant", default="baseline", help="--compare: which variant of both outputs (default baseline)")
    p.add_argument(
        "--skip-baseline",
        action="store_true",
        help="with --intervene: evaluate only the intervened variant (half the time; no paired test)",
    )
    add_intervention_options(p)
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(args)
    if args.variant != "baseline":
        raise UsageError("--variant names which variant --compare A B pairs; drop it or add --compare")
    if args.skip_baseline and not args.intervene:
        raise UsageError("--skip-baseline drops the un-intervened run of an --intervene eval; add --intervene")
    if args.quick and (args.count is not None or args.steps is not None):
        raise UsageError("--quick sets --count 6 --steps 4; drop --quick or --count/--steps")
    if not args.out:
        raise UsageError("eval needs --out DIR (prompts, one bench output per variant and the comparison go there)")
    load_intervention(args)  # FG options without --intervene, unknown settings: one line, nothing written
    from layerscope.cli import build_parser
    from layerscope.cli.options import resolve_model
    from layerscope.launching import parse_seeds
    from layerscope.outputs import check_output_path

    parse_seeds(args.seeds)
    out = check_output_path(args.out, "--out", directory=True)
    model = resolve_model(args.model)  # an unknown model before the prompts are written
    count, steps = (QUICK["count"], QUICK["steps"]) if args.quick else (args.count or DEFAULT_COUNT, args.steps)
    variants = ([] if args.skip_baseline else ["baseline"]) + ([args.intervene] if args.intervene else [])
    commands = {variant: _bench_argv(args, out, variant, steps) for variant in variants}
    parser = build_parser()
    parsed = {variant: parser.parse_args(argv) for variant, argv in commands.items()}  # bad values: before writing
    if args.intervene:
        _check_intervention(args, model)

    from layerscope_testbed.shapes.bench import export_bench

    prompts = export_bench(out / "prompts", count, args.split, args.seed)
    print(f"eval: {count} {args.split} prompts in {prompts}; variants {', '.join(variants)}")
    for variant, bench_args in parsed.items():
        print(f"eval: {variant} = layerscope {' '.join(commands[variant])}")
        if code := bench_args.func(bench_args):
            return code
    if len(variants) == 2:
        from layerscope.bench.run import run_compare

        return run_compare(str(out / variants[0]), str(out / variants[1]), str(out / "comparison.json"))
    return 0


def _check_intervention(args: argparse.Namespace, model: Path) -> None:
    """Apply and remove the intervention once on the first scene (testbed models load in a second),
    so a ranking of another model or a missing CLIP stops the eval before anything is written."""
    from layerscope.loading import load_pipeline
    from layerscope_testbed.shapes.evaluate import check_intervention

    pipe, _ = load_pipeline(model)
    check_intervention(pipe, lambda: load_intervention(args), split=args.split, seed=args.seed)


def _bench_argv(args: argparse.Namespace, out: Path, variant: str, steps: int | None) -> list[str]:
    """The ``layerscope bench`` command line that is this eval's ``variant``."""
    argv = ["bench", str(out / "prompts" / "prompts.jsonl"), "--judge", "shapes", "--out", str(out / variant)]
    argv += ["--model", args.model, "--seeds", args.seeds, "--guidance", repr(args.guidance), "--no-consistency"]
    argv += ["--steps", str(steps)] if steps else []
    argv += ["--quiet"] if args.quiet else []
    if variant == "baseline":
        return argv
    argv += ["--intervene", args.intervene]
    for flag, value in (("--ranking", args.ranking), ("--intervene-config", args.intervene_config)):
        argv += [flag, value] if value else []
    argv += ["--fg-clip", args.clip] if args.clip else []
    for name, value in args.fg_set or []:
        argv += ["--fg-set", f"{name}={_json(value)}"]
    return argv


def _json(value: object) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


def _compare(args: argparse.Namespace) -> int:
    """``eval --compare A B``: bench's paired comparison of one variant of two eval outputs."""
    given = {"--quick": args.quick, "--intervene": args.intervene, "--count": args.count, "--steps": args.steps}
    generating = [flag for flag, value in {**given, "--skip-baseline": args.skip_baseline}.items() if value]
    if generating:
        raise UsageError(f"--compare A B reads two finished evals and generates nothing; drop {', '.join(generating)}")
    sides = []
    for given in args.compare:
        path = Path(given)
        if path.is_file() and path.suffix == ".json":
            raise UsageError(
                f"--compare {given} is an eval file from before eval became a bench preset; render it with "
                f"`layerscope report {given} --out page.html`, or evaluate again"
            )
        if not (path / args.variant / "results.json").is_file():
            raise UsageError(f"--compare {given}: no {args.variant}/results.json there; pass `layerscope eval --out` "
                             "directories (or --variant NAME)")  # fmt: skip
        sides.append(str(path / args.variant))
    from layerscope.bench.run import run_compare

    return run_compare(sides[0], sides[1], args.out)


def write_eval_page(eval_json: Path, page: Path) -> Path:
    """The HTML section of an eval JSON of the format before this preset (old files keep rendering)."""
    from layerscope.outputs import write_text_atomic
    from layerscope_testbed.shapes.eval_report import render_eval_html
    from layerscope_testbed.shapes.evaluate import read_results

    return write_text_atomic(page, render_eval_html(read_results(eval_json)))
