"""The band test (split-sample, run-level), its effect sizes, edge intervals and the computed verdict."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from layerscope.null_curves import simulate
from layerscope.ranking import Ranking, RankingError, rank_stores
from layerscope.significance import (
    band_contrasts,
    band_test,
    best_band,
    combine_split_pvalues,
    describe,
    describe_edges,
    dip_scores,
    effect_sizes,
    t_test_greater,
)


def _runs(n_runs: int, layers: int = 40, effect: float = 0.0, band=(11, 26), seed: int = 0) -> np.ndarray:
    """Per-run layer means: a run offset (prompts differ), unit noise, a dip of ``effect`` SDs."""
    rng = np.random.default_rng(seed)
    values = 5.0 + rng.normal(0, 2.0, (n_runs, 1)) + rng.normal(0, 1.0, (n_runs, layers))
    values[:, band[0] : band[1] + 1] -= effect
    return values


def test_dip_score_by_hand():
    # [1, 0, 0, 1]: band 1-2 sits 1 below both one-layer flanks; score = 1 / sqrt(1/2 + 1/1)
    start, end, score, dip = best_band(np.array([1.0, 0.0, 0.0, 1.0]))
    assert (start, end, dip) == (1, 2, 1.0)
    assert score == pytest.approx(1 / math.sqrt(1 / 2 + 1))
    # every interior segment of a 5-layer curve, checked against the formula written out
    curve = np.array([3.0, 1.0, 2.0, 0.5, 4.0])
    scores = dip_scores(curve)
    expected = []
    for a in range(1, 4):
        for b in range(a, 4):
            band, w = curve[a : b + 1].mean(), b - a + 1
            left_t = (curve[:a].mean() - band) / math.sqrt(1 / w + 1 / a)
            right_t = (curve[b + 1 :].mean() - band) / math.sqrt(1 / w + 1 / (5 - 1 - b))
            expected.append(min(left_t, right_t))
    assert scores.tolist() == pytest.approx(expected)  # same order as the segments (a, then b)


def test_band_never_touches_the_first_or_last_layer():
    curve = np.full(12, 1.0)
    curve[:4] = 0.0  # lowest at the start: a slope into the first layer, not a dip
    start, end, _, _ = best_band(curve)
    assert start >= 1 and end <= 10


def test_band_contrasts_by_hand():
    # a box 0.2 deep on a level with a quadratic trend: the excess is exactly the depth
    layers = 20
    x = np.linspace(-1.0, 1.0, layers)
    box = np.zeros(layers)
    box[6:12] = 1.0
    curve = 0.5 + 0.3 * x**2 - 0.1 * x - 0.2 * box
    w = band_contrasts(layers, 6, 11)
    assert curve @ w.excess == pytest.approx(0.2, abs=1e-12)
    assert (0.5 + 0.3 * x**2) @ w.excess == pytest.approx(0.0, abs=1e-12)  # a parabola has none
    assert curve @ w.left == pytest.approx(curve[:6].mean()) and curve @ w.right == pytest.approx(curve[12:].mean())
    assert curve @ w.band == pytest.approx(curve[6:12].mean())
    # on 4 layers a quadratic fits any interior box: distinctness cannot be judged
    assert band_contrasts(4, 1, 2).excess is None


def test_effect_sizes_by_hand():
    curve = np.array([0.8, 0.76, 0.2, 0.18, 0.2, 0.7, 0.72])
    drop, dip, distinct = effect_sizes(curve, 2, 4)
    band, weaker = np.mean([0.2, 0.18, 0.2]), np.mean([0.7, 0.72])
    assert dip == pytest.approx(weaker - band) and drop == pytest.approx(1 - band / weaker)
    assert 0.0 < distinct <= 1.5
    # a flank at or below zero has no relative drop
    assert np.isnan(effect_sizes(np.array([0.0, -0.5, 0.0]), 1, 1)[0])


def test_t_test_matches_scipy():
    from scipy.stats import ttest_1samp

    samples = np.random.default_rng(3).normal(0.3, 1.0, (9, 4))
    expected = [ttest_1samp(samples[:, j], 0.0, alternative="greater").pvalue for j in range(4)]
    assert t_test_greater(samples).tolist() == pytest.approx(expected)
    # zero variance: decided by the sign of the mean
    assert t_test_greater(np.full((5, 2), [0.2, -0.2])).tolist() == [0.0, 1.0]


def test_split_p_values_are_combined_by_the_quantile_rule():
    p = np.array([0.01, 0.02, 0.03, 0.04, 0.5])
    assert combine_split_pvalues(p, gamma=0.5) == pytest.approx(0.06)  # 2 x median
    assert combine_split_pvalues(p, gamma=0.25) == pytest.approx(0.08)  # 4 x lower quartile
    assert combine_split_pvalues(np.ones(4)) == 1.0


@pytest.mark.parametrize(
    ("scenario", "rho"),
    [("iid", 0.0), ("ar", 0.8), ("ar", 0.95), ("quadratic", 0.0), ("smooth_u", 0.8), ("slope", 0.8)],
)
def test_null_scenarios_are_calibrated(scenario, rho):
    # small cells of the benchmark's nulls: calls stay within 3 SE of alpha
    trials, alpha = 150, 0.05
    rng = np.random.default_rng([7, len(scenario), int(rho * 100)])
    calls = sum(
        band_test(simulate(rng, scenario, 20, 12, rho), alpha=alpha, resamples=20, seed=i).significant
        for i in range(trials)
    )
    assert calls / trials <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def test_a_sharp_band_is_recovered_with_its_edges():
    data = simulate(np.random.default_rng(0), "box", 30, 40, rho=0.8, effect=2.0)
    result = band_test(data, resamples=500)
    assert result.kind == "band" and result.p_value < 0.001
    assert (result.start, result.end) == (11, 26)
    assert result.start_ci[0] <= 11 <= result.start_ci[1] and result.end_ci[0] <= 26 <= result.end_ci[1]
    # the drop's interval covers the planted one: 0.2 below a level of 0.5
    assert result.drop_ci[0] <= 0.4 <= result.drop_ci[1] and result.distinct > 0.8
    assert result.p_in_band[14:24].min() > 0.9 and result.p_in_band[[0, 5, 33, 39]].max() < 0.1
    text = describe(result, list(range(40)), 30)
    assert text.startswith("weak band 11-26 (p=") and "n_runs=30" in text
    assert f"drop {result.drop:.2f} [{result.drop_ci[0]:.2f}, {result.drop_ci[1]:.2f}]" in text
    assert describe_edges(result, list(range(40))).startswith("band 11-26, start [")


def test_a_smooth_u_is_a_trough_not_a_band():
    result = band_test(simulate(np.random.default_rng(1), "smooth_u", 100, 40, rho=0.8), resamples=200)
    assert result.kind == "trough" and not result.significant and result.layers == []
    assert result.p_dip < 0.01 and result.heldout_distinct < 0.55
    assert describe(result, list(range(40)), 100).startswith("smooth trough ")


def test_a_shallow_dip_is_below_min_drop():
    # 1.5 SD deep but on a level of 5: a relative drop of 0.03
    data = simulate(np.random.default_rng(2), "box", 60, 40, rho=0.5, effect=1.5) + 4.5
    shallow = band_test(data, resamples=100)
    assert shallow.kind == "none" and "below --min-drop 0.1" in describe(shallow, list(range(40)), 60)
    assert band_test(data, resamples=100, min_drop=0.01).kind == "band"


def test_too_few_units_give_no_p_value_and_no_band():
    data = simulate(np.random.default_rng(3), "box", 9, 20, rho=0.5, effect=3.0)
    few = band_test(data, resamples=100)
    assert few.kind == "too_few" and few.p_value is None and few.layers == [] and np.isnan(few.p_in_band).all()
    assert describe(few, list(range(20)), 9) == "too few runs for a verdict (n_runs=9, need >= 10)"
    assert band_test(data, resamples=100, min_runs=4).kind == "band"
    steps = band_test(data, resamples=100, unit="step")  # one run's steps: description only, whatever their number
    assert steps.kind == "too_few" and steps.p_value is None and np.isfinite(steps.ci_low).all()


def test_monotone_trend_is_not_a_band():
    trend = np.linspace(1.0, 0.0, 30)[None, :] + np.random.default_rng(0).normal(0, 0.01, (20, 30))
    assert band_test(trend, resamples=200).kind == "none"


def test_cis_shrink_with_more_runs_as_one_over_sqrt_n():
    widths = {}
    for n in (5, 50):
        result = band_test(_runs(n, seed=n), resamples=2000)
        widths[n] = float(np.mean(result.ci_high - result.ci_low))
    assert 2.2 < widths[5] / widths[50] < 4.5  # sqrt(10) = 3.16


def test_one_unit_has_no_interval():
    single = band_test(_runs(1, layers=12), resamples=100, unit="step")
    assert np.isnan(single.ci_low).all() and np.isnan(single.p_in_band).all() and single.p_value is None


def _prompts_and_seeds(tmp_path, prompts: int, seeds: int, band=(4, 7)):
    """Synthetic runs whose prompts repeat over seeds, as a sweep's do."""
    import zarr

    from layerscope_testbed.synthetic import write_synthetic_run

    paths = []
    for p in range(prompts):
        for s in range(seeds):
            path = write_synthetic_run(tmp_path / f"p{p}s{s}.zarr", seed=100 * p + s, band=band, steps=2)
            zarr.open_group(path, mode="r+").attrs["prompt"] = f"prompt {p}"
            paths.append(path)
    return paths


