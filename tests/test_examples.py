"""The examples stay runnable: the full paper loop and the analysis notebook."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import pytest

import layerscope
import layerscope_testbed as testbed

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_ID = testbed.model_info(testbed.shipped_model_dir())["model_id"]


@pytest.fixture(scope="module")
def loop_dir(tmp_path_factory, model_dir):
    out = tmp_path_factory.mktemp("loop")
    argv = sys.argv
    sys.argv = ["focal_guidance.py", "--out-dir", str(out), "--model", "random", "--frames", "5", "--steps", "3"]
    sys.argv += ["--weak-layers", "2-4"]  # one run carries no significant band: the layers are forced
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(ROOT / "examples" / "focal_guidance.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert done.value.code == 0
    return out


@pytest.mark.slow
def test_focal_guidance_loop_writes_two_complete_stores_and_a_report(loop_dir):
    base = layerscope.open_run(loop_dir / "baseline.zarr")
    guided = layerscope.open_run(loop_dir / "focal_guidance.zarr")
    assert base.attrs["status"] == guided.attrs["status"] == "complete"
    assert base.attrs["intervention"] == "none"
    assert guided.attrs["intervention"]["mode"] == "fsg+cache"
    assert guided.attrs["intervention"]["weak_layers"] == [2, 3, 4]
    assert (loop_dir / "ranking.json").exists()
    html = (loop_dir / "compare.html").read_text()
    assert "LayerScope comparison" in html and 'id="delta"' in html


@pytest.mark.slow
def test_analysis_notebook_runs(loop_dir):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "examples" / "analysis.ipynb", as_version=4)
    os.environ["LAYERSCOPE_RUN_DIR"] = str(loop_dir)
    try:
        NotebookClient(
            notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
        ).execute()
    finally:
        os.environ.pop("LAYERSCOPE_RUN_DIR", None)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook draws its figures"


@pytest.mark.slow
def test_table3_quick_writes_four_rows_with_intervals_and_paired_tests(tmp_path, model_dir):
    import json
    import subprocess

    from layerscope_testbed.synthetic import write_synthetic_run

    # any ranking of the shipped model's 12 layers with a band; here one planted in synthetic stores
    stores = [
        write_synthetic_run(tmp_path / f"r{i}.zarr", seed=i, layers=12, steps=2, model_id=SHIPPED_ID) for i in range(10)
    ]
    from layerscope.ranking import rank_stores

    ranking = rank_stores(stores)
    assert ranking.weak_layers == [4, 5, 6, 7]  # 10 runs: the fewest that carry a verdict
    ranking.model.update({"grid": None, "num_layers": 12})
    path = ranking.save(tmp_path / "ranking.json")
    out = tmp_path / "t3"
    script = ROOT / "examples" / "table3.py"
    done = subprocess.run([sys.executable, str(script), "--ranking", str(path), "--out-dir", str(out), "--quick"],
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads((out / "table3.json").read_text())
    assert list(data["rows"]) == ["baseline", "FG zero-shot", "post-training only", "post-training + FG"]
    for row in data["rows"].values():
        assert len(row["outcomes"]) == 6 and all(len(r) == 2 for r in row["outcomes"])
        assert len(row["overall"]["wilson"]) == 2
    for comparison in data["comparisons"].values():
        assert 0.0 <= comparison["overall"]["p_value"] <= 1.0
    assert "| post-training + FG |" in (out / "table3.md").read_text()
