"""Root mean square of each map: a magnitude, for maps that are zero where the text is ignored."""

from __future__ import annotations

from layerscope.map_statistics.base import MapStatistic


class RootMeanSquare(MapStatistic):
    outputs = ("rms",)
    long_names = ("root mean square of the map",)
    label = "RMS"

    def compute(self, block, transformation):
        from layerscope.metrics import rms_map

        return {"rms": rms_map(block)}


RMS = RootMeanSquare()
