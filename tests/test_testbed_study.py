"""examples/testbed_study.py: which model and layers Table 3 uses, from the planted-truth rankings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _write(directory: Path, name: str, significant: bool, verdict: str) -> None:
    (directory / f"ranking-{name}.json").write_text(json.dumps({"significant": significant, "verdict": verdict}))


def test_table3_uses_the_shipped_models_band_when_it_is_significant(tmp_path, example_script):
    _write(tmp_path, "default", True, "weak band 5-7 (p=0.001)")
    _write(tmp_path, "planted", True, "weak band 4-7 (p=0.001)")
    target = example_script("testbed_study").table3_target(tmp_path)
    assert target["model"] == "default" and target["ranking"] == str(tmp_path / "ranking-default.json")
    assert "weak band 5-7" in target["why"]


def test_table3_falls_back_to_the_planted_model_without_a_band(tmp_path, example_script):
    _write(tmp_path, "default", False, "no significant weak band (p=0.4)")
    _write(tmp_path, "planted", True, "weak band 4-8 (p=0.001)")
    target = example_script("testbed_study").table3_target(tmp_path)
    assert target["model"] == str(tmp_path / "planted")
    assert target["ranking"] == str(tmp_path / "ranking-planted.json")
    assert "no significant weak band (p=0.4)" in target["why"] and "weak band 4-8" in target["why"]


def test_table3_refuses_when_no_ranking_has_a_band(tmp_path, example_script):
    _write(tmp_path, "default", False, "no significant weak band (p=0.4)")
    _write(tmp_path, "planted", False, "no significant weak band (p=0.2)")
    with pytest.raises(SystemExit, match="--layers"):
        example_script("testbed_study").table3_target(tmp_path)


def test_table3_script_needs_exactly_one_way_to_name_layers(capsys, example_script):
    table3 = example_script("table3")
    for argv in ([], ["--ranking", "r.json", "--layers", "4-7"]):
        with pytest.raises(SystemExit) as exit_info:
            table3.main(argv)
        assert exit_info.value.code == 2
        assert "--ranking R.json (its weak band) or --layers L-M" in capsys.readouterr().err
