"""A store appears under its name only once it is marked as a LayerScope store."""

from __future__ import annotations

import json

import pytest
import xarray as xr

from layerscope.store import is_store
from layerscope_testbed.synthetic import write_synthetic_run


def test_a_recording_killed_while_creating_its_store_leaves_nothing_under_the_name(tmp_path, monkeypatch):
    """xarray writes zarr.json before the attributes that mark a LayerScope store; a process
    killed in between used to leave a directory that every later run refused ("exists and is
    not a LayerScope store"), so a killed sweep could not resume."""
    real_to_zarr = xr.Dataset.to_zarr

    def killed_half_way(self, store, *args, **kwargs):
        store.mkdir(parents=True)
        (store / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
        raise KeyboardInterrupt  # stands in for SIGKILL at this point

    monkeypatch.setattr(xr.Dataset, "to_zarr", killed_half_way)
    path = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_run(path)
    assert not path.exists() and not (tmp_path / "run.zarr.lock").exists()

    monkeypatch.setattr(xr.Dataset, "to_zarr", real_to_zarr)
    write_synthetic_run(path)  # the rerun records under the same name
    assert is_store(path)
    assert [p.name for p in tmp_path.iterdir()] == ["run.zarr"]
