"""Moran's I of each map (paper: spatial structure; queen weights) and its randomisation z."""

from __future__ import annotations

from layerscope.map_statistics.base import MapStatistic


class MoranI(MapStatistic):
    outputs = ("moran_i", "moran_z")
    long_names = ("Moran's I", "Moran's I z (randomisation)")
    label = "Moran"

    def compute(self, block, transformation):
        from layerscope.metrics import moran_inference

        result = moran_inference(block, transformation)
        return {"moran_i": result.I, "moran_z": result.z_rand}


MORAN_I = MoranI()
