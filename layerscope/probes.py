"""On-device visual-keyword similarity maps for the blocks of a DiT.

Probes observe with PyTorch forward hooks on the modules an adapter names; they never
replace attention processors (DAAM's processor swapping breaks with every diffusers
release).  Which branch (cond/uncond) and which denoising step a forward call belongs to
is tracked by one stateful diffusers ``ModelHook`` per denoiser, bound to the pipeline's
``cache_context("cond"|"uncond")``.

Probe kinds (``hidden``, the paper's Eq. 10 and the default; ``output``; ``attention``;
``contrastive``; ``influence``) live one file each in :mod:`layerscope.probe_kinds` and
are found through :data:`layerscope.registry.PROBES`; this module holds the hooks that
capture what a kind needs, shared by all of them.

A keyword of several tokens averages its tokens' value vectors (``hidden``/``output``)
or sums their attention mass (``attention``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from layerscope.adapters.base import ModelAdapter, ProbeSite

BRANCHES = ("cond", "uncond", "both")
VIEWS = ("intrinsic", "injected")
_BRANCH_HOOK = "layerscope_branch_tracker"

#: ``sink(step, layer, branch, maps)`` receives a float32 (K, F', H', W') tensor.
MapSink = Callable[[int, int, str, torch.Tensor], None]


@dataclass
class ProbeConfig:
    """What to record.  Round-trips through :meth:`to_dict` into store attrs."""

    keyword_tokens: list[list[int]]
    grid: tuple[int, int, int]
    kind: str = "hidden"
    layers: list[int] | None = None
    steps: list[int] | None = None
    branch: str = "cond"
    #: ``intrinsic``: the hooks run before any other hook on the same modules (``prepend``),
    #: so an intervention's additive terms are never in the map; ``injected``: after them.
    view: str = "intrinsic"
    #: ``contrastive``: text rows of the prompt's non-keyword words (V_ref is their mean value)
    reference_tokens: list[int] | None = None
    #: ``influence``: the text row whose input replaces a keyword's rows (a padding row)
    neutral_token: int | None = None

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"unknown view {self.view!r}; choose one of {', '.join(VIEWS)}")
        from layerscope.registry import PROBES

        if self.kind not in PROBES:
            raise ValueError(f"unknown probe kind {self.kind!r}; choose one of {', '.join(PROBES.names())}")
        if self.branch not in BRANCHES:
            raise ValueError(f"unknown branch {self.branch!r}; choose one of {', '.join(BRANCHES)}")
        if not self.keyword_tokens or any(len(t) == 0 for t in self.keyword_tokens):
            raise ValueError("every keyword needs at least one token index")
        self.probe_kind().check_config(self)
        self.grid = tuple(int(g) for g in self.grid)

    def probe_kind(self) -> Any:
        """The :class:`~layerscope.probe_kinds.ProbeKind` named by ``kind``."""
        from layerscope.registry import PROBES

        return PROBES.load(self.kind)

    @property
    def branches(self) -> tuple[str, ...]:
        return ("cond", "uncond") if self.branch == "both" else (self.branch,)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["grid"] = list(self.grid)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeConfig:
        return cls(**data)


@dataclass
class StepState:
    """Shared by all hooks of one recording: which step and branch is running now."""

    step: int = -1
    branch: str = "cond"
    timestep: float | None = None
    expert: int = 0
    #: rows in the batch of the current denoiser call (2 when a call stacks [uncond; cond])
    batch: int = 1
    calls: dict[str, int] = field(default_factory=lambda: {"cond": 0, "uncond": 0})
    on_step: Callable[[int, float | None, int], None] | None = None


class _BranchState:
    """Per-context state object the diffusers ``StateManager`` asks for; we keep none."""

    def reset(self, *args, **kwargs) -> None:
        pass


def step_timestep(timestep: Any) -> float | None:
    """The scalar timestep of a denoising step.

    Wan2.1 passes one value per sample; Wan2.2 TI2V (``expand_timesteps``) passes one per
    token, with the reference frame's tokens at 0 and the rest at the step's t: the
    step's timestep is the largest value, not the first.
    """
    if not isinstance(timestep, torch.Tensor) or timestep.numel() == 0:
        return None
    return float(timestep.detach().float().max())


def batch_row(order: Sequence[str], branch: str, batch: int) -> int | None:
    """Row of ``branch`` in a call that stacks the branches ``order`` along its batch.

    A call of one row is the cond branch alone (guidance off); any other batch size is
    not a layout the adapter declared, so nothing is read from it.
    """
    if batch == len(order):
        return list(order).index(branch)
    return 0 if batch == 1 and branch == "cond" else None


def _make_branch_tracker(state: StepState, expert: int = 0, by_call_order: bool = False, by_batch: bool = False):
    from diffusers.hooks import ModelHook
    from diffusers.hooks.hooks import StateManager

    class BranchTrackerHook(ModelHook):
        """Read the pipeline's ``cache_context`` name; count cond calls as steps."""

        _is_stateful = True

        def __init__(self):
            super().__init__()
            self.state_manager = StateManager(_BranchState)

        def pre_forward(self, module, *args, **kwargs):
            timestep = step_timestep(kwargs.get("timestep", args[1] if len(args) > 1 else None))
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            state.batch = int(hidden.shape[0]) if isinstance(hidden, torch.Tensor) and hidden.ndim > 0 else 1
            if by_batch:
                # both branches ride in one call (diffusers' cache_context "cond_uncond"): one call, one step
                branch = "cond"
            elif by_call_order:
                # true CFG without cache_context: the second call at the same timestep is uncond
                repeat = state.calls["cond"] > 0 and state.branch == "cond" and timestep == state.timestep
                branch = "uncond" if repeat else "cond"
            else:
                context = self.state_manager._context
                branch = context.name if context is not None else "cond"
                if branch not in ("cond", "uncond"):
                    branch = "cond"
            if branch == "cond":
                state.step += 1
                state.timestep = timestep
                state.expert = expert
                if state.on_step is not None:
                    state.on_step(state.step, state.timestep, expert)
            state.branch = branch
            state.calls[branch] += 1
            return args, kwargs

        def reset_state(self, module):
            self.state_manager.reset()
            return module

    return BranchTrackerHook()


