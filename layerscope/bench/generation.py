"""One mp4 (plus its first frame as PNG) per (prompt, seed), resumable after any kill.

Why not ``layerscope sweep``: a sweep always records similarity maps into Zarr stores and
needs keywords on every line, while a benchmark needs videos, with maps optional
(``--record``).  The resume contract is the sweep's: a video counts as done only when
its metadata file exists, and that file is renamed into place last, after the mp4 and
the PNG; a kill at any moment leaves at most one unfinished video, made again on the
next run.  Done videos made with other settings are refused, never silently mixed.

Under ``accelerate launch``/``torchrun`` each process generates ``jobs[rank::world]``
(the sweep's :func:`~layerscope.sweep.shard`); judging then runs in one process.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from layerscope.bench.prompts import BenchInputError, BenchPrompt

VIDEO_DIR = "videos"
STORE_DIR = "stores"


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that changes a video besides its prompt and seed (all of it is checked on resume)."""

    model: str
    steps: int
    frames: int
    height: int
    width: int
    guidance: float = 5.0
    negative_prompt: str | None = None
    #: HunyuanVideo-I2V's true CFG (``--true-cfg``); ``guidance`` is then its embedded guidance
    true_cfg: float = 1.0
    dtype: str = "float32"
    fps: int = 16
    intervention: Any = "none"
    record: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VideoJob:
    """One (prompt, seed) video and where its files go."""

    prompt: BenchPrompt
    seed: int

    @property
    def name(self) -> str:
        return f"{self.prompt.id}-seed{self.seed}"

    def paths(self, out_dir: Path) -> dict[str, Path]:
        base = out_dir / VIDEO_DIR / self.name
        return {"mp4": base.with_suffix(".mp4"), "png": base.with_suffix(".png"), "meta": base.with_suffix(".json")}

    def key(self, settings: GenerationSettings) -> dict[str, Any]:
        """What must match for a saved video to be this job's video."""
        return {
            "settings": settings.to_dict(),
            "prompt": self.prompt.prompt,
            "image_sha1": self.prompt.image_sha1,
            "seed": self.seed,
        }


def plan_jobs(prompts: list[BenchPrompt], seeds: list[int]) -> list[VideoJob]:
    """Prompts in file order, seeds ascending (the order results and paired tests use)."""
    return [VideoJob(p, s) for p in prompts for s in seeds]


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def saved_state(job: VideoJob, out_dir: Path, settings: GenerationSettings) -> str:
    """``done`` (saved with these settings), ``missing``, or raise when saved with others."""
    paths = job.paths(out_dir)
    if not (paths["meta"].is_file() and paths["mp4"].is_file() and paths["png"].is_file()):
        return "missing"
    try:
        saved = json.loads(paths["meta"].read_text(encoding="utf-8")).get("key", {})
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return "missing"
    wanted = job.key(settings)
    if _same(saved, wanted):
        return "done"
    differ = [k for k in wanted if not _same(saved.get(k), wanted[k])]
    differ += [
        f"settings.{k}"
        for k in wanted["settings"]
        if not _same((saved.get("settings") or {}).get(k), wanted["settings"][k])
    ]
    raise BenchInputError(
        f"{paths['mp4']} was generated with other {', '.join(d for d in differ if d != 'settings')}; "
        "use a new --out, or --no-resume to generate every video again"
    )


@dataclass
class GenerationReport:
    generated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0  # inside the pipeline calls
    bookkeeping_seconds: float = 0.0  # writing files, checks
    load_seconds: float = 0.0  # loading the pipeline (once, only when a video is missing)


def _resized(image: np.ndarray, width: int, height: int) -> Any:
    from PIL import Image

    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB").resize((width, height), Image.BICUBIC)


def _apply(intervention: Any, pipe: Any, prompt: str, image: Any, settings: GenerationSettings) -> Callable[[], None]:
    if intervention is None:
        return lambda: None
    from layerscope.adapters.registry import resolve_adapter
    from layerscope.interventions import RunInputs
    from layerscope.recording import describe_model, pipeline_dir

    adapter = resolve_adapter(pipe)
    model = describe_model(pipe)
    inputs = RunInputs(
        pipe=pipe,
        adapter=adapter,
        prompt=prompt,
        image=image,
        height=settings.height,
        width=settings.width,
        num_frames=settings.frames,
        grid=adapter.token_grid(settings.frames, settings.height, settings.width),
        model_dir=pipeline_dir(pipe),
        extra={"model_id": model.get("model_id"), "base_model_id": model.get("base_model_id")},
    )
    return intervention.apply(inputs).remove


def _guidance_kwargs(pipe: Any, settings: GenerationSettings) -> dict[str, Any]:
    """The family's own guidance arguments (HunyuanVideo: its templated prompt, embedded vs true CFG).

    Generating needs no probes, so a pipeline no adapter knows still runs, with diffusers'
    common ``guidance_scale``/``negative_prompt``.
    """
    from types import SimpleNamespace

    from layerscope.adapters.base import AdapterError
    from layerscope.adapters.registry import resolve_adapter

    wanted = SimpleNamespace(
        guidance_scale=settings.guidance, negative_prompt=settings.negative_prompt, true_cfg_scale=settings.true_cfg
    )
    try:
        return resolve_adapter(pipe).call_kwargs(wanted)
    except AdapterError:
        return {"guidance_scale": settings.guidance, "negative_prompt": settings.negative_prompt}


