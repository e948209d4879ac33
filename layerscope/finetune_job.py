"""``layerscope finetune`` as a library call: every check, the data, Focal Guidance, the run.

Why apart from :mod:`layerscope.finetune` (the training loop): this is the job around it
(output directory under a launcher, layer choice from a ranking, generated data sets,
the intervention), which the command line and notebooks share through
:class:`FinetuneOptions`, as ``sweep`` and ``bench`` share ``SweepOptions`` and
``BenchOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerscope.errors import UsageError


@dataclass
class FinetuneOptions:
    """One fine-tuning job.  ``layers`` forces the trained layers; else the ranking's band."""

    model_dir: Path
    data: str
    out: str
    frames: int
    height: int
    width: int
    layers: list[int] | None = None
    ranking: str | None = None
    steps: int = 50
    lr: float | None = None
    grad_accum: int = 1
    seed: int = 0
    focal_guidance: bool = True
    freeze_anchors: bool = False
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 25
    resume: bool = False
    dtype: str = "float32"
    device: str = "cpu"
    clip: str | None = None
    intervene_config: str | None = None
    fg_settings: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


def run_finetune(options: FinetuneOptions) -> Path:
    """Check everything (one-line errors, before any model loads), then train; returns the output folder."""
    from datetime import timedelta

    from accelerate import PartialState

    from layerscope.finetune import FinetuneConfig, finetune, latest_checkpoint
    from layerscope.launching import process_device
    from layerscope.loading import load_pipeline, model_family, model_info, resolve_model_dir
    from layerscope.outputs import check_output_path
    from layerscope.ranking import Ranking
    from layerscope.registry import DATASETS
    from layerscope.training_data import read_training_data

    o = options
    out = check_output_path(o.out, "--out", directory=True)
    # every process checks before any of them writes: under a launcher they share --out
    state = PartialState(cpu=o.device == "cpu", timeout=timedelta(days=7))
    if out.exists() and any(out.iterdir()) and not o.resume:
        raise UsageError(f"--out {out} exists and is not empty; pass --resume to continue it or choose another --out")
    state.wait_for_everyone()
    ranking = Ranking.load(o.ranking) if o.ranking else None
    if ranking is not None:
        layers = ranking.layers_to_guide(o.layers, source=f"--ranking {o.ranking}", hint="pass --layers {A}-{B}")
    elif o.layers:
        layers = sorted(set(o.layers))
    else:
        raise UsageError("name the layers to train: --ranking R.json (its weak band) or --layers 11-26")
    config = FinetuneConfig(
        layers=layers,
        steps=o.steps,
        lr=o.lr,
        grad_accum=o.grad_accum,
        seed=o.seed,
        focal_guidance=o.focal_guidance,
        mixed_precision=o.mixed_precision,
        gradient_checkpointing=o.gradient_checkpointing,
        checkpoint_every=o.checkpoint_every,
        height=o.height,
        width=o.width,
        num_frames=o.frames,
    )
    model_dir = resolve_model_dir(o.model_dir)
    family = model_family(model_dir)
    if not family.supports_finetune():  # before any clip is generated into --out
        raise UsageError(f"layerscope finetune does not support {family.name} pipelines yet")
    depth = _depth_from_configs(model_dir, family, o)
    outside = [layer for layer in layers if depth is not None and not 0 <= layer < depth]
    if outside:  # the same rule the loaded model applies later, before any clip is generated
        raise UsageError(f"layer {outside[0]} is out of range; this model has layers 0-{depth - 1}")
    data_path: Path | str = o.data
    name, _, count = o.data.partition(":")
    if count and name in DATASETS:  # a generated set, e.g. shapes:64 from the testbed
        if not count.isdigit() or int(count) < 1:
            raise UsageError(f"--data {o.data}: use {name}:N with N >= 1 generated clips, e.g. {name}:64")
        if o.height != o.width:
            raise UsageError(f"{name}:N clips are square; use --height equal to --width")
        data_path = out / "data" / "train.jsonl"
        if state.is_main_process and not (o.resume and data_path.is_file()):
            DATASETS.load(name)(out / "data", int(count), seed=o.seed, frames=o.frames, size=o.height)
        state.wait_for_everyone()  # the others read what the main process wrote
    clips = read_training_data(data_path)
    short = [c for c in clips if len(c.frames) < o.frames]
    if short:
        raise UsageError(f"--data: {short[0].video} has {len(short[0].frames)} frames, fewer than --frames {o.frames}")
    intervention = None
    if o.focal_guidance:
        from layerscope.interventions import load_intervention

        settings = {**o.fg_settings, "weak_layers": layers}
        if o.freeze_anchors:
            settings["anchor_gradients"] = False
        intervention = load_intervention(
            "focal-guidance", ranking=o.ranking, config=o.intervene_config, clip=o.clip, settings=settings
        )
    elif o.fg_settings or o.intervene_config or o.clip or o.freeze_anchors:
        raise UsageError(
            "--fg-set/--intervene-config/--clip/--freeze-anchors configure Focal Guidance; drop them with --no-fg"
        )
    if o.resume and latest_checkpoint(out) is None:
        print(f"note: no checkpoint in {out}; starting from step 0")
    pipe, model_dir = load_pipeline(model_dir, dtype=o.dtype, device=process_device(o.device, state))
    pipe.set_progress_bar_config(disable=True)
    info = model_info(model_dir)
    provenance = {
        "ranking": {"path": o.ranking, "verdict": ranking.verdict if ranking else None,
                    "weak_layers": ranking.weak_layers if ranking else None},
        "data": str(data_path),
        "intervention": intervention.to_dict() if intervention is not None else "none",
    }  # fmt: skip
    config.extra = {"model_id": info["model_id"], "base_model_id": info.get("base_model_id")}
    return finetune(
        pipe, model_dir, clips, config, out, intervention=intervention, resume=o.resume,
        progress=o.progress, provenance=provenance,
    )  # fmt: skip


def _depth_from_configs(model_dir: Path, family: Any, o: FinetuneOptions) -> int | None:
    """Blocks of the model, read from its configs (no weights); None when they cannot say."""
    from layerscope.adapters.base import AdapterError
    from layerscope.loading import read_finetune
    from layerscope.planning import PlanError, PlanOptions, load_configs

    finetune = read_finetune(model_dir)
    folder = Path(finetune["base_dir"]) if finetune is not None else model_dir
    try:
        configs = load_configs(PlanOptions(model=str(folder))).configs
        return family.geometry_from_configs(configs, o.frames, o.height, o.width).num_layers
    except (AdapterError, PlanError, KeyError, TypeError, ValueError):
        return None
