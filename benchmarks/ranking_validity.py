"""Benchmark: does `layerscope rank` find planted weak bands, and only those?

Synthetic sweeps where the truth is known.  Each run contributes one value per layer (40
layers, as Wan2.1-14B): a run offset (prompts differ as a whole; sd 2), independent
layer noise (sd 1, the between-run SD of a layer) and, for layers 11-26 (the paper's
band), a drop of ``effect`` between-run SDs.  Every replicate goes through the same
statistics as `layerscope rank` (:func:`layerscope.significance.band_test`: interior dip
score, layer labels permuted within runs, alpha 0.05).

Reported per effect (0, 0.5, 1, 2 SDs) and number of runs (1, 10, 50):
  false_positive_rate   share of effect-0 replicates called significant (must be <= alpha
                        within binomial error)
  exact                 share of replicates whose significant band is exactly 11-26
  jaccard               mean Jaccard overlap of the reported band with 11-26 (0 when none)

    python benchmarks/ranking_validity.py [--quick] [--json benchmarks/results/ranking_validity.json]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
from _common import print_table, verdict, write_json

from layerscope.significance import band_test

LAYERS = 40
BAND = (11, 26)
EFFECTS = (0.0, 0.5, 1.0, 2.0)
RUNS = (1, 10, 50)
ALPHA = 0.05


def simulate(rng: np.random.Generator, runs: int, effect: float) -> np.ndarray:
    values = rng.normal(0.0, 2.0, (runs, 1)) + rng.normal(0.0, 1.0, (runs, LAYERS))
    values[:, BAND[0] : BAND[1] + 1] -= effect
    return values


def evaluate(effect: float, runs: int, replicates: int, permutations: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, int(effect * 100), runs])
    planted = set(range(BAND[0], BAND[1] + 1))
    significant = exact = 0
    jaccards = []
    for replicate in range(replicates):
        result = band_test(
            simulate(rng, runs, effect), alpha=ALPHA, permutations=permutations, resamples=100, seed=replicate
        )
        found = set(result.layers)
        significant += result.significant
        exact += found == planted
        jaccards.append(len(found & planted) / len(found | planted) if found else 0.0)
    return {
        "replicates": replicates,
        "significant_rate": significant / replicates,
        "exact": exact / replicates,
        "jaccard": float(np.mean(jaccards)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 replicates and 199 permutations (for tests)")
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--permutations", type=int, default=999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmarks/results/ranking_validity.json")
    args = parser.parse_args(argv)
    replicates = 40 if args.quick else args.replicates
    permutations = 199 if args.quick else args.permutations
    started = time.perf_counter()
    recovery: dict[str, dict[str, dict]] = {}
    for effect in EFFECTS:
        recovery[f"{effect:g}"] = {
            str(runs): evaluate(effect, runs, replicates, permutations, args.seed) for runs in RUNS
        }
    null = [recovery["0"][str(runs)]["significant_rate"] for runs in RUNS]
    false_positive_rate = float(np.mean(null))
    # the bound: alpha plus 2 binomial standard errors of the pooled null replicates
    pooled = replicates * len(RUNS)
    bound = ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / pooled)
    rows = []
    for effect in EFFECTS:
        for runs in RUNS:
            cell = recovery[f"{effect:g}"][str(runs)]
            rows.append(
                (
                    f"{effect:g}",
                    runs,
                    f"{cell['significant_rate']:.3f}",
                    f"{cell['exact']:.3f}",
                    f"{cell['jaccard']:.3f}",
                )
            )
    print_table(("effect (SD)", "runs", "called significant", "exact band 11-26", "mean Jaccard"), rows)
    print_table(
        ("check", "measured", "target", "met"),
        [
            (
                f"false-positive rate at effect 0 ({pooled} replicates)",
                f"{false_positive_rate:.3f}",
                f"<= {bound:.3f} (alpha + 2 SE)",
                verdict(false_positive_rate <= bound),
            )
        ],
    )
    write_json(
        {
            "false_positive_rate": false_positive_rate,
            "false_positive_rate_by_runs": dict(zip(map(str, RUNS), null)),
            "false_positive_bound": bound,
            "alpha": ALPHA,
            "recovery": recovery,
            "layers": LAYERS,
            "band": list(BAND),
            "replicates": replicates,
            "permutations": permutations,
            "seconds": time.perf_counter() - started,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