def _caller(pipe: Any) -> Callable[..., Any]:
    """The family's way to call its pipeline (:meth:`ModelAdapter.generate`), else the pipeline itself."""
    from layerscope.adapters.base import AdapterError
    from layerscope.adapters.registry import resolve_adapter

    try:
        return resolve_adapter(pipe).generate
    except AdapterError:
        return pipe


def generate_video(pipe: Any, job: VideoJob, image: Any, settings: GenerationSettings, intervention: Any) -> np.ndarray:
    """(T, H, W, 3) uint8 video of one job (noise drawn on the CPU: same video on every device)."""
    import torch

    from layerscope.recording import to_uint8

    remove = _apply(intervention, pipe, job.prompt.prompt, image, settings)
    try:
        output = _caller(pipe)(
            image=image,
            prompt=job.prompt.prompt,
            height=settings.height,
            width=settings.width,
            num_frames=settings.frames,
            num_inference_steps=settings.steps,
            generator=torch.Generator(device="cpu").manual_seed(job.seed),
            output_type="np",
            **_guidance_kwargs(pipe, settings),
        )
    finally:
        remove()
    return to_uint8(np.asarray(output.frames[0]))


def record_video(
    pipe: Any, job: VideoJob, image: Any, settings: GenerationSettings, intervention: Any, store: Path
) -> np.ndarray:
    """``--record``: the video through :func:`layerscope.recording.record` (maps into ``store``)."""
    from layerscope import open_run
    from layerscope.recording import RecordConfig, record

    config = RecordConfig(
        prompt=job.prompt.prompt,
        keywords=list(job.prompt.keywords),
        height=settings.height,
        width=settings.width,
        num_frames=settings.frames,
        num_inference_steps=settings.steps,
        seed=job.seed,
        guidance_scale=settings.guidance,
        negative_prompt=settings.negative_prompt,
        true_cfg_scale=settings.true_cfg,
        overwrite=True,
    )
    summary = record(pipe, store, config, image=image, progress=False, intervention=intervention,
                     attrs={"bench_id": job.prompt.id, "dimension": job.prompt.dimension,
                            "questions": list(job.prompt.questions)})  # fmt: skip
    if summary.status != "complete":
        raise RuntimeError(f"recording of {job.name} ended {summary.status}")
    return np.asarray(open_run(store)["video"].values, dtype=np.uint8)


def save_video(job: VideoJob, out_dir: Path, video: np.ndarray, settings: GenerationSettings, seconds: float) -> None:
    """mp4, then PNG, then the metadata (renamed into place last: it marks the video done)."""
    from PIL import Image

    from layerscope.bench.video_io import write_mp4
    from layerscope.outputs import write_text_atomic

    paths = job.paths(out_dir)
    paths["mp4"].parent.mkdir(parents=True, exist_ok=True)
    write_mp4(paths["mp4"], video, fps=settings.fps)
    partial = paths["png"].with_name(f".{paths['png'].name}.{os.getpid()}.partial.png")
    Image.fromarray(video[0]).save(partial)
    partial.replace(paths["png"])
    meta = {"key": job.key(settings), "frames": int(len(video)), "size": list(video.shape[1:3]), "seconds": seconds}
    write_text_atomic(paths["meta"], json.dumps(meta, indent=2))


def generate_all(
    jobs: list[VideoJob],
    out_dir: Path,
    settings: GenerationSettings,
    *,
    load_pipe: Callable[[], Any],
    intervention: Any = None,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> GenerationReport:
    """Make every missing video of ``jobs``; ``load_pipe()`` is called only if one is missing.

    A video whose generation fails (out of memory, a prompt the text encoder refuses) is
    reported in one line and the loop goes on; the next run tries it again.
    """
    from tqdm.auto import tqdm

    from layerscope.errors import LayerScopeError
    from layerscope.loading import load_image

    report = GenerationReport()
    pending = []
    for job in jobs:
        if resume and saved_state(job, out_dir, settings) == "done":
            report.skipped.append(job.name)
        else:
            pending.append(job)
    images = {job.prompt.image: None for job in pending}
    for path in images:
        images[path] = load_image(path)  # unreadable images fail here, before the model loads
    if not pending:
        return report
    loading = time.perf_counter()
    pipe = load_pipe()
    report.load_seconds = time.perf_counter() - loading
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    if intervention is not None:  # a ranking of another model or grid: one usage error now, not one per video
        first = pending[0]
        _apply(intervention, pipe, first.prompt.prompt, _resized(images[first.prompt.image], settings.width,
               settings.height), settings)()  # fmt: skip
    for job in tqdm(pending, desc="bench: generate", unit="video", disable=not progress):
        image = _resized(images[job.prompt.image], settings.width, settings.height)
        started = time.perf_counter()
        try:
            if settings.record:
                store = out_dir / STORE_DIR / f"{job.name}.zarr"
                video = record_video(pipe, job, image, settings, intervention, store)
            else:
                video = generate_video(pipe, job, image, settings, intervention)
        except (LayerScopeError, RuntimeError, ValueError, OSError) as error:
            message = " ".join(str(error).split())[:300]
            log(f"bench: {job.name} failed ({type(error).__name__}: {message})")
            report.failed.append(job.name)
            continue
        seconds = time.perf_counter() - started
        report.seconds += seconds
        saving = time.perf_counter()
        save_video(job, out_dir, video, settings, round(seconds, 3))
        report.bookkeeping_seconds += time.perf_counter() - saving
        report.generated.append(job.name)
    return report
