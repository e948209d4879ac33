"""Many recordings from one prompt file: a dataset-level sweep (prompts x seeds).

Why: a weak band is a claim about a model, and the paper ranks layers over a dataset
(Figure 2 averages 50 samples; every number in it is a mean over five seeds).  A sweep
records one store per (prompt, seed) so ``layerscope rank DIR`` can treat the run as
the statistical unit.

The prompt file is JSONL, one run a line (``#`` lines and blank lines are skipped)::

    {"image": "images/cat.png", "prompt": "a cat jumps onto the sofa", "keywords": ["cat", "sofa"],
     "id": "cat-sofa", "dimension": "motion", "questions": ["Does the cat jump?"]}

``image`` is relative to the file.  ``id`` (optional) names the stores; without it a run
is named ``p<line>-<hash of image, prompt and keywords>``, so editing a line renames (and
re-records) only that line.  ``dimension`` and ``questions`` are kept in the store's
attrs for benchmarks; ``meta`` (any JSON object) is kept as ``prompt_meta``: ground truth a
testbed knows about the prompt (the shapes world puts its scene there, from which
``layerscope testbed auroc`` draws the objects' masks).

Scale-out uses existing launchers, not our own: under ``accelerate launch`` or
``torchrun`` each process takes ``runs[rank::world_size]`` (accelerate's
``PartialState`` reads the launcher's environment), records its own stores with its own
device, and no store has two writers.  Resuming is the default: complete stores whose
recording options match are skipped, interrupted ones are recorded again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerscope.errors import LayerScopeError
from layerscope.launching import parse_seeds, process_device, process_state, shard  # noqa: F401  (re-exported)
from layerscope.prompt_files import check_prompt_id, prompt_image

#: The plan (every run the sweep will make), written once when a sweep starts.
PLAN_FILE = "sweep.json"
#: The index of runs and their statuses, rewritten after every run and at the end.
INDEX_FILE = "index.json"
INDEX_FORMAT = "layerscope-sweep/1"
_KNOWN_KEYS = {"image", "prompt", "keywords", "id", "dimension", "questions", "meta"}


class SweepError(LayerScopeError):
    """The prompt file, the seeds or the output directory cannot make a sweep."""


@dataclass(frozen=True)
class PromptEntry:
    """One line of the prompt file, checked."""

    id: str
    line: int
    image: Path
    prompt: str
    keywords: tuple[str, ...]
    dimension: str | None = None
    questions: tuple[str, ...] = ()
    image_sha1: str = ""
    #: the line's ``meta`` object as JSON text (kept in the store as ``prompt_meta``):
    #: ground truth a testbed knows about the prompt, e.g. the shapes world's scene
    meta_json: str = ""


@dataclass(frozen=True)
class SweepRun:
    """One (prompt, seed) recording and the store it goes to."""

    entry: PromptEntry
    seed: int

    @property
    def name(self) -> str:
        return f"{self.entry.id}-seed{self.seed}"

    @property
    def store_name(self) -> str:
        return f"{self.name}.zarr"

    def attrs(self) -> dict[str, Any]:
        """What the store keeps about where it came from (benchmarks read these)."""
        return {
            "sweep_id": self.entry.id,
            "sweep_line": self.entry.line,
            "dimension": self.entry.dimension,
            "questions": list(self.entry.questions),
            "image_sha1": self.entry.image_sha1,
            "prompt_meta": json.loads(self.entry.meta_json) if self.entry.meta_json else None,
        }


def _entry_id(line: int, image: str, prompt: str, keywords: list[str]) -> str:
    digest = hashlib.sha1(json.dumps([image, prompt, keywords]).encode()).hexdigest()[:8]
    return f"p{line:04d}-{digest}"


def read_prompts(path: str | os.PathLike) -> list[PromptEntry]:
    """Read and check a JSONL prompt file: the one reader of the format.

    Every problem is one :class:`SweepError` naming the line and the fix, raised before
    any model loads or any store is created.
    """
    from layerscope.keywords import check_keywords_in_prompt, parse_keywords
    from layerscope.locations import location
    from layerscope.outputs import read_jsonl_objects

    fix = "write one JSON object per line with image, prompt and keywords"
    where = location(path, "PROMPTS")
    if not isinstance(where, Path):
        raise SweepError(f"PROMPTS {path}: the prompt file and its images must be local files (stores may be URLs)")
    base = where.parent
    entries: list[PromptEntry] = []
    seen: dict[str, int] = {}
    lines = read_jsonl_objects(path, "PROMPTS", fix, SweepError, allowed=_KNOWN_KEYS, required=("image", "prompt"))
    for number, where, data in lines:
        keywords = data.get("keywords")
        if isinstance(keywords, str):
            keywords = parse_keywords(keywords)
        if (
            not isinstance(keywords, list)
            or not keywords
            or not all(isinstance(k, str) and k.strip() for k in keywords)
        ):
            raise SweepError(f"{where}: 'keywords' must be a non-empty list of words of the prompt")
        try:
            check_keywords_in_prompt(data["prompt"], keywords)
        except LayerScopeError as error:
            raise SweepError(f"{where}: {error}") from None
        image, digest = prompt_image(base, data["image"], where, SweepError)
        dimension = data.get("dimension")
        if dimension is not None and not isinstance(dimension, str):
            raise SweepError(f"{where}: 'dimension' must be a string")
        questions = data.get("questions", [])
        if not isinstance(questions, list) or not all(isinstance(q, str) for q in questions):
            raise SweepError(f"{where}: 'questions' must be a list of strings")
        meta = data.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise SweepError(f"{where}: 'meta' must be a JSON object (kept in the store as prompt_meta)")
        entry_id = data.get("id")
        if entry_id is None:
            entry_id = _entry_id(number, data["image"], data["prompt"], keywords)
        check_prompt_id(entry_id, where, number, seen, SweepError)
        entries.append(
            PromptEntry(
                id=entry_id,
                line=number,
                image=image,
                prompt=data["prompt"],
                keywords=tuple(k.strip() for k in keywords),
                dimension=dimension,
                questions=tuple(questions),
                image_sha1=digest,
                meta_json=json.dumps(meta, sort_keys=True) if meta is not None else "",
            )
        )
    if not entries:
        raise SweepError(f"PROMPTS {path} has no runs; {fix}")
    return entries


def plan_runs(entries: list[PromptEntry], seeds: list[int]) -> list[SweepRun]:
    """Every (prompt, seed) in a fixed order: prompts in file order, seeds ascending."""
    return [SweepRun(entry, seed) for entry in entries for seed in seeds]


@dataclass
class StoreState:
    """What is on disk for one planned run."""

    status: str  # "missing" | "complete" | "interrupted" | "recording" | "killed" | "unreadable"
    attrs: dict[str, Any] = field(default_factory=dict)


def store_state(path: Any) -> StoreState:
    """Status of a planned store without opening its arrays (cheap for big sweeps).

    A store still marked ``recording`` whose writer is gone (no live lock) is ``killed``,
    so an index read after a ``kill -9`` does not claim that a run is under way.
    """
    from layerscope.locations import location
    from layerscope.store import recording_was_killed

    path = location(path)
    meta = path / "zarr.json"
    if not meta.is_file():
        return StoreState("missing" if not path.exists() else "unreadable")
    try:
        attrs = json.loads(meta.read_text(encoding="utf-8")).get("attributes", {})
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return StoreState("unreadable")
    status = str(attrs.get("status", "unreadable"))
    if recording_was_killed(path, attrs):
        status = "killed"
    return StoreState(status, attrs)


#: Options that must match for a complete store to count as this sweep's run.
MATCHED_OPTIONS = (
    "prompt",
    "keywords",
    "height",
    "width",
    "num_frames",
    "num_inference_steps",
    "seed",
    "guidance_scale",
    "true_cfg_scale",
    "negative_prompt",
    "probe",
    "layers",
    "record_steps",
    "branch",
    "dtype",
)


#: Record options newer than some stores, with the value those stores were made with.
OPTION_DEFAULTS = {"true_cfg_scale": 1.0}

#: Store attributes (beyond the record config) that must match too: the model, its dtype,
#: the intervention as configured when the sweep started (``sweep_intervention``; the
#: store's ``intervention`` also holds what each run resolved, e.g. selected keywords)
#: and the reference image's bytes.
MATCHED_ATTRS = ("model_path", "model_dtype", "sweep_intervention", "image_sha1")


def mismatched_options(
    stored_attrs: dict[str, Any], wanted_config: dict[str, Any], wanted_attrs: dict[str, Any]
) -> list[str]:
    """Names of options where a complete store differs from what the sweep asks now."""

    def same(a: Any, b: Any) -> bool:
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)

    # options added later: stores made before them used the value that is now the default
    stored_config = {**OPTION_DEFAULTS, **(stored_attrs.get("record_config") or {})}
    wrong = [key for key in MATCHED_OPTIONS if not same(stored_config.get(key), wanted_config.get(key))]
    return wrong + [key for key in MATCHED_ATTRS if not same(stored_attrs.get(key), wanted_attrs.get(key))]


def sweep_index(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The sweep's index, built from its plan and its stores' statuses.

    Works while a sweep is running or after it was killed: statuses come from the stores
    themselves, not from a file some process may not have rewritten yet.
    """
    from layerscope.locations import location

    out_dir = location(out_dir, "sweep directory")
    plan_path = out_dir / PLAN_FILE
    from layerscope.outputs import read_json_object

    plan = read_json_object(
        plan_path, "sweep directory", "run `layerscope sweep PROMPTS --out-dir DIR` first", SweepError
    )
    runs = []
    for run in plan.get("runs", []):
        state = store_state(out_dir / run["store"])
        runs.append({**run, "status": state.status})
    counts: dict[str, int] = {}
    for run in runs:
        counts[run["status"]] = counts.get(run["status"], 0) + 1
    return {
        "format": INDEX_FORMAT,
        "prompts": plan.get("prompts"),
        "seeds": plan.get("seeds"),
        "options": plan.get("options"),
        "counts": counts,
        "complete": counts.get("complete", 0) == len(runs),
        "runs": runs,
    }


