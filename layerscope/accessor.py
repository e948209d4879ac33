"""``ds.layerscope.*``: the analysis API for notebooks, on any opened store.

Registered when ``layerscope.open_run``/``open_runs`` is first called (or on
``import layerscope.accessor``); every method returns labelled xarray objects.
"""

from __future__ import annotations

from typing import Any

import xarray as xr


@xr.register_dataset_accessor("layerscope")
class LayerScopeAccessor:
    def __init__(self, dataset: xr.Dataset):
        self._ds = dataset

    def metrics(self, transformation: str = "b", variable: str = "similarity") -> xr.Dataset:
        """Lazy ``moran_i``, ``moran_z``, ``std``, ``rms`` (step, layer, keyword, frame)."""
        from layerscope.metrics import compute_metrics

        return compute_metrics(self._ds, transformation, variable)

    def morans_i(self, transformation: str = "b") -> xr.DataArray:
        """Moran's I per map; stored values are reused when they match ``transformation``."""
        if "moran_i" in self._ds and self._ds["moran_i"].attrs.get("transformation") == transformation:
            return self._ds["moran_i"]
        return self.metrics(transformation)["moran_i"]

    def std(self) -> xr.DataArray:
        """Std of each min-max-normalised map (paper Eq. 5)."""
        if "std" in self._ds:
            return self._ds["std"]
        return self.metrics()["std"]

    def rank(self, **kwargs: Any) -> Any:
        """A :class:`layerscope.ranking.Ranking` of this run (or stacked runs)."""
        from layerscope.ranking import rank_datasets

        ds = self._ds
        transformation = kwargs.pop("transformation", "b")
        stored = ds["moran_i"].attrs.get("transformation") if "moran_i" in ds else None
        if stored != transformation or "std" not in ds:
            ds = ds.assign(self.metrics(transformation).data_vars)
        if "run" in ds.dims:
            return rank_datasets([ds.isel(run=i) for i in range(ds.sizes["run"])], **kwargs)
        return rank_datasets([ds], **kwargs)

    def plot_layers(self, metrics: tuple[str, ...] = ("moran_i", "std"), **rank_kwargs: Any) -> Any:
        """Figure-2-style curves: mean per layer with the ranking's 95% CI error bars.

        The bars are :meth:`rank`'s intervals (bootstrap over runs for stacked runs, over
        steps for one run), not the spread of the maps, so they say how well a mean is known.
        """
        from layerscope.report.figures import layer_curves

        ranking = self.rank(**rank_kwargs)
        label = f"{ranking.n_runs} runs" if ranking.n_runs > 1 else "one run (CIs over steps)"
        return layer_curves([ranking], [label], weak_layers=ranking.weak_layers, metrics=metrics)
