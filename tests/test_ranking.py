"""Weak-layer selection on constructed curves, metrics written back, and `layerscope rank`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import layerscope
from layerscope.cli import main
from layerscope.metrics import IncompleteStoreError, ensure_metrics, morans_i
from layerscope.ranking import RankingError, rank_stores, select_weak


def test_bottom_k_and_threshold_force_a_choice():
    curve = np.array([0.5, 0.1, 0.3, 0.05, 0.9])
    assert select_weak(curve, "bottom-k", k=2)[0] == [1, 3]
    assert select_weak(curve, "threshold", threshold=0.31)[0] == [1, 2, 3]
    with pytest.raises(RankingError):
        select_weak(curve, "bottom-k")
    # a layer without any finite value is never chosen
    assert select_weak(np.array([np.nan, 0.2, 0.3]), "bottom-k", k=1)[0] == [1]


def test_metrics_written_back_and_reopened(recorded_run, tmp_path):
    path, _ = recorded_run
    copy = tmp_path / "m.zarr"
    shutil.copytree(path, copy)
    ds = ensure_metrics(copy)
    reopened = layerscope.open_run(copy)
    assert reopened.moran_i.dims == ("step", "layer", "keyword", "frame")
    assert reopened.moran_i.attrs["transformation"] == "b"
    assert reopened.attrs["status"] == "complete" and reopened.attrs["prompt"] == ds.attrs["prompt"]
    maps = reopened.similarity.values
    np.testing.assert_allclose(reopened.moran_i.values, morans_i(maps), rtol=0, atol=1e-12)
    # row-standardised on request replaces them, and says so
    again = ensure_metrics(copy, "r")
    assert again.moran_i.attrs["transformation"] == "r"
    np.testing.assert_allclose(again.moran_i.values, morans_i(maps, "r"), rtol=0, atol=1e-12)
    # the accessor reads the stored values
    assert reopened.layerscope.std().identical(reopened["std"])


def test_incomplete_store_is_refused_unless_allowed(recorded_run, tmp_path):
    import zarr

    path, _ = recorded_run
    copy = tmp_path / "cut.zarr"
    shutil.copytree(path, copy)
    group = zarr.open_group(copy, mode="r+")
    group.attrs.update({"status": "interrupted", "steps_written": [0]})
    with pytest.raises(IncompleteStoreError, match="1 of 3 steps"):
        ensure_metrics(copy)
    assert "moran_i" in ensure_metrics(copy, allow_partial=True)


def test_multi_run_ranking_averages_runs(recorded_run, tiny_pipe, example, tmp_path):
    from layerscope.recording import record

    path, _ = recorded_run
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    shutil.copytree(path, a)
    record(tiny_pipe, b, seed=3, dtype="float32", progress=False, **example)
    ranking = rank_stores([a, b])
    single = [rank_stores([p]).layers for p in (a, b)]
    for row, row_a, row_b in zip(ranking.layers, *single):
        assert row["moran_i"] == pytest.approx((row_a["moran_i"] + row_b["moran_i"]) / 2, abs=1e-12)
    assert len(ranking.runs) == 2
    # the accessor on stacked runs gives the same numbers
    stacked = layerscope.open_runs([a, b])
    via_accessor = stacked.layerscope.rank()
    assert [r["moran_i"] for r in via_accessor.layers] == pytest.approx([r["moran_i"] for r in ranking.layers])


def test_rank_cli_writes_json_with_verdict(recorded_run, tmp_path, capsys):
    path, _ = recorded_run
    copy = tmp_path / "c.zarr"
    shutil.copytree(path, copy)
    out = tmp_path / "ranking.json"
    assert main(["rank", str(copy), "--out", str(out), "--steps", "0:2"]) == 0
    text = out.read_text()
    assert "NaN" not in text  # strict JSON
    data = json.loads(text)
    for key in ("weak_layers", "verdict", "p_value", "alpha", "n_runs", "layers", "method", "params", "runs"):
        assert key in data
    assert data["n_runs"] == 1 and data["interval_unit"] == "step" and data["alpha"] == 0.05
    assert data["params"]["steps"] == "0:2" and data["runs"][0]["steps"] == [0, 1]
    assert data["model"]["weights"] == "random"
    for row in data["layers"]:
        low, high = row["ci"]
        assert low <= row["moran_i"] <= high and row["p_in_band"] is None  # no band, so nothing is in one
    # one run: no verdict at all (its steps are not independent replicates)
    assert data["p_value"] is None and data["band"] is None and data["weak_layers"] == []
    assert data["verdict"] == "too few runs for a verdict (n_runs=1, need >= 10)"
    printed = capsys.readouterr().out
    assert f"verdict (moran_i): {data['verdict']}" in printed
    assert "one run gives no verdict" in printed and "p=" not in printed
    assert main(["rank", str(copy), "--method", "threshold"]) == 2
    assert main(["rank", str(copy), "--alpha", "1.5"]) == 2


def test_layers_to_guide_is_the_band_or_the_forced_layers_and_refuses_otherwise(base_ranking):
    """One rule for Focal Guidance and finetune: forced layers win, else the verdict's band, else one line."""
    import dataclasses

    from layerscope.ranking import Ranking

    forced_by_method = Ranking.load(base_ranking)  # bottom-k names layers although one run has no verdict
    assert forced_by_method.layers_to_guide() == forced_by_method.weak_layers != []
    ranking = dataclasses.replace(forced_by_method, weak_layers=[])
    assert ranking.layers_to_guide([5, 3, 3]) == [3, 5]
    with pytest.raises(RankingError) as refused:
        ranking.layers_to_guide(source="--ranking r.json", hint="pass --layers {A}-{B}")
    candidate = ranking.candidate_layers()
    message = str(refused.value)
    assert message.startswith(f"--ranking r.json: {ranking.verdict}") and "nothing to guide" in message
    assert message.endswith(f"pass --layers {candidate[0]}-{candidate[-1]}")