def write_plan(out_dir: Any, prompts: Path, seeds: list[int], runs: list[SweepRun], options: dict[str, Any]) -> None:
    """Write the plan once (atomic; every process writes the same bytes)."""
    from layerscope.outputs import write_text_atomic

    plan = {
        "format": INDEX_FORMAT,
        "prompts": str(prompts),
        "seeds": seeds,
        "options": options,
        "runs": [
            {
                "store": run.store_name,
                "id": run.entry.id,
                "line": run.entry.line,
                "seed": run.seed,
                "prompt": run.entry.prompt,
                "keywords": list(run.entry.keywords),
                "dimension": run.entry.dimension,
                "questions": list(run.entry.questions),
            }
            for run in runs
        ],
    }
    write_text_atomic(out_dir / PLAN_FILE, json.dumps(plan, indent=2), option="--out-dir")


def write_index(out_dir: Any) -> dict[str, Any]:
    """Rewrite ``index.json`` from the stores (atomic, so readers never see half a file)."""
    from layerscope.outputs import write_text_atomic

    index = sweep_index(out_dir)
    write_text_atomic(out_dir / INDEX_FILE, json.dumps(index, indent=2), option="--out-dir")
    return index


@dataclass
class SweepOptions:
    """How to run a sweep (what the CLI's ``sweep`` parses)."""

    prompts: str | os.PathLike
    out_dir: str | os.PathLike
    seeds: str | list[int] = "0"
    resume: bool = True
    device: str = "cpu"
    dtype: str = "float32"
    cpu_offload: bool | str | None = None
    progress: bool = True


