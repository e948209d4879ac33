"""Std of each map after min-max normalisation (paper Eq. 5)."""

from __future__ import annotations

from layerscope.map_statistics.base import MapStatistic


class NormalisedStd(MapStatistic):
    outputs = ("std",)
    long_names = ("std of min-max-normalised map",)
    label = "std"

    def compute(self, block, transformation):
        from layerscope.metrics import std_normalized

        return {"std": std_normalized(block)}


STD = NormalisedStd()
