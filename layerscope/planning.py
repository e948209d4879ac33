"""What a recording will cost, from configs alone: ``layerscope plan``.

Why: a published checkpoint is tens of GB behind a GPU bill, while everything a plan needs
is in three small JSON files (``model_index.json``, ``transformer/config.json``,
``vae/config.json``).  The family's adapter turns them into the token grid and text length
(:meth:`~layerscope.adapters.base.ModelAdapter.geometry_from_configs`, the same family file
that records); this module adds what is family-independent:

* **parameters**: the transformer instantiated on the meta device (exact, no memory used);
* **store**: the ``similarity`` array is (steps, layers, keywords, F', H', W') in the store
  dtype, one Zarr chunk per (step, layer), zstd level 0 (:mod:`layerscope.store`).  On disk
  the plan assumes *no* compression for maps (float16 cosines have noisy mantissas: the tiny
  Wan model's maps compress to 0.92 of raw) and prints the raw ``video``/``reference``
  bytes as an upper bound (real videos compress, by an amount no config tells);
* **probe memory**: the transient tensors one probe call allocates (formulas below, checked
  against a tensor-counting measurement in ``tests/test_plan.py``), plus the writer queue;
* **compute**: forward FLOPs counted with :class:`torch.utils.flop_counter.FlopCounterMode`
  on meta tensors (matmuls, attention, convolutions; element-wise work is not counted), and
  the probe's matmul FLOPs analytically, counted the same way.

Nothing here loads weights or needs a GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerscope.errors import LayerScopeError

#: ``layerscope.store.StoreWriter``: map blocks the writer queue holds before the loop waits
WRITER_QUEUE_BLOCKS = 64
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PUBLISHED_FORMAT = "layerscope-published-configs/1"


class PlanError(LayerScopeError):
    """The plan cannot be made as asked (missing config, sizes the model cannot take, unknown probe)."""


@dataclass
class PlanOptions:
    """One ``layerscope plan`` request; ``model`` is a folder, a config JSON or a published-configs file."""

    model: str
    #: None: the published entry's ``plan_size``, else the pipeline class's own defaults
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    layers: str | None = None
    probe: str = "hidden"
    dtype: str = "bfloat16"
    store_dtype: str = "float16"
    keywords: int = 2
    #: recorded branches: ``cond``, ``uncond`` or ``both`` (CFG runs both forwards either way)
    branch: str = "cond"
    record_steps: str | None = None
    #: which entry of a published-configs file (all entries are listed when it is missing)
    entry: str | None = None
    #: a bare transformer config does not name its pipeline: say which
    pipeline: str | None = None

    def __post_init__(self) -> None:
        from layerscope.registry import PROBES

        for name in ("frames", "height", "width", "steps", "keywords"):
            value = getattr(self, name)
            if value is None and name != "keywords":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PlanError(f"--{name} must be a positive integer (got {value!r})")
        if self.probe not in PROBES:
            raise PlanError(f"unknown probe kind {self.probe!r}; choose one of {', '.join(PROBES.names())}")
        if self.dtype not in _DTYPE_BYTES:
            raise PlanError(f"--dtype {self.dtype!r}: choose one of {', '.join(_DTYPE_BYTES)}")
        if self.store_dtype not in ("float16", "float32"):
            raise PlanError(f"--store-dtype {self.store_dtype!r}: choose float16 or float32")
        if self.branch not in ("cond", "uncond", "both"):
            raise PlanError(f"--branch {self.branch!r}: choose cond, uncond or both")


@dataclass
class ModelConfigs:
    """The config dicts of one model, and where they came from."""

    name: str
    family: str
    configs: dict[str, Any]
    source: str


@dataclass
class Plan:
    """Every number ``layerscope plan`` prints (bytes, FLOPs, counts), so tests can check them."""

    name: str
    family: str
    pipeline: str
    transformer: str
    grid: tuple[int, int, int]
    visual_tokens: int
    text_tokens: int
    num_layers: int
    recorded_layers: int
    recorded_steps: int
    branches: int
    keywords: int
    heads: int
    width: int
    experts: int
    parameters: int
    weight_bytes: int
    map_block_bytes: int
    map_bytes: int
    chunks: int
    video_bytes: int
    reference_bytes: int
    probe_peak_bytes: int
    probe_peak_formula: str
    writer_queue_bytes: int
    forward_flops: int
    probe_flops_per_call: int
    probe_flops_formula: str
    notes: list[str] = field(default_factory=list)

    @property
    def store_bytes(self) -> int:
        return self.map_bytes + self.video_bytes + self.reference_bytes

    @property
    def probe_share(self) -> float:
        """Probe FLOPs of one recorded forward over that forward's FLOPs."""
        return self.probe_flops_per_call * self.recorded_layers / self.forward_flops if self.forward_flops else 0.0

    def rows(self) -> list[tuple[str, str]]:
        f, h, w = self.grid
        per_call = self.probe_flops_per_call * self.recorded_layers
        run_probe = per_call * self.recorded_steps * self.branches
        return [
            ("model", f"{self.name} ({self.family}: {self.pipeline}, {self.transformer})"),
            ("token grid F' x H' x W'", f"{f} x {h} x {w} = {self.visual_tokens:,} visual tokens"),
            ("text tokens", f"{self.text_tokens:,}"),
            (
                "layers recorded",
                f"{self.recorded_layers} of {self.num_layers} ({self.heads} heads, width {self.width})",
            ),
            ("steps x branches recorded", f"{self.recorded_steps} x {self.branches}, {self.keywords} keywords"),
            (
                "transformer parameters",
                f"{self.parameters:,}"
                + (f" per expert x {self.experts}" if self.experts > 1 else "")
                + f" ({_bytes(self.weight_bytes * self.experts)} of weights)",
            ),  # fmt: skip
            ("map block (one layer, step)", f"{_bytes(self.map_block_bytes)} = one Zarr chunk"),
            (
                "maps on disk / in memory",
                f"{_bytes(self.map_bytes)} in {self.chunks:,} chunks (zstd assumed to save nothing)",
            ),
            (
                "video + reference (raw)",
                f"{_bytes(self.video_bytes + self.reference_bytes)} (upper bound: zstd compresses video)",
            ),
            ("store total (upper bound)", _bytes(self.store_bytes)),
            ("probe extra peak per layer", f"{_bytes(self.probe_peak_bytes)}  [{self.probe_peak_formula}]"),
            (
                "writer queue (host, worst case)",
                f"{_bytes(self.writer_queue_bytes)} ({WRITER_QUEUE_BLOCKS} map blocks)",
            ),
            (
                "forward pass (one call)",
                f"{_flops(self.forward_flops)} (FlopCounterMode on meta tensors)"
                if self.forward_flops
                else "not counted (see note)",
            ),  # fmt: skip
            (
                "probe compute per recorded forward",
                f"{_flops(per_call)}"
                + (f" = {100 * self.probe_share:.4g}% of one forward" if self.forward_flops else "")
                + f"  [{self.probe_flops_formula}]",
            ),
            ("probe compute, whole run", f"{_flops(run_probe)}"),
        ]

    def table(self) -> str:
        rows = self.rows()
        width = max(len(key) for key, _ in rows)
        lines = [f"{key.ljust(width)}  {value}" for key, value in rows]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.2f} {unit}"
        count /= 1024
    return f"{count}"  # pragma: no cover


