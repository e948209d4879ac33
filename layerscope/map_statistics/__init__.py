"""Map statistics: one file each, registered in :data:`layerscope.registry.STATISTICS`.

A statistic turns each (H, W) similarity map into one number per output it names
(Moran's I gives ``moran_i`` and its z, ``moran_z``); :func:`layerscope.metrics.compute_metrics`
computes every registered statistic in one pass over a store and writes each output back
as a variable of the same name.  Adding one is one module with a :class:`MapStatistic`
plus one line in the registry (or an entry point in group ``layerscope.statistics``).
"""

from typing import Any

from layerscope.map_statistics.base import MapStatistic

__all__ = ["MapStatistic", "registered", "variables"]


def registered() -> list[Any]:
    """The registered :class:`MapStatistic` objects, in registry order."""
    from layerscope.registry import STATISTICS

    return list(STATISTICS.load_all().values())


def variables() -> tuple[str, ...]:
    """Every variable the registered statistics write (``moran_i``, ``moran_z``, ``std``, ``rms``, ...)."""
    return tuple(name for statistic in registered() for name in statistic.outputs)