@dataclass
class _Job:
    run: SweepRun
    store: Any  # Path, or a layerscope.locations.Remote for a URL --out-dir
    config: Any  # RecordConfig
    skip: bool


def _plan_jobs(runs: list[SweepRun], out_dir: Any, resume: bool, make_config, run_attrs) -> list[_Job]:
    """Check every run of this process before any model loads: configs, targets, resumability."""
    from layerscope.store import check_store_target

    jobs = []
    for run in runs:
        store = out_dir / run.store_name
        state = store_state(store)
        overwrite = state.status != "missing"
        config = make_config(run.entry, run.seed, overwrite)
        skip = False
        if state.status == "complete" and resume:
            wrong = mismatched_options(state.attrs, config.to_dict(), run_attrs(run))
            if wrong:
                raise SweepError(
                    f"{store} is complete but was recorded with other {', '.join(wrong)}; "
                    "use a new --out-dir, or --no-resume to record every run again"
                )
            skip = True
        if not skip:
            check_store_target(store, overwrite=overwrite)  # refuses a non-store directory in the way
        jobs.append(_Job(run, store, config, skip))
    return jobs


def run_sweep(options: SweepOptions, *, make_config, model_dir, model_attrs, intervention) -> int:
    """Record this process's share of the sweep; return the exit code (0: all its runs complete).

    ``make_config(entry, seed, overwrite)`` builds each run's ``RecordConfig``;
    ``model_dir()``, ``model_attrs(dir)`` and ``intervention()`` are called once.  Every
    input is checked before the pipeline loads, so a bad line or option costs one message
    and no model load.  A run that fails while recording (out of memory, a prompt longer
    than the text encoder takes) is reported in one line and the sweep goes on; the exit
    code is then 1 and a resumed sweep records it again.
    """
    import time

    from tqdm.auto import tqdm

    from layerscope.errors import LayerScopeError
    from layerscope.loading import load_image, load_pipeline
    from layerscope.outputs import check_output_path
    from layerscope.recording import record

    out_dir = check_output_path(options.out_dir, "--out-dir", directory=True)
    entries = read_prompts(options.prompts)
    seeds = options.seeds if isinstance(options.seeds, list) else parse_seeds(options.seeds)
    runs = plan_runs(entries, seeds)
    directory = model_dir()
    fg = intervention()
    base_attrs = {**model_attrs(directory), "sweep_intervention": fg.to_dict() if fg is not None else "none"}
    state = process_state(options.device)
    mine = shard(runs, state.process_index, state.num_processes)
    jobs = _plan_jobs(mine, out_dir, options.resume, make_config, lambda run: {**base_attrs, **run.attrs()})
    images = {job.run.entry.image: None for job in jobs if not job.skip}
    for path in images:
        images[path] = load_image(path)  # unreadable images fail here, before the model loads
    out_dir.mkdir(parents=True, exist_ok=True)
    # the same bytes from every process: options come from the first run, not this shard
    shared = make_config(runs[0].entry, runs[0].seed, False).to_dict()
    write_plan(out_dir, Path(options.prompts), seeds, runs, {
        **{k: v for k, v in shared.items() if k not in ("prompt", "keywords", "seed", "overwrite")},
        "model_path": base_attrs.get("model_path"),
        "model_dtype": base_attrs.get("model_dtype"),
        "intervention": base_attrs["sweep_intervention"],
    })  # fmt: skip
    pending = [job for job in jobs if not job.skip]
    where = f" [process {state.process_index + 1}/{state.num_processes}]" if state.num_processes > 1 else ""
    print(
        f"sweep{where}: {len(runs)} runs ({len(entries)} prompts x {len(seeds)} seeds); this process: "
        f"{len(pending)} to record, {len(jobs) - len(pending)} complete and skipped (resume is the default)",
        flush=True,  # one whole-line write now: under torchrun the processes share one stdout
    )
    failures = 0
    if pending:
        pipe, directory = load_pipeline(
            directory,
            dtype=options.dtype,
            device=process_device(options.device, state),
            cpu_offload=options.cpu_offload or False,
        )
        bar = tqdm(
            total=len(pending),
            desc=f"sweep{where}",
            unit="run",
            disable=not options.progress,
            position=state.process_index if state.num_processes > 1 else None,
        )
        overhead = 0.0
        for job in pending:
            try:
                summary = record(
                    pipe,
                    job.store,
                    job.config,
                    image=images[job.run.entry.image],
                    attrs={
                        **base_attrs,
                        **job.run.attrs(),
                        "sweep_process": [state.process_index, state.num_processes],
                    },
                    progress=False,
                    intervention=fg,
                )
                status, seconds = summary.status, summary.seconds_total
            except (LayerScopeError, RuntimeError, ValueError, OSError) as error:
                message = " ".join(str(error).split())[:300]
                tqdm.write(f"sweep{where}: {job.run.name} failed ({type(error).__name__}: {message})")
                status, seconds = "failed", 0.0
            started = time.perf_counter()
            failures += status != "complete"
            write_index(out_dir)  # readable while the sweep runs
            overhead += time.perf_counter() - started
            bar.set_postfix_str(f"{job.run.name}: {status}, {seconds:.1f} s")
            bar.update()
        bar.close()
        print(f"sweep{where}: bookkeeping beyond recording {overhead / len(pending):.3f} s per run")
    state.wait_for_everyone()
    if state.is_main_process:
        index = write_index(out_dir)
        counts = ", ".join(f"{n} {status}" for status, n in sorted(index["counts"].items()))
        print(f"sweep: {counts}; index {out_dir / INDEX_FILE}")
    if failures:
        print(f"sweep{where}: {failures} runs failed; run the same command again to record them")
    return 0 if failures == 0 else 1