def test_seeds_of_one_prompt_are_one_unit(tmp_path):
    paths = _prompts_and_seeds(tmp_path, prompts=3, seeds=4)
    by_prompt = rank_stores(paths)
    assert by_prompt.n_units == 3 and by_prompt.interval_unit == "prompt" and by_prompt.p_value is None
    assert by_prompt.verdict == "too few prompts for a verdict (n_prompts=3, need >= 10)"
    by_run = rank_stores(paths, unit="run")
    assert by_run.n_units == 12 and by_run.verdict.startswith("weak band 4-7")
    with pytest.raises(RankingError, match="--unit"):
        rank_stores(paths, unit="layer")


def test_ranking_of_synthetic_sweeps(tmp_path):
    from layerscope_testbed.synthetic import write_synthetic_run

    planted = [write_synthetic_run(tmp_path / f"p{i}.zarr", seed=i, band=(4, 7), steps=2) for i in range(12)]
    ranking = rank_stores(planted)
    assert ranking.significant and ranking.weak_layers == [4, 5, 6, 7] and ranking.band == [4, 5, 6, 7]
    assert ranking.verdict.startswith("weak band 4-7 (p=") and "n_runs=12" in ranking.verdict
    assert ranking.verdict_kind == "band" and ranking.interval_unit == "run" and ranking.n_runs == 12
    assert ranking.edges["start_ci"] == [4, 4] and ranking.edges["end_ci"] == [7, 7]
    low, high = ranking.effect["drop_ci"]
    assert low <= ranking.effect["drop"] <= high and ranking.effect["drop"] > 0.3
    assert ranking.params["min_runs"] == 10 and ranking.params["min_drop"] == 0.1
    assert all(len(row["moran_i_per_run"]) == 12 for row in ranking.layers)
    none = [write_synthetic_run(tmp_path / f"n{i}.zarr", seed=i, band=None, steps=2) for i in range(12)]
    flat = rank_stores(none)
    assert not flat.significant and flat.weak_layers == [] and flat.verdict.startswith("no weak band (p=")
    assert flat.edges["sentence"] == ""  # no edges for a band that is not there
    # forcing methods still choose, and say they ignore the verdict
    forced = rank_stores(none, method="bottom-k", k=2)
    assert len(forced.weak_layers) == 2 and "regardless of the verdict" in forced.table()
    # saved and loaded unchanged
    path = flat.save(tmp_path / "r.json")
    again = Ranking.load(path)
    assert again.verdict == flat.verdict and again.p_value == flat.p_value and again.weak_layers == []
    assert json.loads(path.read_text())["layers"][0]["ci"] == flat.layers[0]["ci"]


