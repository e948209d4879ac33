"""The band statistic, its permutation null, cluster-bootstrap CIs and the computed verdict."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from layerscope.ranking import Ranking, RankingError, rank_stores
from layerscope.significance import band_test, best_band, dip_scores, p_value, permutation_null


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


def test_p_value_counts_ties_and_is_never_zero():
    assert p_value(1.0, np.array([0.0, 1.0, 2.0])) == 0.75
    assert p_value(10.0, np.zeros(999)) == 0.001


def test_flat_and_noisy_curves_give_no_band_at_the_stated_rate():
    trials, alpha = 300, 0.05
    hits = sum(
        band_test(_runs(8, layers=20, seed=seed), alpha=alpha, permutations=199, resamples=100, seed=seed).significant
        for seed in range(trials)
    )
    # an exact permutation test: the rate is <= alpha up to binomial error (3 SE)
    assert hits / trials <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)
    # a perfectly flat curve has no dip at all
    flat = band_test(np.full((5, 20), 0.5), permutations=99, resamples=100)
    assert not flat.significant and flat.dip == 0.0


def test_monotone_trend_is_not_a_band():
    trend = np.linspace(1.0, 0.0, 30)[None, :] + np.random.default_rng(0).normal(0, 0.01, (10, 30))
    result = band_test(trend, permutations=499, resamples=200)
    assert not result.significant and result.p_value > 0.5


def test_planted_dip_is_found():
    result = band_test(_runs(20, effect=1.5), permutations=999, resamples=500)
    assert result.significant and result.p_value <= 0.002
    found, planted = set(range(result.start, result.end + 1)), set(range(11, 27))
    assert len(found & planted) / len(found | planted) >= 0.8  # edges within a layer or two
    assert result.p_in_band[15:23].min() > 0.9 and result.p_in_band[[0, 5, 33, 39]].max() < 0.1


def test_cis_shrink_with_more_runs_as_one_over_sqrt_n():
    widths = {}
    for n in (5, 50):
        result = band_test(_runs(n, seed=n), permutations=99, resamples=2000)
        widths[n] = float(np.mean(result.ci_high - result.ci_low))
    assert 2.2 < widths[5] / widths[50] < 4.5  # sqrt(10) = 3.16


def test_permutation_null_shuffles_within_runs_only():
    # runs that differ only in level: shuffling within a run leaves every null curve flat
    units = np.repeat(np.array([[0.0], [5.0], [-3.0]]), 10, axis=1)
    assert np.allclose(permutation_null(units, 50, np.random.default_rng(0)), 0.0)
    # a layer pattern shared by all runs is broken up by the shuffle: the null is below it
    dip = np.ones((6, 10))
    dip[:, 4:6] = 0.0
    observed = best_band(dip.mean(axis=0))[2]
    assert (permutation_null(dip, 200, np.random.default_rng(0)) < observed).mean() > 0.9


def test_one_unit_has_no_interval_and_nan_scores_are_not_significant():
    single = band_test(_runs(1, layers=12), permutations=99, resamples=100)
    assert np.isnan(single.ci_low).all() and np.isnan(single.p_in_band).all()
    assert p_value(float("nan"), np.zeros(9)) == 1.0


def test_ranking_of_synthetic_sweeps(tmp_path):
    from layerscope.testbed.synthetic import write_synthetic_run

    planted = [write_synthetic_run(tmp_path / f"p{i}.zarr", seed=i, band=(4, 7)) for i in range(6)]
    ranking = rank_stores(planted)
    assert ranking.significant and ranking.weak_layers == [4, 5, 6, 7] and ranking.band == [4, 5, 6, 7]
    assert ranking.verdict.startswith("weak band 4-7 (p=") and "n_runs=6" in ranking.verdict
    assert ranking.interval_unit == "run" and ranking.n_runs == 6
    assert all(len(row["moran_i_per_run"]) == 6 for row in ranking.layers)
    none = [write_synthetic_run(tmp_path / f"n{i}.zarr", seed=i, band=None) for i in range(6)]
    flat = rank_stores(none)
    assert not flat.significant and flat.weak_layers == [] and flat.verdict.startswith("no significant weak band")
    # forcing methods still choose, and say they ignore the verdict
    forced = rank_stores(none, method="bottom-k", k=2)
    assert len(forced.weak_layers) == 2 and "regardless of the verdict" in forced.table()
    # saved and loaded unchanged
    path = flat.save(tmp_path / "r.json")
    again = Ranking.load(path)
    assert again.verdict == flat.verdict and again.p_value == flat.p_value and again.weak_layers == []
    assert json.loads(path.read_text())["layers"][0]["ci"] == flat.layers[0]["ci"]


def test_record_refuses_to_choose_layers_from_a_ranking_without_a_band(tmp_path):
    from fg_intervene.config import ConfigError, FocalGuidanceConfig
    from layerscope.testbed.synthetic import write_synthetic_run

    none = [write_synthetic_run(tmp_path / f"n{i}.zarr", seed=i, band=None) for i in range(4)]
    path = rank_stores(none).save(tmp_path / "none.json")
    with pytest.raises(ConfigError, match="no significant weak band .* nothing to guide"):
        FocalGuidanceConfig().with_ranking(path)
    forced = FocalGuidanceConfig(weak_layers=[2, 3]).with_ranking(path, keep_layers=True)
    assert forced.weak_layers == [2, 3]


def test_cli_refusal_is_one_line_before_any_store(tmp_path, capsys):
    from layerscope.cli import main
    from layerscope.testbed.synthetic import write_synthetic_run

    none = [write_synthetic_run(tmp_path / f"n{i}.zarr", seed=i, band=None, layers=30) for i in range(3)]
    ranking = rank_stores(none).save(tmp_path / "none.json")
    out = tmp_path / "fg.zarr"
    code = main(["record", "--model", "default", "--out", str(out), "--intervene", "focal-guidance",
                 "--ranking", str(ranking)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no significant weak band" in err
    assert "--fg-set weak_layers=" in err and not out.exists()


def test_ranking_json_is_strict_with_constant_maps(tmp_path):
    import zarr

    from layerscope.testbed.synthetic import write_synthetic_run

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
    from layerscope.testbed.synthetic import write_synthetic_run

    path = write_synthetic_run(tmp_path / "a.zarr")
    with pytest.raises(RankingError, match="not in this model"):
        rank_stores([path], expert="transformer_2")
    # refused before any metric is computed
    import layerscope

    assert "moran_i" not in layerscope.open_run(path)


def test_unreachable_scheduler_is_one_line(tmp_path, capsys):
    from layerscope.cli import main
    from layerscope.testbed.synthetic import write_synthetic_run

    path = write_synthetic_run(tmp_path / "a.zarr")
    assert main(["rank", str(path), "--scheduler", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scheduler tcp://127.0.0.1:9: cannot connect" in err[0]


def test_local_cluster_analysis_equals_local(tmp_path):
    distributed = pytest.importorskip("distributed")
    from layerscope.testbed.synthetic import write_synthetic_run

    paths = [
        write_synthetic_run(tmp_path / f"r{i:02d}.zarr", seed=i, layers=8, steps=2, grid=(1, 6, 6), band=(3, 4))
        for i in range(50)
    ]
    local = rank_stores(paths).to_dict()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = rank_stores(paths, scheduler=cluster.scheduler_address).to_dict()
    assert json.dumps(remote, sort_keys=True) == json.dumps(local, sort_keys=True)
    assert local["n_runs"] == 50 and local["weak_layers"] == [3, 4]


def test_validity_benchmark_quick(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "validity.json"
    result = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "ranking_validity.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["false_positive_rate"] <= data["false_positive_bound"]
    assert set(data["recovery"]) == {"0", "0.5", "1", "2"}
    strong = data["recovery"]["2"]["50"]
    assert strong["exact"] >= 0.9 and strong["jaccard"] >= 0.95
    assert "| effect (SD) | runs |" in result.stdout


def test_two_recorded_layers_rank_without_a_band(tmp_path):
    from layerscope.testbed.synthetic import write_synthetic_run

    stores = [write_synthetic_run(tmp_path / f"r{i}.zarr", seed=i, layers=2, band=None) for i in range(3)]
    ranking = rank_stores(stores)
    assert not ranking.significant and ranking.weak_layers == [] and ranking.p_value == 1.0
    assert ranking.verdict.startswith("no band test: 2 layers recorded")
    assert all(row["ci"][0] <= row["moran_i"] <= row["ci"][1] for row in ranking.layers)
    assert rank_stores(stores, method="bottom-k", k=1).weak_layers in ([0], [1])
