"""`layerscope eval` end to end (quick), on the tiny random model."""

from __future__ import annotations

import json

from layerscope.cli import main


def test_quick_eval_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--quick", "--model", "random", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["model"]["weights"] == "random"
    baseline = data["results"]["baseline"]
    assert baseline["overall"]["count"] == 6 and len(baseline["scores"]) == 6
    assert set(baseline["per_dimension"]) == {"dynamic_attribute", "motion", "interaction"}
    # random weights cannot follow an instruction; consistency is measured against the real reference
    assert baseline["overall"]["all_correct"] == 0.0
    assert 0.0 < baseline["overall"]["first_frame_consistency"] < 1.0
    # the same prompts scored on known videos: the ceiling and the chance level
    references = data["reference_points"]
    assert references["ground truth"]["overall"]["all_correct"] == 1.0
    assert references["static"]["overall"]["all_correct"] == 0.0
    assert references["ground truth"]["overall"]["count"] == 6
    printed = capsys.readouterr().out
    assert "| baseline |" in printed and "| ground truth | 1.000 | 1.000 | 1.000 | 1.000 |" in printed