def _flops(count: float) -> str:
    for unit in ("", "K", "M", "G", "T", "P"):
        if abs(count) < 1000 or unit == "P":
            return f"{count:,.3g} {unit}FLOP"
        count /= 1000
    return f"{count}"  # pragma: no cover


# -- reading configs -------------------------------------------------------------------
def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PlanError(f"cannot read {what} {path}: {error}") from None
    if not isinstance(data, dict):
        raise PlanError(f"{what} {path} is not a JSON object")
    return data


def published_entries(path: str | Path) -> dict[str, dict[str, Any]]:
    """The entries of a published-configs file (``tests/data/published_configs.json``)."""
    data = _read_json(Path(path), "published-configs file")
    if data.get("format") != PUBLISHED_FORMAT or not isinstance(data.get("entries"), dict):
        raise PlanError(f"{path} is not a published-configs file (format {PUBLISHED_FORMAT})")
    return data["entries"]


def family_of_pipeline(pipeline_class: str) -> str:
    """The registered family whose adapter accepts ``pipeline_class``."""
    from layerscope.adapters.registry import REFUSED_PIPELINES, adapter_classes

    for adapter in adapter_classes():
        if pipeline_class in adapter.pipeline_classes:
            return adapter.name
    if pipeline_class in REFUSED_PIPELINES:
        raise PlanError(f"LayerScope cannot map {pipeline_class}: {REFUSED_PIPELINES[pipeline_class]}")
    raise PlanError(f"no LayerScope family records {pipeline_class} pipelines")


