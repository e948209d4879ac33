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


def _row(outcomes: list[list[int]], steps: int = 12) -> dict:
    """An eval row as `layerscope eval` writes it, for prompts of alternating dimensions."""
    dimensions = ["motion", "interaction"] * (len(outcomes) // 2)
    rate = sum(map(sum, outcomes)) / sum(map(len, outcomes))
    entry = {"all_correct": rate, "ci": [0.0, 1.0], "first_frame_consistency": 0.9}
    return {
        "split": "heldout", "count": len(outcomes), "seed": 0, "seeds": [0, 1], "steps": steps, "guidance": 5.0,
        "outcomes": outcomes, "dimensions": dimensions, "overall": entry,
        "per_dimension": {d: dict(entry) for d in set(dimensions)},
    }  # fmt: skip


def _planted_truth_dir(directory: Path, band: list[int]) -> dict:
    planted = {"planted_layers": [4, 5, 6, 7], "rankings": {"planted": {"band": band}}}
    (directory / "planted_truth.json").write_text(json.dumps(planted))
    results = {"no guidance": _row([[0, 1], [1, 1]]), "FG planted band": _row([[1, 1], [1, 0]]),
               "FG random band": _row([[0, 0], [0, 0]])}  # fmt: skip
    (directory / "eval.json").write_text(json.dumps({"results": results}))
    return results


def test_table3_reuses_the_planted_truth_eval_when_model_and_band_are_the_same(tmp_path, example_script):
    results = _planted_truth_dir(tmp_path, band=[4, 5, 6, 7])
    planted_target = {"model": str(tmp_path / "planted")}
    path = example_script("testbed_study").reuse_planted_eval(tmp_path, planted_target, tmp_path / "table3")
    reused = json.loads(path.read_text())["results"]
    assert reused == {"baseline": results["no guidance"], "focal-guidance": results["FG planted band"]}


def test_table3_runs_its_own_rows_when_they_would_differ(tmp_path, example_script):
    study = example_script("testbed_study")
    _planted_truth_dir(tmp_path, band=[4, 5, 6])  # the ranking found another band: other layers guided
    assert study.reuse_planted_eval(tmp_path, {"model": str(tmp_path / "planted")}, tmp_path / "t3") is None
    _planted_truth_dir(tmp_path, band=[4, 5, 6, 7])
    assert study.reuse_planted_eval(tmp_path, {"model": "default"}, tmp_path / "t3") is None
    assert not (tmp_path / "t3").exists()


def _finished_table3_dir(out: Path, zero_shot_steps: int, train_steps: int = 1000) -> None:
    for name in ("ft-fg", "ft-nofg"):
        (out / name).mkdir(parents=True)
        info = {"clips": 64, "config": {"steps": train_steps, "lr": 1e-4}}  # table3.py's defaults but the steps
        (out / name / "layerscope_finetune.json").write_text(json.dumps(info))
    zero_shot = {"baseline": _row([[0, 1], [0, 0]], zero_shot_steps), "focal-guidance": _row([[1, 1], [0, 0]])}
    (out / "eval-default.json").write_text(json.dumps({"results": zero_shot}))
    (out / "eval-ft-nofg.json").write_text(json.dumps({"results": {"baseline": _row([[1, 1], [1, 0]])}}))
    fine_tuned_fg = {"baseline": _row([[1, 1], [1, 0]]), "focal-guidance": _row([[1, 1], [1, 1]])}
    (out / "eval-ft-fg.json").write_text(json.dumps({"results": fine_tuned_fg}))


def test_table3_pairs_rows_of_the_same_protocol(tmp_path, example_script):
    _finished_table3_dir(tmp_path, zero_shot_steps=12)
    assert example_script("table3").main(["--layers", "4-7", "--out-dir", str(tmp_path)]) == 0
    table = json.loads((tmp_path / "table3.json").read_text())
    # post-training + FG passes 4 of 4 against the baseline's 1 of 4: +0.75 overall
    assert table["comparisons"]["post-training + FG"]["overall"]["difference"] == pytest.approx(0.75)
    assert table["comparisons"]["FG zero-shot"]["motion"]["difference"] == pytest.approx(0.5)


def test_table3_refuses_rows_run_with_other_steps(tmp_path, example_script):
    _finished_table3_dir(tmp_path, zero_shot_steps=4)
    with pytest.raises(SystemExit, match=r"different prompt sets or settings: baseline \(.*steps=4"):
        example_script("table3").main(["--layers", "4-7", "--out-dir", str(tmp_path)])


def test_table3_refuses_a_finished_finetune_of_other_settings(tmp_path, example_script):
    """A rerun with a new --train-steps must not report the old post-training under the new settings."""
    _finished_table3_dir(tmp_path, zero_shot_steps=12, train_steps=50)
    table3 = example_script("table3")
    with pytest.raises(SystemExit, match="ft-fg was fine-tuned with steps 50, lr 0.0001, clips 64, this run asks"):
        table3.main(["--layers", "4-7", "--out-dir", str(tmp_path)])  # default 1000 steps
    assert table3.main(["--layers", "4-7", "--out-dir", str(tmp_path), "--train-steps", "50"]) == 0
