"""``layerscope bench``: check everything, generate (resumable), judge, measure consistency, report.

The CLI builds a :class:`BenchOptions` and hands in what only it may know: the judge
factories (the shapes judge comes from the testbed), how to load the pipeline and the
intervention.  Every input is checked before the output directory is created or any
model loads, so a typo costs one line.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerscope.bench.generation import GenerationSettings, VideoJob, generate_all, plan_jobs
from layerscope.bench.judges import Judge, JudgeFactory, check_answers, make_judge
from layerscope.bench.prompts import BenchInputError, BenchPrompt, read_bench_prompts

PLAN_FILE = "bench.json"
RESULTS_FILE = "results.json"
SCORE_DIR = "scores"


@dataclass
class BenchOptions:
    """What ``layerscope bench`` parses (see ``layerscope bench --help``)."""

    prompts: str
    out_dir: str
    settings: GenerationSettings
    judge: str = "shapes"
    seeds: str | list[int] = "0"
    resume: bool = True
    clip: str | None = None  # None: no consistency
    device: str = "cpu"
    judge_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    html: bool = True


@dataclass
class Checked:
    out_dir: Path
    prompts: list[BenchPrompt]
    seeds: list[int]
    jobs: list[VideoJob]
    judge: Judge


def check_inputs(options: BenchOptions, factories: Mapping[str, JudgeFactory]) -> Checked:
    """Every check that needs no model; raises :class:`BenchInputError` (nothing is created)."""
    from layerscope.launching import parse_seeds
    from layerscope.outputs import check_output_path

    out_dir = check_output_path(options.out_dir, "--out", directory=True)
    prompts = read_bench_prompts(options.prompts)
    seeds = options.seeds if isinstance(options.seeds, list) else parse_seeds(options.seeds)
    judge = make_judge(options.judge, factories, prompts=prompts, **options.judge_options)
    if options.settings.record:
        missing = [p.id for p in prompts if not p.keywords]
        if missing:
            raise BenchInputError(f"--record needs 'keywords' on every prompt line; {missing[0]} has none")
    if options.clip is not None:
        from layerscope.clip import CONFIG_NAME, WEIGHTS_NAME

        clip = Path(options.clip)
        if not (clip / CONFIG_NAME).is_file() or not (clip / WEIGHTS_NAME).is_file():
            raise BenchInputError(
                f"--clip {options.clip}: expected {CONFIG_NAME} and {WEIGHTS_NAME} there (an open_clip safetensors "
                "checkpoint); or pass --no-consistency"
            )
    return Checked(out_dir, prompts, seeds, plan_jobs(prompts, seeds), judge)


def _free_accelerator_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _score_one(job: VideoJob, out_dir: Path, judge: Judge, clip: Any, video_key: dict[str, Any]) -> dict[str, Any]:
    """Answers and consistency of one saved video, reused from ``scores/`` when nothing changed."""
    from layerscope.loading import load_image
    from layerscope.outputs import write_text_atomic

    path = out_dir / SCORE_DIR / f"{job.name}.json"
    stat = job.paths(out_dir)["mp4"].stat()  # a video made again (--no-resume) is judged again
    video = {**video_key, "mp4_bytes": stat.st_size, "mp4_mtime_ns": stat.st_mtime_ns}
    wanted = {"video": video, "judge": judge.describe(), "features": clip.describe() if clip else None}
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if json.dumps(cached.get("key"), sort_keys=True) == json.dumps(wanted, sort_keys=True, default=str):
                return cached["record"]
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            pass
    mp4 = job.paths(out_dir)["mp4"]
    started = time.perf_counter()
    answers = check_answers(judge, job.prompt, judge.judge(mp4, job.prompt))
    judged = time.perf_counter()
    consistency = None
    if clip is not None:
        meta = json.loads(job.paths(out_dir)["meta"].read_text(encoding="utf-8"))
        height, width = meta["size"]
        from PIL import Image

        reference = Image.fromarray(load_image(job.prompt.image)).convert("RGB").resize((width, height), Image.BICUBIC)
        full = clip.video(reference, mp4)
        consistency = {
            k: full[k] for k in ("subject_consistency", "background_consistency", "conformity", "consecutive")
        }
    record = {
        "id": job.prompt.id,
        "seed": job.seed,
        "dimension": job.prompt.dimension,
        "answers": [a.to_dict() for a in answers],
        "all_correct": all(a.passed for a in answers),
        "consistency": consistency,
        "judge_seconds": round(judged - started, 4),
        "consistency_seconds": round(time.perf_counter() - judged, 4),
    }
    write_text_atomic(path, json.dumps({"key": wanted, "record": record}, indent=2, default=str))
    return record


def run_bench(
    options: BenchOptions,
    *,
    factories: Mapping[str, JudgeFactory],
    load_pipe: Callable[[str], Any],
    model_info: Callable[[], dict[str, Any]] = dict,
    intervention: Callable[[], Any] = lambda: None,
    prepare: Callable[[], Any] = lambda: None,
    log: Callable[[str], None] = print,
) -> int:
    """Run the benchmark; 0 when every video was made and scored, 1 when some failed.

    Order: :func:`check_inputs`, ``prepare()`` (e.g. resolve the model directory) and
    ``intervention()`` may raise usage errors; only then is the output directory made.
    ``load_pipe(device)`` runs only when some video of this process is missing.
    """
    from tqdm.auto import tqdm

    from layerscope.bench import results as results_mod
    from layerscope.outputs import write_text_atomic

    started = time.perf_counter()
    checked = check_inputs(options, factories)
    prepare()
    fg = intervention()
    settings = options.settings
    if fg is not None:
        settings = GenerationSettings(**{**settings.to_dict(), "intervention": fg.to_dict()})
    out_dir = checked.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = {
        "format": results_mod.RESULTS_FORMAT,
        "prompts": str(options.prompts),
        "seeds": checked.seeds,
        "settings": settings.to_dict(),
        "judge": checked.judge.describe(),
    }
    write_text_atomic(out_dir / PLAN_FILE, results_mod.dumps(plan), option="--out")
    # under `accelerate launch`/`torchrun` each process makes its share (the sweep's strided split) on
    # its own GPU; the main process then judges everything
    from layerscope.bench.generation import saved_state
    from layerscope.launching import process_device, process_state, shard

    state = process_state(options.device)
    mine = shard(checked.jobs, state.process_index, state.num_processes)
    device = process_device(options.device, state)
    where = f" [process {state.process_index + 1}/{state.num_processes}]" if state.num_processes > 1 else ""
    log(
        f"bench{where}: {len(checked.jobs)} videos ({len(checked.prompts)} prompts x {len(checked.seeds)} seeds) "
        f"in {out_dir}"
    )
    generation = generate_all(
        mine, out_dir, settings, load_pipe=lambda: load_pipe(device), intervention=fg, resume=options.resume,
        progress=options.progress, log=log,
    )  # fmt: skip
    log(
        f"bench{where}: {len(generation.generated)} generated, {len(generation.skipped)} already saved"
        + (f", {len(generation.failed)} failed" if generation.failed else "")
    )
    state.wait_for_everyone()
    if not state.is_main_process:
        return 1 if generation.failed else 0
    missing = [job.name for job in checked.jobs if saved_state(job, out_dir, settings) != "done"]
    if missing:
        log(f"bench: {len(missing)} videos missing (e.g. {missing[0]}); run the same command again; no results written")
        return 1
    _free_accelerator_memory()  # the generator is gone: room for the judge on the same GPU
    scoring = time.perf_counter()
    clip = None
    if options.clip is not None:
        from layerscope.bench.consistency import ClipFeatures

        clip = ClipFeatures(options.clip, device=options.device)

    records = {}
    for job in tqdm(checked.jobs, desc="bench: judge", unit="video", disable=not options.progress):
        key = job.key(settings)
        records[job.prompt.id, job.seed] = _score_one(job, out_dir, checked.judge, clip, key)
    scoring_seconds = time.perf_counter() - scoring
    summary = results_mod.aggregate(checked.prompts, checked.seeds, records)
    results = {
        "format": results_mod.RESULTS_FORMAT,
        "model": model_info(),
        "settings": settings.to_dict(),
        "judge": checked.judge.describe(),
        "consistency_features": clip.describe() if clip else None,
        "prompts": [p.to_dict() for p in checked.prompts],
        "summary": summary,
        "records": [records[job.prompt.id, job.seed] for job in checked.jobs],
        "timing": {
            "generation_seconds": round(generation.seconds, 3),
            "generation_bookkeeping_seconds": round(generation.bookkeeping_seconds, 3),
            "model_load_seconds": round(generation.load_seconds, 3),
            "scoring_seconds": round(scoring_seconds, 3),
            "videos_generated": len(generation.generated),
        },
    }
    table = results_mod.markdown(results)
    write_text_atomic(out_dir / "results.md", table, option="--out")
    with_answers = "\n".join(
        json.dumps({"id": r["id"], "seed": r["seed"], **a}) for r in results["records"] for a in r["answers"]
    )
    write_text_atomic(out_dir / "answers.jsonl", with_answers + "\n", option="--out")
    if options.html:
        from layerscope.bench.report import render_bench

        write_text_atomic(out_dir / "report.html", render_bench(results, out_dir), option="--out")
    timing = results["timing"]
    timing["total_seconds"] = round(time.perf_counter() - started, 3)
    # what the benchmark adds to generating the videos: checks, files, judging, consistency, report
    beyond = timing["total_seconds"] - timing["generation_seconds"] - timing["model_load_seconds"]
    timing["overhead_seconds"] = round(beyond, 3)
    fresh = generation.generated and not generation.skipped  # a resumed run would flatter the ratio
    timing["overhead_ratio"] = round(beyond / timing["generation_seconds"], 4) if fresh else None
    write_text_atomic(out_dir / RESULTS_FILE, results_mod.dumps(results), option="--out")
    log(table.split("\n\n| prompt")[0])
    log(f"bench: wrote {out_dir / RESULTS_FILE}, results.md, answers.jsonl" + (", report.html" if options.html else ""))
    return 0


def run_compare(a: str, b: str, out: str | None, log: Callable[[str], None] = print) -> int:
    """``layerscope bench --compare A B``: paired differences of two runs (same prompts and seeds)."""
    from layerscope.bench import results as results_mod
    from layerscope.outputs import check_output_path, write_text_atomic

    target = check_output_path(out) if out else None
    ra, rb = results_mod.load_results(a), results_mod.load_results(b)
    comparison = results_mod.compare(ra, rb)
    table = results_mod.markdown_comparison(comparison, a, b)
    log(table)
    if target is not None:
        write_text_atomic(target, results_mod.dumps({"a": str(a), "b": str(b), "comparison": comparison}))
        write_text_atomic(target.with_suffix(".md"), table)
        log(f"wrote {target} and {target.with_suffix('.md')}")
    return 0


def run_judge_validity(
    judge_spec: str, out: str, count: int, check: Callable[..., dict[str, Any]], judge_options: dict[str, Any]
) -> int:
    """``bench --judge-validity``: ``judge_spec`` scored against a programmatic oracle (``check``, the
    testbed's shapes world) on ``count`` ground-truth and shuffled videos written under ``out``."""
    from layerscope.outputs import check_output_path
    from layerscope.registry import JUDGES

    target = check_output_path(out, "--out", directory=True)
    judge = make_judge(judge_spec, JUDGES.load_all(), prompts=[], **judge_options)
    print(json.dumps(check(judge, target, count=count, log=lambda _: None), indent=2))
    return 0
