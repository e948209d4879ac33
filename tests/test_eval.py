"""`layerscope eval`: `layerscope bench` preset to the shapes world, on the tiny random model."""

from __future__ import annotations

import json
import shutil

import pytest

from layerscope.cli import main

SMALL = ["--model", "random", "--count", "3", "--steps", "2", "--quiet"]


def test_eval_is_the_bench_command_it_prints_on_the_testbed_prompts(model_dir, tmp_path, capsys):
    """One small eval (3 held-out prompts, 2 steps): its prompts are `testbed export-bench`'s byte
    for byte, its baseline is a bench output, running the bench command by hand finds every
    video already made and scores them the same, and `eval --compare` is bench's compare."""
    evaluated = tmp_path / "eval"
    assert main(["eval", *SMALL, "--out", str(evaluated)]) == 0
    assert main(["testbed", "export-bench", "--out", str(tmp_path / "set"), "--scenes", "3"]) == 0
    assert (evaluated / "prompts" / "prompts.jsonl").read_text() == (tmp_path / "set" / "prompts.jsonl").read_text()
    results = json.loads((evaluated / "baseline" / "results.json").read_text())
    assert results["judge"]["judge"] == "shapes" and results["settings"]["steps"] == 2
    summary = results["summary"]
    assert len(summary["prompt_ids"]) == 3 and summary["seeds"] == [0]
    assert set(summary["dimensions"]) == {"dynamic_attribute", "motion", "interaction"}
    assert summary["overall"]["all_correct"] == 0.0  # random weights follow no instruction
    assert not (evaluated / "comparison.json").exists()  # one variant: nothing to pair
    # the preset is exactly bench: the saved videos' keys are the generation settings
    copy = tmp_path / "by-hand"
    shutil.copytree(evaluated / "baseline", copy)
    (copy / "results.json").unlink()
    prompts = str(evaluated / "prompts" / "prompts.jsonl")
    argv = ["bench", prompts, "--judge", "shapes", "--out", str(copy), "--model", "random", "--steps", "2"]
    capsys.readouterr()
    assert main([*argv, "--no-consistency", "--quiet"]) == 0
    assert "0 generated, 3 already saved" in capsys.readouterr().out
    by_hand = json.loads((copy / "results.json").read_text())["summary"]
    assert by_hand["outcomes"] == summary["outcomes"] and by_hand["per_question"] == summary["per_question"]
    # eval --compare A B is bench --compare of one variant of each
    out = tmp_path / "cmp.json"
    assert main(["eval", "--compare", str(evaluated), str(evaluated), "--out", str(out)]) == 0
    comparison = json.loads(out.read_text())
    assert comparison["a"] == comparison["b"] == str(evaluated / "baseline")
    assert comparison["comparison"]["all_correct"]["overall"]["difference"] == 0.0


@pytest.mark.slow
def test_eval_with_focal_guidance_pairs_it_with_the_baseline(base_ranking, tmp_path):
    # random CLIP weights: no word clears the default tau_sel, so let every non-stopword through
    config = tmp_path / "fg.toml"
    config.write_text("[focal_guidance]\ntau_sel = -1.0\n")
    forced = ["--fg-set", "weak_layers=[2,3,4]"]  # a one-run ranking need not name a band
    fg = ["--intervene", "focal-guidance", "--ranking", str(base_ranking), "--intervene-config", str(config), *forced]
    out = tmp_path / "eval"
    assert main(["eval", "--quick", "--model", "random", "--quiet", "--out", str(out), *fg]) == 0
    guided = json.loads((out / "focal-guidance" / "results.json").read_text())
    assert guided["settings"]["intervention"]["weak_layers"] == [2, 3, 4]
    assert len(guided["summary"]["prompt_ids"]) == 6
    comparison = json.loads((out / "comparison.json").read_text())["comparison"]["all_correct"]["overall"]
    assert comparison["prompts"] == 6 and 0.0 <= comparison["p_value"] <= 1.0
    # with every lambda 0 the guided videos are the baseline's: the preset changes nothing else
    zero = ["--fg-set", "lambda_txt=0", "--fg-set", "lambda_lat=0", "--fg-set", "lambda_cache=0"]
    out0 = tmp_path / "eval0"
    assert main(["eval", "--quick", "--model", "random", "--quiet", "--out", str(out0), *fg, *zero]) == 0
    answers = [(out0 / variant / "answers.jsonl").read_text() for variant in ("baseline", "focal-guidance")]
    assert answers[0] == answers[1]
    # --skip-baseline: the guided variant alone, nothing to pair
    out1 = tmp_path / "eval-fg-only"
    assert main(["eval", "--quick", "--model", "random", "--quiet", "--out", str(out1), *fg, "--skip-baseline"]) == 0
    assert sorted(p.name for p in out1.iterdir()) == ["focal-guidance", "prompts"]
    only = json.loads((out1 / "focal-guidance" / "results.json").read_text())["summary"]
    assert only["outcomes"] == guided["summary"]["outcomes"]


def test_eval_refuses_a_ranking_of_another_model_before_generating(base_ranking, tmp_path, capsys):
    data = json.loads(base_ranking.read_text())
    data["model"]["model_id"] = "some-other-model"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    out = tmp_path / "eval"
    argv = ["eval", *SMALL, "--out", str(out), "--intervene", "focal-guidance", "--ranking", str(other)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "some-other-model" in err[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "x", "--ranking", "r.json"], "need --intervene"),
        (["--out", "x", "--quick", "--count", "3"], "--quick sets"),
        (["--out", "x", "--quick", "--skip-baseline"], "add --intervene"),
        (["--out", "x", "--variant", "focal-guidance"], "add --compare"),
        (["--quick"], "needs --out DIR"),
        (["--out", "x", "--intervene", "focal-guidance", "--fg-set", "lambda=1"], "lambda"),
        (["--compare", "a", "b", "--quick"], "drop --quick"),
    ],
)
def test_eval_usage_errors_write_nothing(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--model", "random", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert list(tmp_path.iterdir()) == []


def test_eval_compare_points_an_old_eval_file_at_report(tmp_path, capsys):
    """An eval JSON of the format before the preset is rendered, not paired."""
    old = tmp_path / "eval.json"
    old.write_text(json.dumps({"model": {"model_id": "m"}, "results": {}}))
    assert main(["eval", "--compare", str(old), str(old)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"layerscope report {old}" in err[0]


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