def test_one_run_has_no_verdict_in_json_or_cli(tmp_path, capsys):
    from layerscope.cli import main
    from layerscope_testbed.synthetic import write_synthetic_run

    path = write_synthetic_run(tmp_path / "a.zarr", band=(4, 7))
    assert main(["rank", str(path), "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["p_value"] is None and data["band"] is None and data["weak_layers"] == []
    assert data["verdict"] == "too few runs for a verdict (n_runs=1, need >= 10)"
    assert data["verdict_kind"] == "too_few" and data["significant"] is None
    assert "p=" not in out and "one run gives no verdict" in out


def test_record_refuses_to_choose_layers_from_a_ranking_without_a_band(tmp_path):
    from fg_intervene.config import ConfigError, FocalGuidanceConfig
    from layerscope_testbed.synthetic import write_synthetic_run

    none = [write_synthetic_run(tmp_path / f"n{i}.zarr", seed=i, band=None) for i in range(4)]
    path = rank_stores(none).save(tmp_path / "none.json")
    with pytest.raises(
        ConfigError, match=r"too few runs for a verdict .* nothing to guide.*weak_layers=\[4, 5, 6, 7\]"
    ):
        FocalGuidanceConfig().with_ranking(path)
    forced = FocalGuidanceConfig(weak_layers=[2, 3]).with_ranking(path, keep_layers=True)
    assert forced.weak_layers == [2, 3]


def test_cli_refusal_is_one_line_before_any_store(tmp_path, capsys):
    from layerscope.cli import main
    from layerscope_testbed.synthetic import write_synthetic_run

    none = [write_synthetic_run(tmp_path / f"n{i}.zarr", seed=i, band=None, layers=30) for i in range(3)]
    ranking = rank_stores(none).save(tmp_path / "none.json")
    out = tmp_path / "fg.zarr"
    code = main(["record", "--model", "default", "--out", str(out), "--intervene", "focal-guidance",
                 "--ranking", str(ranking)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "too few runs for a verdict" in err
    assert "--fg-set weak_layers=[10, 11," in err and not out.exists()


def test_ranking_json_is_strict_with_constant_maps(tmp_path):
    import zarr

    from layerscope_testbed.synthetic import write_synthetic_run

    path = write_synthetic_run(tmp_path / "a.zarr", band=None)
    group = zarr.open_group(path, mode="r+")
    group["similarity"][:, 3] = 0.25  # layer 3: every map constant -> Moran's I is NaN
    ranking = rank_stores([path])
    assert ranking.nan_maps == ranking.layers[3]["n_maps"] > 0
    text = ranking.save(tmp_path / "r.json").read_text()

    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    data = json.loads(text, parse_constant=refuse)
    assert data["layers"][3]["nan_maps"] == data["layers"][3]["n_maps"]
    Ranking.load(tmp_path / "r.json").table()  # nulls print as '-'


def test_unknown_expert_is_refused(tmp_path):
    from layerscope_testbed.synthetic import write_synthetic_run

    path = write_synthetic_run(tmp_path / "a.zarr")
    with pytest.raises(RankingError, match="not in this model"):
        rank_stores([path], expert="transformer_2")
    # refused before any metric is computed
    import layerscope

    assert "moran_i" not in layerscope.open_run(path)


def test_unreachable_scheduler_is_one_line(tmp_path, capsys, monkeypatch):
    from layerscope import ranking
    from layerscope.cli import main

    monkeypatch.setattr(ranking, "SCHEDULER_TIMEOUT", "1s")  # nothing listens on port 9: no need to wait 10 s
    from layerscope_testbed.synthetic import write_synthetic_run

    path = write_synthetic_run(tmp_path / "a.zarr")
    assert main(["rank", str(path), "--scheduler", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scheduler tcp://127.0.0.1:9: cannot connect" in err[0]


@pytest.mark.slow
def test_local_cluster_analysis_equals_local(tmp_path):
    distributed = pytest.importorskip("distributed")
    from layerscope_testbed.synthetic import write_synthetic_run

    paths = [
        write_synthetic_run(tmp_path / f"r{i:02d}.zarr", seed=i, layers=8, steps=2, grid=(1, 6, 6), band=(3, 4))
        for i in range(50)
    ]
    local = rank_stores(paths).to_dict()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = rank_stores(paths, scheduler=cluster.scheduler_address).to_dict()
    assert json.dumps(remote, sort_keys=True) == json.dumps(local, sort_keys=True)
    assert local["n_runs"] == 50 and local["weak_layers"] == [3, 4]


def test_validity_benchmark_writes_the_issue_keys(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "validity.json"
    result = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "ranking_validity.py"), "--replicates", "3",
         "--recovery-replicates", "2", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    null_keys = {"scenario", "layers", "runs", "rho", "replicates", "called_band", "se"}
    assert all(set(cell) == null_keys for cell in data["null"]) and len(data["null"]) == 7 * 3 * 3
    recovery_keys = {"scenario", "effect", "width", "layers", "runs", "rho", "replicates", "called_band", "exact",
                     "jaccard"}  # fmt: skip
    assert all(set(cell) == recovery_keys for cell in data["recovery"])
    assert {c["scenario"] for c in data["null"]} == {"iid", "ar", "quadratic", "smooth_u", "slope"}
    assert "| null scenario | rho | layers | runs |" in result.stdout


def test_two_recorded_layers_rank_without_a_band(tmp_path):
    from layerscope_testbed.synthetic import write_synthetic_run

    stores = [write_synthetic_run(tmp_path / f"r{i}.zarr", seed=i, layers=2, band=None, steps=2) for i in range(3)]
    ranking = rank_stores(stores)
    assert not ranking.significant and ranking.weak_layers == [] and ranking.p_value is None
    assert ranking.verdict.startswith("no band test: 2 layers recorded")
    assert all(row["ci"][0] <= row["moran_i"] <= row["ci"][1] for row in ranking.layers)
    assert rank_stores(stores, method="bottom-k", k=1).weak_layers in ([0], [1])