def load_configs(options: PlanOptions) -> ModelConfigs:
    """Resolve ``--model`` into config dicts: a folder, a published-configs file (+ ``--entry``) or one config."""
    path = Path(options.model).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise PlanError(f"{path} has no model_index.json; pass a diffusers pipeline folder or a config JSON")
        pipeline = _read_json(index, "model_index.json")
        configs = {
            "pipeline": pipeline,
            "transformer": _read_json(path / "transformer" / "config.json", "transformer config"),
        }
        for part in ("vae", "text_encoder", "image_encoder"):
            if (path / part / "config.json").is_file():
                configs[part] = _read_json(path / part / "config.json", f"{part} config")
        name = str(pipeline.get("_class_name", ""))
        return ModelConfigs(path.name, family_of_pipeline(name), configs, str(path))
    if not path.is_file():
        raise PlanError(f"--model {options.model}: no such folder or config file")
    data = _read_json(path, "config file")
    if data.get("format") == PUBLISHED_FORMAT:
        entries = published_entries(path)
        if options.entry is None:
            raise PlanError(f"{path} holds several models; pass --entry, one of {', '.join(entries)}")
        if options.entry not in entries:
            raise PlanError(f"no entry {options.entry!r} in {path}; choose one of {', '.join(entries)}")
        entry = entries[options.entry]
        configs = {
            key: entry.get(key) or {}
            for key in ("pipeline", "transformer", "vae", "text_encoder", "image_encoder", "plan_size")
        }
        family = family_of_pipeline(str(entry["pipeline"]["_class_name"]))
        return ModelConfigs(options.entry, family, configs, f"{path}#{options.entry}")
    if "_class_name" not in data:
        raise PlanError(f"{path} is not a diffusers config (no _class_name)")
    folder = path.parent.parent if path.parent.name == "transformer" else None
    if folder is not None and (folder / "model_index.json").is_file():
        return load_configs(PlanOptions(**{**options.__dict__, "model": str(folder)}))
    if options.pipeline is None:
        raise PlanError(f"{path} is a bare transformer config that does not name its pipeline; pass --pipeline CLASS")
    configs = {"pipeline": {"_class_name": options.pipeline}, "transformer": data}
    return ModelConfigs(path.stem, family_of_pipeline(options.pipeline), configs, str(path))


# -- the plan ----------------------------------------------------------------------------
def _adapter_class(family: str) -> Any:
    from layerscope.registry import MODEL_FAMILIES

    return MODEL_FAMILIES.load(family)


def _meta_transformer(config: dict[str, Any]) -> Any:
    import diffusers
    import torch

    name = str(config.get("_class_name", ""))
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise PlanError(f"diffusers has no transformer class {name!r}")
    with torch.device("meta"):
        return cls.from_config({key: value for key, value in config.items() if not key.startswith("_")})


