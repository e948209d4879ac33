"""`layerscope eval` end to end (quick), on the tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from layerscope.cli import main


@pytest.mark.slow
def test_quick_eval_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--quick", "--model", "random", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["model"]["weights"] == "random"
    baseline = data["results"]["baseline"]
    assert baseline["overall"]["count"] == 6 and len(baseline["scores"]) == 6
    assert baseline["steps"] == 4
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
    # which step fails, per kind of question: the share matches the scores it summarises
    pushes = [s for s in baseline["scores"] if s["dimension"] == "interaction"]
    touched = np.mean([s["answers"][s["kinds"].index("contact")] for s in pushes])
    assert baseline["by_question"]["interaction"]["contact"] == pytest.approx(touched)
    assert set(baseline["by_question"]["motion"]) == {"present", "moved"}
    assert "| variant | dynamic_attribute: colour_at_end |" in printed
    # the table is written next to the JSON
    table = out.with_suffix(".md").read_text()
    assert "| baseline |" in table and "weights: random" in table
    # ...and the HTML section: every prompt x seed outcome of the JSON, the random-weights warning
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(out.with_suffix(".html").read_text(), "html.parser")
    grid = soup.select_one('table.outcomes[data-variant="baseline"]')
    cells = [[int(td["data-all-correct"]) for td in tr.select("td.outcome")] for tr in grid.select("tbody tr")]
    assert cells == baseline["outcomes"]
    assert [tr.select("td")[2].text for tr in grid.select("tbody tr")] == [s["prompt"] for s in baseline["scores"]]
    assert "random weights" in soup.select_one(".warning").text


@pytest.mark.slow
def test_quick_eval_with_focal_guidance(base_ranking, tmp_path):
    out = tmp_path / "eval.json"
    # random CLIP weights: no word clears the default tau_sel, so let every non-stopword through
    config = tmp_path / "fg.toml"
    config.write_text("[focal_guidance]\ntau_sel = -1.0\n")
    argv = ["eval", "--quick", "--model", "random", "--out", str(out), "--intervene-config", str(config)]
    forced = ["--fg-set", "weak_layers=[2,3,4]"]  # a one-run ranking need not name a band
    assert main([*argv, "--intervene", "focal-guidance", "--ranking", str(base_ranking), *forced]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"baseline", "focal-guidance"}
    baseline, guided = results["baseline"], results["focal-guidance"]
    assert guided["overall"]["count"] == 6
    assert [s["prompt"] for s in guided["scores"]] == [s["prompt"] for s in baseline["scores"]]
    # with every lambda 0 the guided pipeline is the baseline's: eval's FG path changes nothing else
    zero = ["--fg-set", "lambda_txt=0", "--fg-set", "lambda_lat=0", "--fg-set", "lambda_cache=0"]
    out0 = tmp_path / "eval0.json"
    argv0 = ["eval", "--quick", "--model", "random", "--out", str(out0), "--intervene-config", str(config)]
    assert main([*argv0, "--intervene", "focal-guidance", "--ranking", str(base_ranking), *zero, *forced]) == 0
    results0 = json.loads(out0.read_text())["results"]
    assert results0["focal-guidance"]["scores"] == results0["baseline"]["scores"] == baseline["scores"]
    # --skip-baseline: the same guided row alone (what Table 3 needs of the FG fine-tune), and a page for it
    out1 = tmp_path / "eval-fg-only.json"
    argv1 = ["eval", "--quick", "--model", "random", "--out", str(out1), "--intervene-config", str(config)]
    only_fg = ["--intervene", "focal-guidance", "--skip-baseline"]
    assert main([*argv1, *only_fg, "--ranking", str(base_ranking), *forced]) == 0
    only = json.loads(out1.read_text())
    assert set(only["results"]) == {"focal-guidance"} and only["comparisons"] == {}
    assert only["results"]["focal-guidance"]["scores"] == guided["scores"]
    from bs4 import BeautifulSoup

    page = BeautifulSoup(out1.with_suffix(".html").read_text(), "html.parser")
    variants = [row["data-variant"] for row in page.select("#summary tbody tr[data-variant]")]
    assert variants == ["focal-guidance"] and page.select_one("#comparisons") is None


def test_eval_refuses_a_ranking_of_another_model_before_generating(base_ranking, tmp_path, capsys):
    data = json.loads(base_ranking.read_text())
    data["model"]["model_id"] = "some-other-model"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    argv = ["eval", "--quick", "--model", "random", "--intervene", "focal-guidance", "--ranking", str(other)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "some-other-model" in err[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ranking", "r.json"], "need --intervene"),
        (["--quick", "--count", "3"], "--quick sets"),
        (["--quick", "--skip-baseline"], "add --intervene"),
    ],
)
def test_eval_usage_errors(argv, message, capsys):
    assert main(["eval", "--model", "random", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.slow
def test_eval_with_five_seeds_reports_intervals_and_a_paired_test(model_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    argv = ["eval", "--model", "random", "--count", "3", "--steps", "2", "--seeds", "0-1", "--out", str(out)]
    assert main([*argv, "--intervene", "focal-guidance", "--fg-set", "weak_layers=[2]", "--fg-set", "tau_sel=-1"]) == 0
    data = json.loads(out.read_text())
    baseline = data["results"]["baseline"]
    assert baseline["seeds"] == [0, 1] and len(baseline["scores"]) == 6
    assert [s["seed"] for s in baseline["scores"]] == [0, 0, 0, 1, 1, 1]
    assert len(baseline["outcomes"]) == 3 and all(len(row) == 2 for row in baseline["outcomes"])
    low, high = baseline["overall"]["wilson"]
    assert low == 0.0 and 0.3 < high < 0.5  # 0 of 6: Wilson (0, 0.390)
    comparison = data["comparisons"]["focal-guidance"]["overall"]
    assert comparison["prompts"] == 3 and 0.0 <= comparison["p_value"] <= 1.0
    assert "paired over prompt x seed" in capsys.readouterr().out


def _eval_file(path, outcomes, *, model="m", steps=12, prompts=("p0", "p1", "p2", "p3")):
    """A minimal `layerscope eval --out` file: what --compare reads (outcomes, prompts, protocol)."""
    dimensions = ["motion", "motion", "dynamic_attribute", "dynamic_attribute"]
    seeds = list(range(len(outcomes[0])))
    scores = [{"prompt": prompts[i], "seed": s} for s in seeds for i in range(len(outcomes))]
    run = {"split": "heldout", "count": len(outcomes), "seed": 0, "seeds": seeds, "steps": steps, "guidance": 5.0,
           "outcomes": outcomes, "dimensions": dimensions, "scores": scores}  # fmt: skip
    path.write_text(json.dumps({"model": {"model_id": model}, "results": {"baseline": run}}))
    return str(path)


def test_eval_compare_two_files_against_hand_values(tmp_path, capsys):
    """B passes 7 of 8 prompt x seeds where A passes 1: +0.75; every prompt moves the same way,
    so the exact sign-flip p over 4 prompts is 2/16; over the 2 motion prompts 2/4."""
    a = _eval_file(tmp_path / "a.json", [[0, 0], [0, 0], [0, 1], [0, 0]], model="old")
    b = _eval_file(tmp_path / "b.json", [[1, 1], [1, 1], [1, 1], [1, 0]], model="new")
    out = tmp_path / "cmp" / "cmp.json"
    assert main(["eval", "--compare", a, b, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert (data["a"], data["b"]) == ("old", "new")
    overall, motion = data["comparison"]["overall"], data["comparison"]["motion"]
    assert overall["difference"] == pytest.approx(0.75) and overall["p_value"] == pytest.approx(2 / 16)
    assert motion["difference"] == pytest.approx(1.0) and motion["p_value"] == pytest.approx(2 / 4)
    assert data["comparison"]["dynamic_attribute"]["difference"] == pytest.approx(0.5)
    assert "new - old | +0.750 (p=0.125)" in capsys.readouterr().out
    assert out.with_suffix(".md").read_text().startswith("B - A")


@pytest.mark.parametrize(
    "b_options, extra, message",
    [
        ({"steps": 4}, [], "differ in steps (12 vs 4)"),
        ({"prompts": ("p0", "p1", "p2", "other")}, [], "different prompts"),
        ({}, ["--variant", "focal-guidance"], "no variant 'focal-guidance'"),
        ({}, ["--quick"], "drop --quick"),
        ({}, ["--seeds", "0-4", "--model", "random"], "drop --model, --seeds"),
        ({}, ["--guidance", "4", "--split", "train", "--seed", "3"], "drop --split, --guidance, --seed"),
        ({}, ["--fg-mode", "fsg"], "drop --fg-mode"),
    ],
)
def test_eval_compare_refuses_unpaired_files_before_writing(tmp_path, capsys, b_options, extra, message):
    a = _eval_file(tmp_path / "a.json", [[0, 0], [0, 0], [0, 1], [0, 0]])
    b = _eval_file(tmp_path / "b.json", [[1, 1], [1, 1], [1, 1], [1, 0]], **b_options)
    out = tmp_path / "cmp.json"
    assert main(["eval", "--compare", a, b, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_eval_variant_needs_compare(capsys):
    assert main(["eval", "--quick", "--model", "random", "--variant", "focal-guidance"]) == 2
    assert "--variant qualifies two files under --compare" in capsys.readouterr().err


def test_eval_compare_names_a_file_that_is_not_an_eval(tmp_path, capsys):
    a = _eval_file(tmp_path / "a.json", [[0, 0], [0, 0], [0, 1], [0, 0]])
    (tmp_path / "notes.json").write_text('{"results": {}}')
    for bad, message in ((tmp_path / "missing.json", "no such eval file"), (tmp_path / "notes.json", "no results")):
        assert main(["eval", "--compare", a, str(bad)]) == 2
        assert message in capsys.readouterr().err


def test_eval_compare_across_settings_pairs_one_model_under_two_guidances(tmp_path, capsys):
    """A sampler comparison: same model, prompts and seeds, guidance 5 vs 8; B passes 3 more of 8 cells."""
    a = _eval_file(tmp_path / "a.json", [[0, 0], [0, 1], [1, 1], [0, 0]], model="m")
    b = _eval_file(tmp_path / "b.json", [[1, 0], [1, 1], [1, 1], [1, 0]], model="m")
    data = json.loads(Path(b).read_text())
    data["results"]["baseline"]["guidance"] = 8.0
    Path(b).write_text(json.dumps(data))
    assert main(["eval", "--compare", a, b]) == 2  # a model comparison refuses other settings...
    assert "pass --across-settings" in capsys.readouterr().err
    out = tmp_path / "cmp.json"
    assert main(["eval", "--compare", a, b, "--across-settings", "--out", str(out)]) == 0  # ...a sampler one pairs them
    result = json.loads(out.read_text())
    assert result["settings_compared"] == {"guidance": [5.0, 8.0]} and "guidance" not in result["protocol"]
    assert result["comparison"]["overall"]["difference"] == pytest.approx(3 / 8)
    assert "| guidance 8 - guidance 5 | +0.375" in capsys.readouterr().out


def test_eval_compare_across_settings_refuses_two_models(tmp_path, capsys):
    a = _eval_file(tmp_path / "a.json", [[0, 0], [0, 1], [1, 1], [0, 0]], model="old")
    b = _eval_file(tmp_path / "b.json", [[1, 0], [1, 1], [1, 1], [1, 0]], model="new", steps=4)
    assert main(["eval", "--compare", a, b, "--across-settings"]) == 2
    assert "compares sampler settings on one model, but A is old and B new" in capsys.readouterr().err
    assert main(["eval", "--quick", "--model", "random", "--across-settings"]) == 2
    assert "--across-settings qualifies two files" in capsys.readouterr().err


class _Vae(__import__("torch").nn.Module):
    """A VAE stand-in: ``decode(encode(x))`` is ``x`` (identity) or flat grey (a collapsed VAE)."""

    def __init__(self, collapsed: bool):
        import torch

        super().__init__()
        self.collapsed = collapsed
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def encode(self, x):
        from types import SimpleNamespace

        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x))

    def decode(self, z):
        from types import SimpleNamespace

        return SimpleNamespace(sample=z * 0 if self.collapsed else z)


@pytest.mark.parametrize("collapsed, expected", [(False, 1.0), (True, 0.0)])
def test_vae_round_trip_scores_what_the_vae_gives_back(collapsed, expected):
    """An identity VAE gives the ground truth back pixel for pixel (the scorer's 1.0); a collapsed
    one gives grey, in which no shape is found (0.0)."""
    from types import SimpleNamespace

    from layerscope_testbed.shapes.evaluate import vae_round_trip

    result = vae_round_trip(SimpleNamespace(vae=_Vae(collapsed)), count=6)
    assert result["overall"]["count"] == 6 and result["overall"]["all_correct"] == expected
    assert all(entry["all_correct"] == expected for entry in result["per_dimension"].values())
    if not collapsed:  # frame 0 comes back exactly
        assert result["overall"]["first_frame_consistency"] == 1.0


@pytest.mark.slow
def test_eval_vae_ceiling_adds_a_reference_row_everywhere(model_dir, tmp_path):
    from bs4 import BeautifulSoup

    out = tmp_path / "eval.json"
    assert main(["eval", "--quick", "--model", "random", "--vae-ceiling", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["reference_points"]["VAE round trip"]
    assert row["overall"]["count"] == 6 and 0.0 <= row["overall"]["all_correct"] <= 1.0
    assert "| VAE round trip |" in out.with_suffix(".md").read_text()
    soup = BeautifulSoup(out.with_suffix(".html").read_text(), "html.parser")
    assert soup.select_one('#reference tr[data-reference="VAE round trip"]') is not None
