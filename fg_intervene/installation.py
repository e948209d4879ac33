"""What every family's Focal Guidance installs the same way: the step source and the handle.

Why one module: Wan and HunyuanVideo differ in *where* the equations act (their family
files), not in how FG learns which step and branch is running, nor in how it is removed.
The Attention Cache needs the strong layers' maps (LayerScope's own Eq. 10 probe feeds
it and tracks steps); without the cache, a bare step tracker does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fg_intervene.attention_cache import AttentionCache
from fg_intervene.config import FocalGuidanceConfig


class CarriedTerms:
    """The sum of FG's terms now riding the residual stream, within one forward call.

    Why: with ``inject_at="hidden"`` the term added at weak block l stays in the residual,
    so every later block's input is ``z + carried``.  The intrinsic maps of those blocks
    are computed on ``z + carried - carried`` (:class:`layerscope.interventions.IntrinsicInputs`);
    this is the ``carried``.  The first weak block resets it at the start of each call
    (every branch, guided or not), so nothing leaks from one call into the next.
    """

    def __init__(self) -> None:
        self.total: Any = None

    def reset(self) -> None:
        self.total = None

    def add(self, term: Any) -> None:
        self.total = term if self.total is None else self.total + term


def carried_layers(config: FocalGuidanceConfig, num_layers: int) -> list[int]:
    """Blocks whose input carries FG's terms: every block after the first weak one (``inject_at="hidden"``)."""
    if config.inject_at != "hidden" or not config.weak_layers:
        return []
    return list(range(min(config.weak_layers) + 1, num_layers))


class FocalGuidanceHandle:
    """Installed hooks; :meth:`remove` restores the pipeline exactly."""

    def __init__(self, removers: list[Any], state: Any, cache: AttentionCache | None):
        self._removers = removers
        self.state = state
        self.cache = cache

    def remove(self) -> None:
        for remover in reversed(self._removers):
            remover()
        self._removers = []
        if self.cache is not None:
            self.cache.clear()


def install_step_source(
    adapter: Any,
    config: FocalGuidanceConfig,
    token_indices: list[list[int]],
    grid: tuple[int, int, int],
    removers: list[Any],
    tracker_name: str,
) -> tuple[Any, AttentionCache | None, Callable[[], bool]]:
    """Attach the cache's probes (or a bare step tracker); return (state, cache, is-this-branch-guided).

    Removers are appended to ``removers`` as soon as each hook exists, so a failure later
    in the caller's installation can undo everything.
    """
    from layerscope.probes import ProbeConfig, StepState, apply_probes, attach_step_tracker

    branches = ("cond", "uncond") if config.branch == "both" else (config.branch,)
    state = StepState()
    cache = None
    if config.attention_cache:
        cache = AttentionCache(adapter.num_layers(), config.weak_layers)
        probe_config = ProbeConfig(
            keyword_tokens=token_indices, grid=grid, kind="hidden", layers=cache.strong_layers, branch=config.branch
        )
        handle = apply_probes(adapter, probe_config, cache.update, state=state, tracker_name=f"{tracker_name}_cache")
        removers.append(handle.remove)
    else:
        removers.append(attach_step_tracker(adapter, state, tracker_name))

    def active() -> bool:
        return state.branch in branches

    return state, cache, active
