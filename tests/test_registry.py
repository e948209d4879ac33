"""One extension mechanism: every open set is a Registry filled by built-ins and entry points.

The decisive test adds a probe kind from *outside* the package, the way a third party
would (one module plus one entry point), and records with it.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

from layerscope.registry import INTERVENTIONS, JUDGES, MODEL_FAMILIES, PROBES, Registry, RegistryError

PLUGIN = '''
"""A third-party probe kind: the hidden state's norm, one map per keyword (no text involved)."""
from layerscope.probe_kinds import ProbeKind


class NormProbe(ProbeKind):
    name = "norm"
    summary = "|z(u, v)|"

    def maps(self, probe, scratch, grid):
        norms = scratch["visual"].float().norm(dim=-1).reshape(grid)
        return norms.expand(len(probe.config.keyword_tokens), *grid).clone()


NORM = NormProbe()
'''


def _with_entry_point(monkeypatch, group: str, name: str, value: str) -> None:
    real = metadata.entry_points

    def entry_points(**selection):
        found = list(real(**selection))
        if selection.get("group") == group:
            found.append(metadata.EntryPoint(name=name, value=value, group=group))
        return found

    monkeypatch.setattr(metadata, "entry_points", entry_points)


def test_every_open_set_lists_its_members_without_importing_torch():
    code = (
        "import sys; from layerscope.registry import PROBES, JUDGES, MODEL_FAMILIES, INTERVENTIONS; "
        "print([r.names() for r in (PROBES, JUDGES, MODEL_FAMILIES, INTERVENTIONS)], 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
    assert PROBES.names()[:5] == ["hidden", "output", "attention", "contrastive", "influence"]
    assert {"vlm", "shapes"} <= set(JUDGES.names())  # shapes comes from the testbed's entry point
    assert MODEL_FAMILIES.names()[:2] == ["wan", "hunyuan-video"]
    assert "focal-guidance" in INTERVENTIONS.names()


def test_unknown_and_broken_members_are_one_line(monkeypatch):
    with pytest.raises(RegistryError, match=r"unknown probe kind 'nope'; choose one of hidden, output"):
        PROBES.load("nope")
    _with_entry_point(monkeypatch, "layerscope.judges", "broken", "no_such_module_xyz:factory")
    with pytest.raises(RegistryError, match=r"judge 'broken' \(no_such_module_xyz:factory\) failed to load"):
        JUDGES.load("broken")
    assert Registry("nothing").names() == []


def test_a_probe_kind_from_another_package_records(tiny_pipe, example, tmp_path, monkeypatch):
    import layerscope
    from layerscope.recording import record

    (tmp_path / "third_party_probe.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    _with_entry_point(monkeypatch, "layerscope.probes", "norm", "third_party_probe:NORM")
    assert "norm" in PROBES.names()
    store = tmp_path / "norm.zarr"
    record(tiny_pipe, store, dtype="float32", progress=False, probe="norm", layers="2", **example)
    ds = layerscope.open_run(store)
    assert ds.attrs["probe_kind"] == "norm"
    maps = ds.similarity.sel(layer=2).values  # (step, keyword, frame, y, x)
    assert np.isfinite(maps).all() and (maps > 0).all()
    np.testing.assert_array_equal(maps[:, 0], maps[:, 1])  # the same norm for every keyword


STATISTIC = '''
"""A third-party map statistic: each map's peak value."""
import numpy as np

from layerscope.map_statistics import MapStatistic


class Peak(MapStatistic):
    outputs = ("peak",)
    long_names = ("largest value of the map",)
    label = "peak"

    def compute(self, block, transformation):
        return {"peak": np.asarray(block, dtype=np.float64).max(axis=(-2, -1))}


PEAK = Peak()
'''


def test_a_map_statistic_from_another_package_is_computed_stored_and_ranked(tmp_path, monkeypatch):
    import layerscope
    from layerscope.metrics import ensure_metrics
    from layerscope.ranking import rank_stores
    from layerscope_testbed.synthetic import write_synthetic_run

    (tmp_path / "third_party_statistic.py").write_text(STATISTIC)
    monkeypatch.syspath_prepend(str(tmp_path))
    _with_entry_point(monkeypatch, "layerscope.statistics", "peak", "third_party_statistic:PEAK")
    stores = [write_synthetic_run(tmp_path / f"r{i}.zarr", seed=i) for i in range(3)]
    ds = ensure_metrics(stores[0])
    maps = layerscope.open_run(stores[0])["similarity"].values
    np.testing.assert_allclose(ds["peak"].values, maps.max(axis=(-2, -1)), rtol=0, atol=1e-7)
    assert ds["peak"].attrs["long_name"] == "largest value of the map" and "moran_i" in ds
    ranking = rank_stores([str(s) for s in stores], metric="peak", progress=False)
    assert ranking.metric == "peak" and "peak" in ranking.by_metric
