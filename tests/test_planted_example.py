"""examples/planted_truth.py: its helpers by hand, and the --quick study end to end (slow)."""

from __future__ import annotations

import json

import pytest


def test_jaccard_and_random_band(example_script):
    example = example_script("planted_truth")
    assert example.jaccard([5], [4, 5, 6, 7]) == 0.25
    assert example.jaccard([4, 5, 6, 7], [4, 5, 6, 7]) == 1.0
    assert example.jaccard([3, 4], [4, 5, 6]) == 0.25
    # 12 layers, 4-7 planted: only 0-3 and 8-11 are as wide and disjoint
    drawn = {tuple(example.random_band(12, 4, [4, 5, 6, 7], seed)) for seed in range(20)}
    assert drawn == {(0, 1, 2, 3), (8, 9, 10, 11)}
    assert example.random_band(12, 4, [4, 5, 6, 7], 0) == example.random_band(12, 4, [4, 5, 6, 7], 0)


@pytest.mark.slow
def test_quick_study_writes_its_json(tmp_path, example_script):
    example = example_script("planted_truth")
    assert example.main(["--out-dir", str(tmp_path), "--quick"]) == 0
    result = json.loads((tmp_path / "planted_truth.json").read_text())
    assert result["planted_layers"] == [4, 5, 6, 7]
    assert set(result["rankings"]) == {"planted", "default"}
    for ranking in result["rankings"].values():
        assert ranking["n_runs"] == 10 and 0 < ranking["p_value"] <= 1  # 10 prompts: enough for a verdict
    assert set(result["eval"]["table"]) == {"no guidance", "FG planted band", "FG random band"}
    assert "FG planted - FG random" in result["eval"]["comparisons"]
