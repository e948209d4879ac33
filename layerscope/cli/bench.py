"""``layerscope bench``: the instruction-following benchmark on a JSONL prompt set."""

from __future__ import annotations

import argparse
from pathlib import Path

from layerscope.cli.options import (
    add_intervention_options,
    load_intervention,
    model_attrs,
    model_defaults,
    positive_int,
    resolve_model,
)
from layerscope.errors import UsageError
from layerscope.registry import JUDGE_CHECKS, JUDGES, MODELS


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--steps", type=positive_int, help="denoising steps (default 12 for the testbed models, else 50)")
    p.add_argument("--frames", type=positive_int, help="frames, 4n+1 (default 9 for the testbed models, else 81)")
    p.add_argument("--height", type=positive_int, help="pixels (default 256 for the testbed models, else 480)")
    p.add_argument("--width", type=positive_int, help="pixels (default 256 for the testbed models, else 832)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="generator dtype")
    p.add_argument("--device", default="cpu", help="torch device for generation, consistency and (default) the judge")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    gen = p.folded_group("generation")
    gen.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    gen.add_argument(
        "--true-cfg", type=float, default=1.0, help="HunyuanVideo-I2V: true CFG scale (> 1: cond + uncond)"
    )
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--fps", type=positive_int, default=16, help="frame rate of the saved mp4 (Wan2.1: 16)")
    gen.add_argument("--cpu-offload", nargs="?", const="model", choices=("model", "sequential"))
    gen.add_argument("--record", action="store_true", help="also record similarity maps (needs keywords per line)")
    gen.add_argument("--no-resume", dest="resume", action="store_false", help="generate every video again")
    j = p.folded_group("judge, consistency, comparisons")
    j.add_argument("--judge-frames", type=positive_int, default=8, help="vlm: frames sampled uniformly per video")
    j.add_argument("--judge-batch", type=positive_int, default=8, help="vlm: questions per forward pass")
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
    j.add_argument("--scenes", type=positive_int, help="--judge-validity: number of shapes scenes (default 30)")
    add_intervention_options(p, clip_flag="--fg-clip")
    p.set_defaults(func=_cmd_bench)


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
        if args.prompts:
            raise UsageError("--judge-validity makes its own shapes-world videos; drop PROMPTS")
        if "shapes" not in JUDGE_CHECKS:
            raise UsageError("--judge-validity needs the testbed's shapes world (pip install ./testbed)")
        from layerscope.bench.run import run_judge_validity

        return run_judge_validity(args.judge, args.out, args.scenes or 30, JUDGE_CHECKS.load("shapes"), judge_options)
    if not args.prompts:
        raise UsageError("bench needs PROMPTS (a JSONL file; `layerscope testbed export-bench --out DIR` writes one)")
    from layerscope.bench.generation import GenerationSettings
    from layerscope.bench.run import BenchOptions, run_bench
    from layerscope.loading import load_pipeline, resolve_model_dir

    steps, frames, height, width = model_defaults(args.model, "bench")
    settings = GenerationSettings(
        model=args.model if args.model in MODELS else str(Path(args.model).expanduser().resolve()),
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
        clip = args.clip or str(resolve_model(args.model) / "clip")  # the model's own CLIP (testbed models ship one)
        if not Path(clip).is_dir():
            raise UsageError(f"consistency needs an open_clip folder: {clip} does not exist; pass --clip DIR")
    elif args.clip:
        raise UsageError("--clip and --no-consistency contradict each other; drop one")
    options = BenchOptions(
        prompts=args.prompts, out_dir=args.out, settings=settings, judge=args.judge, seeds=args.seeds,
        resume=args.resume, clip=clip, device=args.device, judge_options=judge_options, progress=not args.quiet,
    )  # fmt: skip
    fg_args = argparse.Namespace(**{**vars(args), "clip": args.fg_clip})
    load_intervention(fg_args)  # refuses FG options without --intervene before anything is created
    state: dict = {}

    def model_dir() -> Path:
        if "dir" not in state:
            state["dir"] = resolve_model_dir(resolve_model(args.model))
        return state["dir"]

    return run_bench(
        options,
        factories=JUDGES.load_all(),
        prepare=model_dir,
        load_pipe=lambda device: load_pipeline(
            model_dir(), dtype=args.dtype, device=device, cpu_offload=args.cpu_offload or False
        )[0],
        model_info=lambda: model_attrs(args, model_dir()),
        intervention=lambda: load_intervention(fg_args) if args.intervene else None,
    )