def count_forward_flops(model: Any, inputs: dict[str, Any]) -> tuple[int, dict[str, int]]:
    """FLOPs of one denoiser call (FlopCounterMode: matmuls, attention, convolutions), and per module."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    per_module = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()}
    return int(counter.get_total_flops()), per_module


def probe_memory(probe: str, n: int, m_keys: int, d: int, heads: int, k: int, model_bytes: int,
                 chunk: int | None) -> tuple[int, str]:  # fmt: skip
    """Peak bytes a probe call allocates beyond what the block already holds, and the formula.

    ``hidden``/``output`` (:func:`layerscope.probes.cosine_maps`): a float32 copy of the N x D
    features (bf16/fp16 models only), its normalised copy, the (N, 1) norm, then the
    (K, N) maps.  ``contrastive``: the same, plus the reference's (1, N) map and the first
    result held during the second.  ``attention``
    (:func:`layerscope.probes.attention_mass_maps`): H x c x M float32 logits, their scaled
    copy, then the softmax (two alive at once), c = min(N, the probe's query chunk), plus
    float32 copies of queries and keys (bf16/fp16) and the (K, N) result.
    """
    upcast = model_bytes != 4
    if probe in ("hidden", "output", "contrastive"):
        copy = n * d * 4 if upcast else 0
        normalize = copy + n * d * 4 + n * 4
        matmul = n * d * 4 + k * n * 4
        peak = max(normalize, matmul)
        text = "max(copy + 4ND + 4N, 4ND + 4KN)" + (", copy = 4ND (bf16)" if upcast else "")
        if probe == "contrastive":
            peak += 2 * k * n * 4 + n * 4
            text += " + 8KN + 4N (reference map, difference)"
        return peak, text
    if probe == "attention":
        rows = min(chunk or n, n)
        copies = (n * d * 4 + m_keys * d * 4) if upcast else 0
        peak = 2 * heads * rows * m_keys * 4 + copies + 2 * k * n * 4
        text = f"2 x 4 H c M (c={rows:,}, M={m_keys:,} keys) + 8KN" + (" + 4(N+M)D copies (bf16)" if upcast else "")
        return peak, text
    return 0, f"not modelled for --probe {probe}"


def probe_flops(probe: str, n: int, m_keys: int, d: int, k: int, attention_call: int) -> tuple[int, str]:
    """Matmul FLOPs of one probe call (what FlopCounterMode counts), and the formula.

    Keywords are taken as one text token each (a keyword of t tokens adds 2tD to the first term).
    """
    keyword_values = 2 * k * k * d  # (K x T) @ (T x D), T = K keyword tokens
    if probe in ("hidden", "output"):
        return keyword_values + 2 * k * d * n, "2K^2 D + 2KDN"
    if probe == "contrastive":
        return keyword_values + 2 * (k + 1) * d * n, "2K^2 D + 2(K+1)DN"
    if probe == "attention":
        return 2 * n * m_keys * d, f"2 N M D (M={m_keys:,} keys)"
    if probe == "influence":
        return k * attention_call, "K x one attention call (counted on meta)"
    return 0, f"not modelled for --probe {probe}"


def with_default_sizes(options: PlanOptions, model: ModelConfigs) -> PlanOptions:
    """Sizes the user left out: the published entry's ``plan_size``, then the pipeline class's
    ``__call__`` defaults (what a ``layerscope record`` of that checkpoint would use)."""
    from dataclasses import replace

    from layerscope.adapters.registry import pipeline_call_defaults

    names = ("steps", "frames", "height", "width")
    if all(getattr(options, name) is not None for name in names):
        return options
    published = model.configs.get("plan_size") or {}
    defaults = pipeline_call_defaults(str(model.configs["pipeline"].get("_class_name", ""))) or (None,) * 4
    chosen = {}
    for name, default in zip(names, defaults, strict=True):
        value = getattr(options, name)
        value = value if value is not None else published.get(name, default)
        if value is None:
            raise PlanError(f"{model.name}: its pipeline names no default {name}; pass --{name}")
        chosen[name] = int(value)
    return replace(options, **chosen)


def make_plan(options: PlanOptions) -> Plan:
    """Everything ``layerscope plan`` prints for one model."""
    from layerscope.adapters.base import AdapterError
    from layerscope.probes import ATTENTION_QUERY_CHUNK
    from layerscope.recording import RecordError, parse_index_ranges

    model = load_configs(options)
    options = with_default_sizes(options, model)
    adapter = _adapter_class(model.family)
    try:
        geometry = adapter.geometry_from_configs(model.configs, options.frames, options.height, options.width)
    except AdapterError as error:
        raise PlanError(str(error)) from None
    except (KeyError, TypeError, ValueError) as error:
        raise PlanError(f"{model.source}: its configs lack what {model.family} needs ({error!r})") from None
    multiple, frame_multiple = geometry.spatial_multiple, geometry.frame_multiple
    if options.height % multiple or options.width % multiple:
        raise PlanError(
            f"height and width must be multiples of {multiple} for {model.name} (got {options.height}x{options.width})"
        )
    if (options.frames - 1) % frame_multiple:
        raise PlanError(f"--frames must be {frame_multiple}*n+1 for {model.name} (got {options.frames})")
    try:
        layers = parse_index_ranges(options.layers, geometry.num_layers, "layer")
        steps = parse_index_ranges(options.record_steps, options.steps, "step")
    except RecordError as error:
        raise PlanError(str(error)) from None
    recorded_layers = len(layers) if layers is not None else geometry.num_layers
    recorded_steps = len(steps) if steps is not None else options.steps
    branches = 2 if options.branch == "both" else 1

    transformer = _meta_transformer(model.configs["transformer"])
    parameters = sum(p.numel() for p in transformer.parameters())
    notes = list(geometry.notes)
    try:
        inputs = adapter.forward_inputs_from_configs(model.configs, geometry)
    except AdapterError as error:
        raise PlanError(str(error)) from None
    try:
        forward, per_module = count_forward_flops(transformer, inputs)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as error:  # data-dependent code on meta
        forward, per_module = 0, {}
        notes.append(
            f"forward FLOPs not counted: the {type(transformer).__name__} forward fails on meta ({error})"[:200]
        )
    attention_call = _site_attention_flops(adapter, transformer, per_module)

    f, h, w = geometry.grid
    n = f * h * w
    m_keys = n + geometry.text_tokens if geometry.joint_attention else geometry.text_tokens
    k = options.keywords
    store_bytes = _DTYPE_BYTES[options.store_dtype]
    block = k * n * store_bytes
    memory, memory_text = probe_memory(
        options.probe, n, m_keys, geometry.width, geometry.heads, k, _DTYPE_BYTES[options.dtype],
        ATTENTION_QUERY_CHUNK,
    )  # fmt: skip
    flops, flops_text = probe_flops(options.probe, n, m_keys, geometry.width, k, attention_call)
    if options.probe == "influence" and geometry.joint_attention:
        notes.append("the influence probe needs cross-attention; this family's joint attention refuses it")
    notes.append("JSON metadata (attrs, coordinates) adds tens of KiB, not counted")
    video_frames = geometry.video_frames or options.frames
    return Plan(
        name=model.name,
        family=model.family,
        pipeline=str(model.configs["pipeline"].get("_class_name", "")),
        transformer=str(model.configs["transformer"].get("_class_name", "")),
        grid=geometry.grid,
        visual_tokens=n,
        text_tokens=geometry.text_tokens,
        num_layers=geometry.num_layers,
        recorded_layers=recorded_layers,
        recorded_steps=recorded_steps,
        branches=branches,
        keywords=k,
        heads=geometry.heads,
        width=geometry.width,
        experts=geometry.experts,
        parameters=parameters,
        weight_bytes=parameters * _DTYPE_BYTES[options.dtype],
        map_block_bytes=block,
        map_bytes=block * recorded_layers * recorded_steps * branches,
        chunks=recorded_layers * recorded_steps * branches,
        video_bytes=video_frames * options.height * options.width * 3,
        reference_bytes=options.height * options.width * 3,
        probe_peak_bytes=memory,
        probe_peak_formula=memory_text,
        writer_queue_bytes=WRITER_QUEUE_BLOCKS * k * n * 4,
        forward_flops=forward,
        probe_flops_per_call=flops,
        probe_flops_formula=flops_text,
        notes=notes,
    )


def _site_attention_flops(adapter: Any, transformer: Any, per_module: dict[str, int]) -> int:
    """FLOPs of the first probe site's attention call (the ``influence`` probe re-runs it per keyword)."""
    from types import SimpleNamespace

    try:
        sites = adapter(SimpleNamespace(transformer=transformer)).probe_sites(transformer)
    except Exception:  # a family whose sites need more than the transformer: influence is then not modelled
        return 0
    names = {id(module): name for name, module in transformer.named_modules()}
    if not sites or id(sites[0].attention) not in names:
        return 0
    key = f"{type(transformer).__name__}.{names[id(sites[0].attention)]}"
    return int(per_module.get(key, 0))


def plan_all(path: str | Path, **overrides: Any) -> list[Plan]:
    """A plan for every entry of a published-configs file (what the docs' tables come from)."""
    return [make_plan(PlanOptions(model=str(path), entry=name, **overrides)) for name in published_entries(path)]


__all__ = ["Plan", "PlanError", "PlanOptions", "load_configs", "make_plan", "plan_all", "published_entries"]
