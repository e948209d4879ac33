"""Drive a diffusers I2V pipeline with probes attached, streaming maps into a store.

``record(...)`` is what ``layerscope record`` calls; :func:`trace` is the same thing as
a context manager for people who call the pipeline themselves (DAAM-style)::

    with layerscope.trace(pipe, "run.zarr", prompt=p, keywords=["cat"], height=480,
                          width=832, num_frames=81, num_inference_steps=50) as rec:
        out = pipe(image=img, prompt=p, height=480, width=832, num_frames=81,
                   num_inference_steps=50, output_type="np")
        rec.save_outputs(reference=img, video=out.frames[0])

For a HunyuanVideo-I2V pipeline pass the adapter's pipeline arguments too
(``**resolve_adapter(pipe).call_kwargs(config)``): they carry the prompt template whose
``crop_start`` the keyword rows were computed with.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from layerscope.adapters.base import ModelAdapter
from layerscope.adapters.registry import resolve_adapter
from layerscope.errors import LayerScopeError
from layerscope.keywords import KeywordTokens, clean_prompt
from layerscope.store import STATUS_COMPLETE, STATUS_INTERRUPTED, StoreLayout, StoreWriter

_INJECTED_TRACKER = "layerscope_injected_view_tracker"


class RecordError(LayerScopeError):
    """The recording request is inconsistent with the model (a usage error)."""


@dataclass
class RecordConfig:
    """Everything one recording is asked to do: built once (by the CLI or a caller), validated
    here, consumed by :func:`trace`/:func:`record` and written verbatim into the store attrs.

    ``seed``, ``guidance_scale`` and ``negative_prompt`` drive the pipeline call in
    :func:`record`; under :func:`trace` (the caller runs the pipeline) they are provenance.
    """

    prompt: str
    keywords: list[str]
    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    seed: int = 0
    guidance_scale: float = 5.0
    negative_prompt: str | None = None
    #: HunyuanVideo-I2V's true classifier-free guidance (two calls per step when > 1);
    #: ``guidance_scale`` is then its embedded guidance.  Wan ignores it.
    true_cfg_scale: float = 1.0
    probe: str = "hidden"
    layers: str | list[int] | None = None
    record_steps: str | list[int] | None = None
    branch: str = "cond"
    dtype: str = "float16"
    overwrite: bool = False

    def __post_init__(self) -> None:
        from layerscope.probes import BRANCHES
        from layerscope.registry import PROBES

        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise RecordError("the prompt is empty; pass --prompt 'a red circle moves left' with --keywords")
        if isinstance(self.keywords, str):
            self.keywords = [self.keywords]
        self.keywords = [str(k) for k in self.keywords]
        if not self.keywords or any(not k.strip() for k in self.keywords):
            raise RecordError("--keywords needs at least one non-empty word of the prompt, e.g. --keywords 'cat,ball'")
        for name in ("height", "width", "num_frames", "num_inference_steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise RecordError(f"{name} must be an integer (got {value!r})")
        if self.num_inference_steps < 1:
            raise RecordError(f"--steps must be at least 1 (got {self.num_inference_steps})")
        if self.seed < 0:
            raise RecordError(f"--seed must be >= 0 (got {self.seed})")
        if (
            isinstance(self.guidance_scale, bool)
            or not isinstance(self.guidance_scale, (int, float))
            or not (math.isfinite(self.guidance_scale))
        ):
            raise RecordError(f"--guidance must be a finite number (got {self.guidance_scale!r})")
        if (
            isinstance(self.true_cfg_scale, bool)
            or not isinstance(self.true_cfg_scale, (int, float))
            or not math.isfinite(self.true_cfg_scale)
            or self.true_cfg_scale < 0
        ):
            raise RecordError(f"--true-cfg must be a finite number >= 0 (got {self.true_cfg_scale!r})")
        if self.probe not in PROBES:
            raise RecordError(f"unknown probe kind {self.probe!r}; choose one of {', '.join(PROBES.names())}")
        if self.branch not in BRANCHES:
            raise RecordError(f"unknown branch {self.branch!r}; choose one of {', '.join(BRANCHES)}")
        if self.dtype not in ("float16", "float32"):
            raise RecordError(f"store dtype {self.dtype!r} is not supported; choose float16 or float32")

    def check_guidance(self) -> None:
        """The uncond branch exists only with classifier-free guidance (diffusers: a scale > 1).

        Model-independent, so it runs before any model loads; :func:`trace` asks the
        adapter again (HunyuanVideo's uncond branch needs ``--true-cfg``, not ``--guidance``).
        """
        if self.branch in ("uncond", "both") and not (self.guidance_scale > 1.0 or self.true_cfg_scale > 1.0):
            raise RecordError(
                f"--branch {self.branch} needs classifier-free guidance, but --guidance {self.guidance_scale:g} "
                "runs only the cond branch; use --guidance > 1 (HunyuanVideo-I2V: --true-cfg > 1) or --branch cond"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RecordingSummary:
    """What a finished (or interrupted) recording reports."""

    path: Path | Any  # a local Path, or a layerscope.locations.Remote for a URL
    status: str
    maps_written: int
    steps_written: int
    steps_expected: int
    bytes_on_disk: int
    seconds_total: float
    seconds_probes: float
    queue_waits: int
    video: np.ndarray | None = field(default=None, repr=False)

    def line(self) -> str:
        share = 100.0 * self.seconds_probes / self.seconds_total if self.seconds_total else 0.0
        return (
            f"{self.status}: {self.path} ({self.bytes_on_disk / 1e6:.2f} MB), {self.maps_written} maps, "
            f"{self.steps_written}/{self.steps_expected} steps, {self.seconds_total:.1f} s "
            f"(probes {self.seconds_probes:.2f} s = {share:.1f}%, writer waits {self.queue_waits})"
        )


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in ("layerscope", "torch", "diffusers", "transformers", "zarr", "xarray", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def directory_size(path: Path | Any) -> int:
    """Bytes of a store, local or at a URL."""
    from layerscope.locations import size_of

    return size_of(path)


def parse_index_ranges(text: str | None, limit: int, what: str) -> list[int] | None:
    """Parse ``"0-3,7,10-12"`` into sorted indices below ``limit``; ``None`` means all."""
    if text is None or str(text).strip() in ("", "all"):
        return None
    indices: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            start, _, end = part.partition("-")
            first, last = int(start), int(end or start)
        except ValueError:
            raise RecordError(f"cannot read {what} {text!r}; use ranges like 0-3,7") from None
        if first > last:
            raise RecordError(f"{what} range {part!r} is reversed; write it as {last}-{first}")
        indices.update(range(first, last + 1))
    return _checked(sorted(indices), limit, what)


def _checked(indices: list[int], limit: int, what: str) -> list[int]:
    if not indices:
        raise RecordError(f"the {what} selection is empty; use ranges like 0-3,7")
    bad = [i for i in indices if i < 0 or i >= limit]
    if bad:
        raise RecordError(f"{what} {bad[0]} is out of range; this run has {what}s 0-{limit - 1}")
    return indices


def validate_geometry(adapter: ModelAdapter, height: int, width: int, num_frames: int) -> tuple[int, int, int]:
    multiple = adapter.spatial_multiple()
    if height % multiple or width % multiple or height <= 0 or width <= 0:
        raise RecordError(
            f"height and width must be positive multiples of {multiple} for this model "
            f"(got {height}x{width}); try {max(multiple, height // multiple * multiple)}x"
            f"{max(multiple, width // multiple * multiple)}"
        )
    frame_multiple = adapter.frame_multiple()
    if num_frames < 1 or (num_frames - 1) % frame_multiple:
        raise RecordError(f"--frames must be {frame_multiple}*n+1 for this model (got {num_frames}), e.g. 9 or 81")
    return adapter.token_grid(num_frames, height, width)


def pipeline_dir(pipe: Any) -> Path | None:
    """The local directory a pipeline was loaded from, if any."""
    source = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "")
    return Path(str(source)) if source and Path(str(source)).is_dir() else None


def describe_model(pipe: Any) -> dict[str, Any]:
    """Which model made a run, and whether its weights are random (stores and reports say so)."""
    from layerscope.loading import model_info

    directory = pipeline_dir(pipe)
    if directory is not None:
        return model_info(directory)
    source = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "")
    return {"model_id": str(source) or type(pipe).__name__, "weights": "unknown", "weights_note": ""}


class Trace:
    """An open recording: probes attached, writer running.  See :func:`trace`."""

    def __init__(self, pipe, adapter, writer, handle, keywords, probe_config, expected_steps):
        self.pipe = pipe
        self.adapter = adapter
        self.writer = writer
        self.handle = handle
        self.keywords: list[KeywordTokens] = keywords
        self.probe_config = probe_config
        self.expected_steps = expected_steps
        self.video: np.ndarray | None = None

    def save_outputs(self, reference: Any = None, video: Any = None) -> None:
        """Store the conditioning image (H, W, 3) and generated video (T, H, W, 3)."""
        if reference is not None:
            self.writer.write_reference(to_uint8(np.asarray(reference)))
        if video is not None:
            self.video = to_uint8(np.asarray(video))
            self.writer.write_video(self.video)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Pipeline output in [0, 1] floats (or already uint8) -> uint8."""
    if array.dtype == np.uint8:
        return array
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def uint8_to_vae_input(frames: np.ndarray, device: Any = "cpu", dtype: Any = None) -> Any:
    """uint8 frames (..., T, H, W, 3) -> float tensor (..., 3, T, H, W) in [-1, 1] on ``device``.

    Why one function: the VAE sees pixels the way diffusers' video processor hands them over
    (channels first, scaled to [-1, 1]); training, fine-tuning and the VAE ceiling all encode
    clips, and a scaling that drifts between them would compare latents from different inputs.
    The scaling runs in float32 and only then casts to ``dtype`` (a bf16 VAE), so the
    [-1, 1] grid is the same for every dtype.
    """
    import torch

    scaled = torch.from_numpy(np.ascontiguousarray(frames)).to(device).movedim(-1, -4).float() / 127.5 - 1.0
    return scaled if dtype is None else scaled.to(dtype)


@contextlib.contextmanager
def trace(
    pipe: Any,
    store: str | os.PathLike,
    config: RecordConfig | None = None,
    *,
    attrs: dict[str, Any] | None = None,
    image: Any = None,
    intervention: Any = None,
    **options: Any,
) -> Iterator[Trace]:
    """Attach probes to ``pipe`` and stream maps into ``store`` for the calls made inside.

    Pass a :class:`RecordConfig`, or its fields as keywords (``prompt=..., keywords=...,
    height=..., width=..., num_frames=..., num_inference_steps=...``).
    ``intervention`` (see :mod:`layerscope.interventions`) is installed before the
    probes and needs the reference ``image``.  The probes' hooks run *before* the
    intervention's on every module they share (``prepend``), so the primary
    ``similarity`` maps are the layer's intrinsic ones, free of the intervention's
    additive terms; with a ``hidden`` probe the post-intervention view is stored too,
    as ``similarity_injected``.  On normal exit the store is marked ``complete`` (or
    ``interrupted`` if not every requested step was recorded); on an exception or
    Ctrl-C it is marked ``interrupted`` with the steps written so far kept readable.
    Hooks are always removed, leaving the pipeline exactly as it was.
    """
    config = _config(config, options)
    from layerscope.interventions import IntrinsicInputs
    from layerscope.probes import ProbeConfig, apply_probes

    adapter = resolve_adapter(pipe)
    grid = validate_geometry(adapter, config.height, config.width, config.num_frames)
    if config.branch in ("uncond", "both") and not adapter.runs_uncond(config):
        raise RecordError(
            f"--branch {config.branch} needs classifier-free guidance, which this {adapter.name} pipeline runs "
            f"only with {adapter.uncond_option}; pass it or use --branch cond"
        )
    keyword_tokens = adapter.map_keywords(config.prompt, config.keywords)
    layer_list = _as_indices(config.layers, adapter.num_layers(), "layer")
    step_list = _as_indices(config.record_steps, config.num_inference_steps, "step")
    recorded_layers = layer_list if layer_list is not None else list(range(adapter.num_layers()))
    labels = adapter.layer_labels()
    guided = sorted(set(intervention.touched_layers()) & set(recorded_layers)) if intervention is not None else []
    carried = sorted(set(_carried_layers(intervention, adapter.num_layers())) & set(recorded_layers) - set(guided))
    touched = sorted(set(guided) | set(carried))  # layers with an injected view
    if touched and config.probe != "hidden":
        raise RecordError(
            f"--probe {config.probe} cannot separate layer {touched[0]}'s own map from the intervention's terms "
            "(its attention already mixes them); record interventions with --probe hidden"
        )
    recorded_steps = step_list if step_list is not None else list(range(config.num_inference_steps))
    reference, neutral = _probe_rows(adapter, config, keyword_tokens)
    probe_config = ProbeConfig(
        keyword_tokens=[list(k.token_indices) for k in keyword_tokens],
        grid=grid,
        kind=config.probe,
        layers=layer_list,
        steps=recorded_steps,  # explicit, so calls beyond the declared steps are never recorded
        branch=config.branch,
        reference_tokens=reference,
        neutral_token=neutral,
    )
    layout = StoreLayout(
        steps=recorded_steps,
        layers=recorded_layers,
        blocks=[labels[i][0] for i in recorded_layers],
        streams=[labels[i][1] for i in recorded_layers] if any(stream for _, stream in labels) else None,
        keywords=[k.keyword for k in keyword_tokens],
        grid=grid,
        video_shape=(adapter.video_frames(config.num_frames), config.height, config.width),
        dtype=config.dtype,
        branches=probe_config.branches,
        views=("intrinsic", "injected") if touched else ("intrinsic",),
        experts=adapter.expert_names(),
        attrs={
            **describe_model(pipe),
            **(attrs or {}),
            **adapter.describe(),
            "prompt": config.prompt,
            "prompt_cleaned": clean_prompt(config.prompt),
            "seed": config.seed,
            "guidance_scale": config.guidance_scale,
            "negative_prompt": config.negative_prompt or "",
            "record_config": config.to_dict(),
            "keywords": [k.to_dict() for k in keyword_tokens],
            "height": config.height,
            "width": config.width,
            "num_frames": config.num_frames,
            "num_inference_steps": config.num_inference_steps,
            "grid": list(grid),
            "probe": probe_config.to_dict(),
            "probe_kind": config.probe,
            "branch": config.branch,
            "similarity_view": (
                "intrinsic: probes run before any intervention hook, and on later blocks read the hidden state "
                "minus the terms the intervention carried in, so maps exclude its terms"
            ),
            "injected_layers": touched,
            "guided_layers": guided,
            "carried_layers": carried,
            "package_versions": package_versions(),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )
    intrinsic = IntrinsicInputs() if intervention is not None else None
    remove_intervention = _apply_intervention(intervention, pipe, adapter, config, image, grid, attrs, intrinsic)
    try:
        # after apply: an intervention may resolve settings (e.g. selected keywords) there
        layout.attrs["intervention"] = intervention.to_dict() if intervention is not None else "none"
        writer = StoreWriter(store, layout, overwrite=config.overwrite)
    except BaseException:
        remove_intervention()
        raise
    handle = injected = None
    try:
        handle = apply_probes(adapter, probe_config, writer.submit, intrinsic=intrinsic)
        handle.state.on_step = writer.set_timestep
        if touched:
            # the same probe after the intervention's hooks, on the layers it changes
            injected_config = ProbeConfig(**{**probe_config.to_dict(), "layers": touched, "view": "injected"})
            injected = apply_probes(adapter, injected_config, writer.injected_sink, tracker_name=_INJECTED_TRACKER)
        yield Trace(pipe, adapter, writer, handle, keyword_tokens, probe_config, recorded_steps)
    except BaseException as error:
        reason = "interrupted by the user (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else repr(error)
        try:
            for probes in (handle, injected):
                if probes is not None:
                    probes.remove()
            remove_intervention()
        finally:
            writer.close(STATUS_INTERRUPTED, error=reason[:500])
        raise
    else:
        fired = sum(handle.calls.values())
        try:
            handle.remove()
            if injected is not None:
                injected.remove()
            remove_intervention()
        except BaseException:
            writer.close(STATUS_INTERRUPTED, error="removing hooks failed")
            raise
        expected = len(recorded_layers) * len(recorded_steps) * len(probe_config.branches)
        attrs_end: dict[str, Any] = {"hook_calls": fired, "hook_calls_expected": expected}
        if fired == 0:
            writer.close(
                STATUS_INTERRUPTED,
                error="no probe fired: the pipeline never ran the probed blocks/branch (uncond needs guidance > 1)",
                **attrs_end,
            )
            raise RecordError(
                "no probe fired during the run; nothing was recorded (is --branch uncond used with --guidance 1?)"
            )
        writer.close(STATUS_COMPLETE, **attrs_end)


def _config(config: RecordConfig | None, options: dict[str, Any]) -> RecordConfig:
    if config is None:
        return RecordConfig(**options)
    if options:
        raise TypeError(f"pass either a RecordConfig or its fields, not both (got {', '.join(options)})")
    return config


def _carried_layers(intervention: Any, num_layers: int) -> list[int]:
    """Blocks whose input carries the intervention's terms (optional protocol method)."""
    if intervention is None or not hasattr(intervention, "carried_layers"):
        return []
    return [int(layer) for layer in intervention.carried_layers(num_layers)]


def _apply_intervention(intervention, pipe, adapter, config: RecordConfig, image, grid, attrs, intrinsic=None):
    """Install ``intervention`` (validating it against this run); return its remover."""
    if intervention is None:
        return lambda: None
    from layerscope.interventions import InterventionError, RunInputs

    if image is None:
        raise InterventionError("an intervention needs the reference image: pass image= to trace()")
    model_dir = pipeline_dir(pipe)
    model = {**describe_model(pipe), **(attrs or {})}
    inputs = RunInputs(
        pipe=pipe,
        adapter=adapter,
        prompt=config.prompt,
        image=image,
        height=config.height,
        width=config.width,
        num_frames=config.num_frames,
        grid=grid,
        model_dir=model_dir,
        extra={"model_id": model.get("model_id"), "base_model_id": model.get("base_model_id")},
        intrinsic=intrinsic,
    )
    handle = intervention.apply(inputs)
    return handle.remove


def _probe_rows(adapter: Any, config: Any, keyword_tokens: list[Any]) -> tuple[list[int] | None, int | None]:
    """The ``contrastive`` probe's reference rows and the ``influence`` probe's neutral row.

    Checked here, before any store exists, so a prompt or model that cannot carry the
    probe costs one line.
    """
    if config.probe == "contrastive":
        rows = adapter.reference_tokens(config.prompt, keyword_tokens)
        if not rows:
            raise RecordError(
                "--probe contrastive compares each keyword with the prompt's other words, and this prompt has "
                "none; add words that are not keywords"
            )
        return rows, None
    if config.probe == "influence":
        sites = adapter.probe_sites(adapter.denoisers()[0])
        if any(site.replace_text_rows is None for site in sites):
            raise RecordError(
                f"--probe influence re-runs a block's cross-attention with the keyword replaced, which the "
                f"{adapter.name} adapter cannot rebuild (joint attention); use --probe contrastive or hidden"
            )
        neutral = adapter.text_sequence_length() - 1
        if neutral in adapter.reference_tokens(config.prompt, []):
            raise RecordError(
                f"the prompt fills all {neutral + 1} text tokens, so no padding row is left to be the "
                "influence probe's neutral token; shorten the prompt"
            )
        return None, neutral
    return None, None


def _as_indices(value, limit: int, what: str) -> list[int] | None:
    if value is None or isinstance(value, str):
        return parse_index_ranges(value, limit, what)
    return _checked(sorted({int(v) for v in value}), limit, what)


def record(
    pipe: Any,
    store: str | os.PathLike,
    config: RecordConfig | None = None,
    *,
    image: Any,
    attrs: dict[str, Any] | None = None,
    progress: bool = True,
    intervention: Any = None,
    **options: Any,
) -> RecordingSummary:
    """Run ``pipe`` once with probes and write a complete store (the CLI's ``record``).

    Takes a :class:`RecordConfig` or its fields as keywords, like :func:`trace`.
    """
    import torch
    from PIL import Image

    config = _config(config, options)
    config.check_guidance()
    adapter = resolve_adapter(pipe)
    call_kwargs = adapter.call_kwargs(config)
    if not isinstance(image, Image.Image):
        image = Image.fromarray(to_uint8(np.asarray(image)))
    image = image.convert("RGB").resize((config.width, config.height), Image.Resampling.BICUBIC)
    pipe.set_progress_bar_config(disable=not progress, desc="denoising", leave=False)
    started = time.perf_counter()
    with trace(pipe, store, config, attrs=attrs, image=image, intervention=intervention) as rec:
        rec.save_outputs(reference=np.asarray(image))
        # the noise is drawn on the CPU, so a seed gives the same video on every device
        generator = torch.Generator(device="cpu").manual_seed(config.seed)
        output = adapter.generate(
            image=image,
            prompt=config.prompt,
            height=config.height,
            width=config.width,
            num_frames=config.num_frames,
            num_inference_steps=config.num_inference_steps,
            generator=generator,
            output_type="np",
            **call_kwargs,
        )
        rec.save_outputs(video=output.frames[0])
        probe_seconds = sum(p.seconds for p in rec.handle.probes)
    elapsed = time.perf_counter() - started
    writer = rec.writer
    return RecordingSummary(
        path=writer.path,
        status=writer.status,
        maps_written=writer.maps_written,
        steps_written=len(writer.steps_written()),
        steps_expected=len(rec.expected_steps),
        bytes_on_disk=directory_size(writer.path),
        seconds_total=elapsed,
        seconds_probes=probe_seconds,
        queue_waits=writer.queue_waits,
        video=rec.video,
    )
