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


def _bench_results(outcomes: list[list[int]], steps: int = 12) -> dict:
    """A `layerscope bench` results.json as far as Table 3 reads it, prompts of alternating dimensions."""
    from layerscope.bench.results import CONSISTENCY, RESULTS_FORMAT

    dimensions = ["motion", "interaction"] * (len(outcomes) // 2)
    flat = [value for row in outcomes for value in row]

    def rate(rows):
        return {"all_correct": sum(sum(outcomes[i]) for i in rows) / sum(len(outcomes[i]) for i in rows),
                "ci": [0.0, 1.0]}  # fmt: skip

    summary = {
        "prompt_ids": [f"p{i}" for i in range(len(outcomes))], "seeds": [0, 1], "outcomes": outcomes,
        "dimensions": dimensions, "overall": rate(range(len(outcomes))),
        "per_dimension": {d: rate([i for i, x in enumerate(dimensions) if x == d]) for d in set(dimensions)},
        "consistency_values": {name: [float("nan")] * len(flat) for name in CONSISTENCY},
    }  # fmt: skip
    return {"format": RESULTS_FORMAT, "settings": {"steps": steps}, "summary": summary}


def _write_eval(directory: Path, variants: dict) -> None:
    for variant, results in variants.items():
        (directory / variant).mkdir(parents=True)
        (directory / variant / "results.json").write_text(json.dumps(results))


def _finished_table3_dir(out: Path, zero_shot_steps: int, train_steps: int = 1000) -> None:
    for name in ("ft-fg", "ft-nofg"):
        (out / name).mkdir(parents=True)
        info = {"clips": 64, "config": {"steps": train_steps, "lr": 1e-4}}  # table3.py's defaults but the steps
        (out / name / "layerscope_finetune.json").write_text(json.dumps(info))
    zero_shot = {"baseline": _bench_results([[0, 1], [0, 0]], zero_shot_steps),
                 "focal-guidance": _bench_results([[1, 1], [0, 0]])}  # fmt: skip
    _write_eval(out / "eval-default", zero_shot)
    _write_eval(out / "eval-ft-nofg", {"baseline": _bench_results([[1, 1], [1, 0]])})
    _write_eval(out / "eval-ft-fg", {"focal-guidance": _bench_results([[1, 1], [1, 1]])})


def test_table3_pairs_rows_of_the_same_protocol(tmp_path, example_script):
    _finished_table3_dir(tmp_path, zero_shot_steps=12)
    assert example_script("table3").main(["--layers", "4-7", "--out-dir", str(tmp_path)]) == 0
    table = json.loads((tmp_path / "table3.json").read_text())
    # post-training + FG passes 4 of 4 against the baseline's 1 of 4: +0.75 overall
    assert table["comparisons"]["post-training + FG"]["overall"]["difference"] == pytest.approx(0.75)
    assert table["comparisons"]["FG zero-shot"]["motion"]["difference"] == pytest.approx(0.5)


def test_table3_refuses_rows_run_with_other_steps(tmp_path, example_script):
    _finished_table3_dir(tmp_path, zero_shot_steps=4)
    with pytest.raises(SystemExit, match=r"different prompt sets or settings: baseline \(.*steps 4"):
        example_script("table3").main(["--layers", "4-7", "--out-dir", str(tmp_path)])


def test_table3_refuses_a_finished_finetune_of_other_settings(tmp_path, example_script):
    """A rerun with a new --train-steps must not report the old post-training under the new settings."""
    _finished_table3_dir(tmp_path, zero_shot_steps=12, train_steps=50)
    table3 = example_script("table3")
    with pytest.raises(SystemExit, match="ft-fg was fine-tuned with steps 50, lr 0.0001, clips 64, this run asks"):
        table3.main(["--layers", "4-7", "--out-dir", str(tmp_path)])  # default 1000 steps
    assert table3.main(["--layers", "4-7", "--out-dir", str(tmp_path), "--train-steps", "50"]) == 0
