"""examples/instrument_study.py: its helpers and report by hand (the study itself is run by hand)."""

from __future__ import annotations


def _ranking(verdict: str, weak: list[int], curve: list[float], statistic: str) -> dict:
    return {
        "verdict": verdict,
        "verdict_kind": "band" if weak else "none",
        "p_value": 0.01 if weak else 0.5,
        "band": weak or [1],
        "weak_layers": weak,
        "effect": {"drop": 0.5, "drop_ci": [0.4, 0.6]},
        "layers": [{"layer": i, statistic: v} for i, v in enumerate(curve)],
        "n_runs": 100,
    }


def test_summary_correlations_and_report(example_script):
    study = example_script("instrument_study")
    assert study.jaccard([4, 5, 6, 7], [4, 5, 6, 7]) == 1.0 and study.jaccard([], [4]) == 0.0
    assert study.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert study.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert study.spearman([1, 1, 1, 1], [1, 2, 3, 4]) is None  # a constant curve has no rank order
    rms = study.summarise(_ranking("weak band 4-7 (...)", [4, 5, 6, 7], [1, 2, 3, 4, 0, 0, 0, 0, 5, 6], "rms"), "rms",
                          [4, 5, 6, 7])  # fmt: skip
    moran = study.summarise(_ranking("no weak band (...)", [], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                                     "moran_i"), "moran_i", [4, 5, 6, 7])  # fmt: skip
    assert rms["jaccard_with_planted"] == 1.0 and moran["jaccard_with_planted"] == 0.0
    instruments = {"contrastive RMS": rms, "Eq. 10 Moran's I": moran}
    table = study.correlations(instruments)
    assert table["contrastive RMS"]["contrastive RMS"] == 1.0
    result = {
        "planted_layers": [4, 5, 6, 7],
        "sweep": {"prompts": 20, "seeds": "0-4", "steps": 6},
        "models": {"planted": instruments},
        "correlations": {"planted": table},
    }
    text = study.report(result)
    assert "| contrastive RMS | weak band 4-7 (...) | 4, 5, 6, 7 | 1.00 |" in text
    assert "| Eq. 10 Moran's I | no weak band (...) | none | 0.00 |" in text
    rho = table["contrastive RMS"]["Eq. 10 Moran's I"]
    assert rho is not None and f"| contrastive RMS | +1.00 | {rho:+.2f} |" in text