def attach_step_tracker(adapter: ModelAdapter, state: StepState, name: str = _BRANCH_HOOK) -> Callable[[], None]:
    """Install the branch/step tracker on every denoiser; return its remover.

    ``name`` keys the hook in diffusers' registry, so an intervention and a recording
    can each track steps on the same model.
    """
    from diffusers.hooks import HookRegistry

    registries = []
    for expert, denoiser in enumerate(adapter.denoisers()):
        registry = HookRegistry.check_if_exists_or_initialize(denoiser)
        source = getattr(adapter, "branch_source", "")
        tracker = _make_branch_tracker(state, expert, source == "call_order", source == "batch")
        registry.register_hook(tracker, name)
        registries.append(registry)

    def remove() -> None:
        for registry in registries:
            registry.remove_hook(name, recurse=False)

    return remove


def keyword_average_matrix(keyword_tokens: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat token indices, (K, T) matrix that averages each keyword's rows)."""
    flat = [index for tokens in keyword_tokens for index in tokens]
    weights = torch.zeros(len(keyword_tokens), len(flat))
    column = 0
    for row, tokens in enumerate(keyword_tokens):
        weights[row, column : column + len(tokens)] = 1.0 / len(tokens)
        column += len(tokens)
    return torch.tensor(flat, dtype=torch.long), weights


def cosine_maps(features: torch.Tensor, keyword_values: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """cos(V_k, x(u, v)) for visual features (N, D) and keyword vectors (K, D) -> (K, F', H', W').

    Computed in float32 whatever the model dtype: cosines of bf16 vectors lose the
    third decimal, and the maps are small next to the block's own work.
    """
    x = F.normalize(features.float(), dim=-1)
    v = F.normalize(keyword_values.float(), dim=-1)
    return (v @ x.T).reshape(v.shape[0], *grid)


#: Visual queries the ``attention`` probe takes at once: the (H, chunk, M) probabilities are its
#: largest allocation (Wan2.1-14B at 480p: 32,760 queries x 40 heads x 512 keys unchunked
#: would be 2.7 GB of float32 per copy).  ``layerscope plan`` predicts memory with it.
ATTENTION_QUERY_CHUNK = 2048


def attention_mass_maps(
    queries: torch.Tensor,
    keys: torch.Tensor,
    keyword_tokens: Sequence[Sequence[int]],
    heads: int,
    grid: tuple[int, int, int],
    key_mask: torch.Tensor | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Softmax mass of each visual query (N, D) on each keyword's keys (rows of (M, D)), heads averaged.

    ``key_mask`` (M,) bool leaves padding keys out of the softmax, as the model's own mask
    does; a float ``key_mask`` is an additive bias on the logits, as the model adds it.
    ``chunk`` bounds the (H, chunk, M) probabilities held at once (MMDiT joint attention
    has M = visual + text keys).
    """
    n, dim = queries.shape
    head_dim = dim // heads
    k = keys.float().reshape(keys.shape[0], heads, head_dim).transpose(0, 1)  # H, M, d
    columns = [torch.tensor(list(tokens), device=keys.device) for tokens in keyword_tokens]
    step = chunk or n
    parts = []
    for start in range(0, n, step):
        q = queries[start : start + step].float().reshape(-1, heads, head_dim).transpose(0, 1)  # H, c, d
        logits = q @ k.transpose(1, 2) / head_dim**0.5
        if key_mask is not None and key_mask.dtype == torch.bool:
            logits = logits.masked_fill(~key_mask.to(logits.device), float("-inf"))
        elif key_mask is not None:
            logits = logits + key_mask.to(logits.device, logits.dtype)
        probs = torch.softmax(logits, dim=-1)  # H, c, M
        parts.append(torch.stack([probs.index_select(2, c).sum(-1).mean(0) for c in columns]))
    return torch.cat(parts, dim=1).reshape(len(keyword_tokens), *grid)


class _SiteProbe:
    """Hooks on one block's probe site; emits one map block per recorded call.

    Which hooks are installed follows the probe kind's ``needs_*`` flags; the kind turns
    the captured ``scratch`` tensors into maps (:mod:`layerscope.probe_kinds`).
    """

    def __init__(
        self,
        site: ProbeSite,
        config: ProbeConfig,
        state: StepState,
        is_recorded,
        sink: MapSink,
        intrinsic=None,
        batch_branch: str | None = None,
        batch_order: Sequence[str] = (),
    ):
        self.site = site
        #: batched CFG (``branch_source == "batch"``): the branch this probe reads, from its
        #: row of each call's batch (``batch_order``); None: row 0 of the branch the tracker names
        self.batch_branch = batch_branch
        self.batch_order = tuple(batch_order)
        self.row = 0  # the batch row the current call is read from
        self.config = config
        self.kind = config.probe_kind()
        self.state = state
        self.is_recorded = is_recorded
        self.sink = sink
        self.intrinsic = intrinsic  # an intervention's unguided inputs (layerscope.interventions.IntrinsicInputs)
        self.calls = 0
        self.seconds = 0.0  # host time spent computing maps (a lower bound on GPUs)
        self.scratch: dict[str, Any] = {}
        self.rerunning = False  # a kind re-running the attention (influence): hooks stand aside
        self._flat, self._avg = keyword_average_matrix(config.keyword_tokens)
        self._device_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles: list[Any] = []
        kind = self.kind
        kind.check_site(site)
        attn = site.attention
        first = config.view == "intrinsic"  # run before an intervention's hooks on the same module
        self.handles.append(attn.register_forward_pre_hook(self._on_attention_input, with_kwargs=True, prepend=first))
        self.handles.append(attn.register_forward_hook(self._on_attention_done, prepend=first))
        if kind.needs_text_values or kind.needs_reference_value:
            self.handles.append(site.text_value.register_forward_hook(self._on_text_value, prepend=first))
        if kind.needs_attention_output:
            self.handles.append(
                site.attention_output.register_forward_pre_hook(self._on_attention_output, prepend=first)
            )
        if kind.needs_query_key:
            self.handles.append(site.query_norm.register_forward_hook(self._keep("query"), prepend=first))
            self.handles.append(site.key_norm.register_forward_hook(self._keep("key"), prepend=first))
            if site.visual_key_norm is not None and site.visual_key_norm is not site.key_norm:
                hook = self._keep("visual_key")
                self.handles.append(site.visual_key_norm.register_forward_hook(hook, prepend=first))

    def _active(self) -> bool:
        if self.batch_branch is None:
            self.row = 0
            return self.is_recorded(self.state.step, self.state.branch)
        row = batch_row(self.batch_order, self.batch_branch, self.state.batch)
        if row is None:
            return False
        self.row = row
        return self.is_recorded(self.state.step, self.batch_branch)

    def _index(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._device_cache:
            self._device_cache[key] = (self._flat.to(device), self._avg.to(device=device, dtype=torch.float32))
        return self._device_cache[key]

    def _on_attention_input(self, module, args, kwargs):
        if self.rerunning:
            return None
        if self._active():
            visual = self.site.visual_input(args, kwargs)
            unguided = self.intrinsic.take(module) if self.intrinsic is not None else None
            self.scratch["visual"] = (visual if unguided is None else unguided.to(visual.dtype))[self.row]
            if self.kind.needs_call:
                self.scratch["call"] = (args, kwargs)
            if self.site.joint_attention:
                self.scratch["rotary"] = kwargs.get("image_rotary_emb")
            mask = kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and (mask.dtype == torch.bool or mask.is_floating_point()):
                # bool: keys kept; float: an additive bias (LTX-Video's -10000 on padding)
                self.scratch["mask"] = mask.reshape(mask.shape[0], -1)[self.row]
        return None

    def _text_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The text rows of a (S, ...) tensor: after the visual rows in single-stream blocks,
        before them in a ``[text; visual]`` joint sequence (CogVideoX)."""
        if self.site.text_follows_visual:
            rows = rows[self.scratch["visual"].shape[0] :]
        elif self.site.text_precedes_visual:
            rows = rows[: rows.shape[0] - self.scratch["visual"].shape[0]]
        return rows[self.site.text_value_tokens]

    def _on_text_value(self, module, args, output):
        if "visual" in self.scratch:
            values = self._text_rows(output[self.row])
            flat, avg = self._index(values.device, values.dtype)
            self.scratch["keyword_values"] = avg @ values.index_select(0, flat).float()
            if self.kind.needs_reference_value:
                rows = torch.tensor(self.config.reference_tokens, device=values.device)
                self.scratch["reference_value"] = values.index_select(0, rows).float().mean(0, keepdim=True)

    def _on_attention_output(self, module, args):
        if "visual" in self.scratch:
            visual = self.scratch["visual"]
            reader = self.site.attention_output_reader
            data = args[0][self.row]
            self.scratch["attention_output"] = (
                data if reader is None else reader(data, visual.shape[0], visual.shape[-1])
            )
            if self.scratch.pop("deferred", False):  # the output module runs after attention returned
                self._finish()

    def _keep(self, name: str):
        def hook(module, args, output):
            if "visual" in self.scratch:
                # joint attention keeps a copy: CogVideoX's processor rotates the norms' outputs in
                # place afterwards; cross-attention processors do not, so no copy is paid there
                kept = output[self.row]
                self.scratch[name] = kept.clone() if self.site.joint_attention else kept

        return hook

    def _on_attention_done(self, module, args, output):
        if self.rerunning:
            return None
        if "visual" in self.scratch:
            self.kind.after_attention(self, output)
        if self.kind.needs_attention_output and "visual" in self.scratch and "attention_output" not in self.scratch:
            # HunyuanVideo's single blocks: proj_out (the output site) runs after attention returns
            self.scratch["deferred"] = True
            return None
        self._finish()
        return None

    def _finish(self) -> None:
        """Compute this call's maps from the scratch tensors and hand them to the sink."""
        scratch, self.scratch = self.scratch, {}
        if "visual" not in scratch:
            return None
        started = time.perf_counter()
        with torch.no_grad():
            maps = self.kind.maps(self, scratch, self.config.grid)
        self.calls += 1
        self.seconds += time.perf_counter() - started
        self.sink(self.state.step, self.site.layer, self.batch_branch or self.state.branch, maps)
        return None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class ProbeHandle:
    """What :func:`apply_probes` returns; :meth:`remove` restores the model exactly."""

    def __init__(self, state: StepState, probes: list[_SiteProbe], remove_tracker: Callable[[], None]):
        self.state = state
        self.probes = probes
        self._remove_tracker = remove_tracker

    @property
    def calls(self) -> dict[int, int]:
        """Recorded map blocks per layer (for checks and tests)."""
        counts: dict[int, int] = {}
        for probe in self.probes:
            counts[probe.site.layer] = counts.get(probe.site.layer, 0) + probe.calls
        return counts

    def remove(self) -> None:
        for probe in self.probes:
            probe.remove()
        self.probes = []
        self._remove_tracker()


def apply_probes(
    adapter: ModelAdapter,
    config: ProbeConfig,
    sink: MapSink,
    state: StepState | None = None,
    tracker_name: str = _BRANCH_HOOK,
    intrinsic: Any = None,
) -> ProbeHandle:
    """Attach probes for ``config`` to every denoiser of ``adapter``'s pipeline.

    Only the selected layers get hooks, and a hook on a step or branch that is not
    recorded returns at once, so unrecorded work costs one comparison.  ``intrinsic``
    (:class:`layerscope.interventions.IntrinsicInputs`): where an intervention offers a
    block's attention input without the terms it carried in from earlier blocks; the
    probes read that instead of the observed input.
    """
    state = state or StepState()
    steps = None if config.steps is None else frozenset(config.steps)
    layers = None if config.layers is None else frozenset(config.layers)
    branches = frozenset(config.branches)

    def is_recorded(step: int, branch: str) -> bool:
        return branch in branches and (steps is None or step in steps)

    remove_tracker = attach_step_tracker(adapter, state, tracker_name)
    # batched CFG (``branch_source == "batch"``): one probe per recorded branch, each reading
    # its own row of the call; rows in the order ``batch_branches`` (default [uncond; cond])
    batched = getattr(adapter, "branch_source", "") == "batch"
    order = tuple(getattr(adapter, "batch_branches", ("uncond", "cond"))) if batched else ()
    probes = []
    try:
        for denoiser in adapter.denoisers():
            for site in adapter.probe_sites(denoiser):
                if layers is None or site.layer in layers:
                    for branch in config.branches if order else (None,):
                        probes.append(_SiteProbe(site, config, state, is_recorded, sink, intrinsic, branch, order))
    except BaseException:
        for probe in probes:
            probe.remove()
        remove_tracker()
        raise
    return ProbeHandle(state, probes, remove_tracker)
