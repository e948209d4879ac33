"""How ``layerscope record`` finds and applies interventions, without importing them.

An intervention package registers a factory under the ``layerscope.interventions``
entry-point group (``fg_intervene`` registers ``focal-guidance``), read through
:data:`layerscope.registry.INTERVENTIONS` like every other open set.  LayerScope only
knows this protocol: the dependency points from interventions to LayerScope, never
back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from layerscope.errors import LayerScopeError

ENTRY_POINT_GROUP = "layerscope.interventions"


class InterventionError(LayerScopeError):
    """An intervention cannot be loaded or applied as asked (a usage error)."""


@dataclass
class RunInputs:
    """What an intervention may look at before the run starts."""

    pipe: Any
    adapter: Any
    prompt: str
    image: Any  # PIL image, already resized to (width, height)
    height: int
    width: int
    num_frames: int
    grid: tuple[int, int, int]
    model_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: where the intervention leaves the unguided attention inputs for the intrinsic probes
    intrinsic: IntrinsicInputs | None = None


class IntrinsicInputs:
    """A channel from an intervention to the intrinsic probes: what a block's attention would see unguided.

    Why it exists: an intervention that adds a term to the residual stream (Focal
    Guidance's Eq. 9/13 at ``inject_at="hidden"``) changes the hidden state of every
    later block too, so running the probes first on those blocks is not enough to keep
    the term out of their maps.  Before each such block's attention runs, the
    intervention *offers* a function that returns the attention's visual input computed
    from the hidden state minus the terms it carried in; the intrinsic probe *takes* it
    instead of the observed input.  Offers are keyed by the attention module, so the
    same layer index in two experts never mixes, and the intervention withdraws an
    offer nobody took once the attention has run (no tensor outlives its block).
    """

    def __init__(self) -> None:
        self._offers: dict[int, Callable[[], Any]] = {}

    def offer(self, attention: Any, compute: Callable[[], Any]) -> None:
        """``compute()`` returns the attention's visual input (same shape) without the carried terms."""
        self._offers[id(attention)] = compute

    def take(self, attention: Any) -> Any | None:
        """The unguided visual input of ``attention``'s current call, or None when nothing was carried in."""
        compute = self._offers.pop(id(attention), None)
        return None if compute is None else compute()

    def withdraw(self, attention: Any) -> None:
        self._offers.pop(id(attention), None)

    def __len__(self) -> int:
        return len(self._offers)


class Handle(Protocol):
    def remove(self) -> None: ...


class Intervention(Protocol):
    """An object that changes a pipeline for one run and restores it afterwards."""

    name: str

    def apply(self, inputs: RunInputs) -> Handle:
        """Validate against the run (raising usage errors), install hooks, return a remover."""

    def touched_layers(self) -> list[int]:
        """Blocks whose hidden state or values the intervention changes.

        The recorder stores their post-intervention maps separately
        (``similarity_injected``), so the primary maps never credit the intervention with
        its own additive terms.
        """

    # Optional: ``carried_layers(num_layers) -> list[int]``, the blocks whose *input*
    # hidden state carries the intervention's additive terms from earlier blocks.  The
    # recorder removes those terms from their intrinsic maps through
    # ``RunInputs.intrinsic`` and stores the carried view as ``similarity_injected``.

    def to_dict(self) -> dict[str, Any]:
        """The full configuration, stored verbatim in the run's attrs."""


def available() -> list[str]:
    """Names of the installed interventions (:data:`layerscope.registry.INTERVENTIONS`)."""
    from layerscope.registry import INTERVENTIONS

    return INTERVENTIONS.names()


def load_intervention(name: str, **options: Any) -> Intervention:
    """Create the intervention registered as ``name`` with ``options`` (e.g. ranking, config)."""
    from layerscope.registry import INTERVENTIONS

    if name not in INTERVENTIONS:
        names = ", ".join(available()) or "none installed"
        raise InterventionError(f"unknown intervention {name!r}; available: {names}")
    return INTERVENTIONS.load(name)(**options)
