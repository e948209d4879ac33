"""Benchmark: is `layerscope rank`'s weak-band verdict calibrated on nulls that look like
real data, and does it find planted bands?

Each simulated run is one curve over L layers (:mod:`layerscope.null_curves`, shared with
the tests), in Moran's-I-like units: a level of 0.5, a run offset (prompts differ as a
whole; sd 0.1), and layer noise of marginal sd ``SD = 0.1`` (the unit of ``effect``) that
is AR(1) across depth with correlation ``rho``: neighbouring blocks share the residual
stream, so a run's curve is smooth.  Every replicate goes through
:func:`layerscope.significance.band_test` with its defaults (alpha 0.05), exactly as
`layerscope rank` calls it; a replicate counts in ``called_band`` when the verdict is
``weak band``.

Null scenarios (no distinct band; target ``called_band <= alpha + 2 se`` in every cell):
  iid         rho 0
  ar          AR(1) with rho in {0.5, 0.8, 0.95}
  quadratic   a random quadratic per run (coefficients sd 1 SD), flat mean, iid noise
  smooth_u    a raised-cosine trough 2 SD deep over all layers (a smooth U), rho 0.8
  slope       a monotone slope of 4 SD over depth, rho 0.8
at L in {12, 40, 60} and runs in {5, 20, 100}.

Recovery (``box``): a box-shaped band ``effect`` SDs deep at the paper's relative place
(11-26 of 40), or a narrow one (``width`` 3), rho 0.8; ``exact`` is the share of
replicates whose weak band equals the planted one, ``jaccard`` their mean overlap (0 when
no band is called).  Target: effect 1, 20 runs, rho 0.8, 40 layers: called >= 0.9 and
mean Jaccard >= 0.8.

    python benchmarks/ranking_validity.py [--quick] [--json benchmarks/results/ranking_validity.json]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
from _common import print_table, verdict, write_json

from layerscope.null_curves import LEVEL, SD, planted_band, simulate
from layerscope.significance import band_test

ALPHA = 0.05
LAYERS = (12, 40, 60)
RUNS = (5, 20, 100)
NULLS = (("iid", 0.0), ("ar", 0.5), ("ar", 0.8), ("ar", 0.95), ("quadratic", 0.0), ("smooth_u", 0.8), ("slope", 0.8))
TARGET = {"effect": 1.0, "runs": 20, "rho": 0.8, "layers": 40, "called": 0.9, "jaccard": 0.8}


def run_cell(scenario: str, layers: int, runs: int, rho: float, replicates: int, seed: int, **kw) -> dict:
    """Call the verdict on ``replicates`` simulated sweeps of one cell."""
    effect, width = kw.get("effect", 0.0), kw.get("width")
    rng = np.random.default_rng([seed, layers, runs, int(rho * 100), int(effect * 100), width or 0, len(scenario)])
    planted = set(range(*np.add(planted_band(layers, width), (0, 1)))) if scenario == "box" else set()
    called = exact = 0
    jaccards = []
    for replicate in range(replicates):
        data = simulate(rng, scenario, runs, layers, rho, effect, width)
        result = band_test(data, alpha=ALPHA, resamples=50, seed=replicate)
        found = set(result.layers)
        called += result.significant
        exact += bool(planted) and found == planted
        jaccards.append(len(found & planted) / len(found | planted) if found and planted else 0.0)
    rate = called / replicates
    cell = {"scenario": scenario, "layers": layers, "runs": runs, "rho": rho, "replicates": replicates}
    if scenario == "box":
        start, end = planted_band(layers, width)
        cell.update(effect=effect, width=end - start + 1)
        return {**cell, "called_band": rate, "exact": exact / replicates, "jaccard": float(np.mean(jaccards))}
    # the standard error at the nominal rate: the bound the target uses does not shrink to 0 at rate 0
    se = math.sqrt(ALPHA * (1 - ALPHA) / replicates)
    return {**cell, "called_band": rate, "se": se}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer replicates (under 3 minutes on 2 cores)")
    parser.add_argument("--replicates", type=int, default=400, help="replicates per null cell (default 400)")
    parser.add_argument("--recovery-replicates", type=int, help="replicates per recovery cell (default half)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmarks/results/ranking_validity.json")
    args = parser.parse_args(argv)
    null_replicates = 60 if args.quick else args.replicates
    recovery_replicates = args.recovery_replicates or (40 if args.quick else max(100, args.replicates // 2))
    started = time.perf_counter()
    null = []
    for scenario, rho in NULLS:
        for layers in LAYERS:
            for runs in RUNS:
                null.append(run_cell(scenario, layers, runs, rho, null_replicates, args.seed))
    recovery = []
    recovery_cells = [(1.0, None, 40, 20, 0.8)]  # the target cell first
    recovery_cells += [
        (effect, None, 40, runs, rho) for effect in (0.5, 1.0, 2.0) for runs in (20, 100) for rho in (0.0, 0.8)
    ]
    recovery_cells += [(2.0, 3, 40, 20, 0.8), (1.0, None, 12, 20, 0.8), (1.0, None, 60, 20, 0.8)]
    seen = set()
    for effect, width, layers, runs, rho in recovery_cells:
        if (effect, width, layers, runs, rho) in seen:
            continue
        seen.add((effect, width, layers, runs, rho))
        recovery.append(run_cell("box", layers, runs, rho, recovery_replicates, args.seed, effect=effect, width=width))
    print_table(
        ("null scenario", "rho", "layers", "runs", "called band", "bound (alpha + 2 se)", "met"),
        [
            (c["scenario"], c["rho"], c["layers"], c["runs"], f"{c['called_band']:.3f}",
             f"{ALPHA + 2 * c['se']:.3f}", verdict(c["called_band"] <= ALPHA + 2 * c["se"]))
            for c in null
        ],
    )  # fmt: skip
    print()
    print_table(
        ("effect (SD)", "width", "layers", "runs", "rho", "called band", "exact", "mean Jaccard"),
        [
            (c["effect"], c["width"], c["layers"], c["runs"], c["rho"], f"{c['called_band']:.3f}",
             f"{c['exact']:.3f}", f"{c['jaccard']:.3f}")
            for c in recovery
        ],
    )  # fmt: skip
    worst = max(null, key=lambda c: c["called_band"] - (ALPHA + 2 * c["se"]))
    target = recovery[0]
    checks = {
        "null_calibrated": all(c["called_band"] <= ALPHA + 2 * c["se"] for c in null),
        "target_called": target["called_band"] >= TARGET["called"],
        "target_jaccard": target["jaccard"] >= TARGET["jaccard"],
    }
    print()
    print_table(
        ("check", "measured", "target", "met"),
        [
            ("worst null cell", f"{worst['scenario']} rho {worst['rho']} L {worst['layers']} runs {worst['runs']}: "
             f"{worst['called_band']:.3f}", f"<= {ALPHA + 2 * worst['se']:.3f}", verdict(checks["null_calibrated"])),
            ("called, 1 SD band, 20 runs, rho 0.8, L 40", f"{target['called_band']:.3f}", f">= {TARGET['called']}",
             verdict(checks["target_called"])),
            ("mean Jaccard, same cell", f"{target['jaccard']:.3f}", f">= {TARGET['jaccard']}",
             verdict(checks["target_jaccard"])),
        ],
    )  # fmt: skip
    write_json(
        {
            "alpha": ALPHA,
            "null": null,
            "recovery": recovery,
            "target": TARGET,
            "checks": checks,
            "level": LEVEL,
            "sd": SD,
            "quick": args.quick,
            "seconds": time.perf_counter() - started,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
