"""How ``layerscope record`` finds and applies interventions, without importing them.

An intervention package registers a factory under the ``layerscope.interventions``
entry-point group (``fg_intervene`` registers ``focal-guidance``).  LayerScope only
knows this protocol: the dependency points from interventions to LayerScope, never
back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
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

    def to_dict(self) -> dict[str, Any]:
        """The full configuration, stored verbatim in the run's attrs."""


def available() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_intervention(name: str, **options: Any) -> Intervention:
    """Create the intervention registered as ``name`` with ``options`` (e.g. ranking, config)."""
    entry_points = available()
    if name not in entry_points:
        names = ", ".join(sorted(entry_points)) or "none installed"
        raise InterventionError(f"unknown intervention {name!r}; available: {names}")
    factory = entry_points[name].load()
    return factory(**options)
