"""What every map statistic declares."""

from __future__ import annotations

from typing import Any


class MapStatistic:
    """Outputs (variable names, first = the statistic itself), labels, and the computation."""

    #: the variables this statistic writes, e.g. ("moran_i", "moran_z"); the first is ranked
    outputs: tuple[str, ...] = ()
    #: one long name per output, stored as the variable's ``long_name``
    long_names: tuple[str, ...] = ()
    #: short column label in tables
    label: str = ""
    #: may ``layerscope rank --metric`` rank layers by the first output
    rankable: bool = True

    def compute(self, block: Any, transformation: str) -> dict[str, Any]:
        """``block`` (..., H, W) float maps -> {output name: (...) float64}."""
        raise NotImplementedError
