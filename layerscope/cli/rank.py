"""``layerscope rank``: layers ranked over runs, the band test's verdict."""

from __future__ import annotations

import argparse

from layerscope.cli.options import fraction, int_at_least, non_negative_int, rank_inputs
from layerscope.errors import UsageError
from layerscope.registry import STATISTICS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rank",
        help="rank layers over runs and test for a semantic-weak band (CIs, split-sample test, verdict)",
        description="Metrics are computed once per store (written back as moran_i, moran_z, std, rms) and reused. "
        "The prompt (or run) is the unit: the band is chosen on some prompts and tested on the others, "
        "its drop and edges come with bootstrap intervals, and the verdict is 'weak band', 'smooth trough, "
        "no distinct band', 'no weak band', or 'too few runs for a verdict' (below --min-runs, one run "
        "included: no p-value, no band).",
    )
    p.add_argument("stores", nargs="+", help="a sweep directory, or one or more recorded stores")
    p.add_argument("--out", help="ranking JSON to write, e.g. runs/ranking.json")
    p.add_argument(
        "--metric",
        choices=[*STATISTICS.names(), "auroc"],
        default="moran_i",
        help="moran_i (paper, default) or std: spatial structure; rms: magnitude (for --probe contrastive/"
        "influence); auroc: localisation of the keyword's object (shapes world, `testbed auroc`)",
    )
    p.add_argument("--steps", help="step-index window A:B (B exclusive), e.g. 0:25")
    p.add_argument(
        "--method",
        choices=("band", "bottom-k", "threshold"),
        default="band",
        help="band (default): weak layers only if the band is significant; bottom-k/threshold force a choice",
    )
    p.add_argument("--k", type=int, help="number of layers for bottom-k")
    p.add_argument("--threshold", type=float, help="cut for the threshold method")
    stats = p.folded_group("the band test's thresholds and resampling")
    stats.add_argument("--alpha", type=float, default=0.05, help="significance level of the band test (default 0.05)")
    stats.add_argument(
        "--min-runs",
        type=int_at_least(4, "each half of a split needs two units"),
        default=None,
        help="fewest independent prompts (or runs) for a verdict (default 10: 4 choose the band, 6 test it)",
    )
    stats.add_argument(
        "--min-drop",
        type=fraction("--min-drop", upper_open=True),
        default=None,
        help="smallest held-out relative drop below the weaker flank that counts (default 0.1; the paper's is 0.75)",
    )
    stats.add_argument(
        "--min-distinct",
        type=fraction("--min-distinct"),
        default=None,
        help="smallest held-out share of the dip a quadratic trend does not explain (default 0.55; else a trough)",
    )
    p.add_argument(
        "--unit",
        choices=("prompt", "run"),
        default="prompt",
        help="independent unit: prompt (seeds of a prompt averaged; default) or run (a claim about one prompt's seeds)",
    )
    stats.add_argument("--splits", type=int_at_least(10, "split p-values are combined by a quantile"), default=50)
    stats.add_argument("--bootstrap", type=int_at_least(100, "percentile CIs need resamples"), default=1000)
    stats.add_argument("--seed", type=non_negative_int, default=0, help="seed of the splits and resamples")
    scope = p.folded_group("what is ranked, and where")
    scope.add_argument("--expert", help="rank only this expert's steps (Wan2.2: transformer or transformer_2)")
    scope.add_argument(
        "--stream",
        choices=("double", "single"),
        help="MMDiT (HunyuanVideo-I2V): rank only the double- or single-stream blocks (FG acts on single)",
    )
    scope.add_argument(
        "--scheduler", help="dask.distributed scheduler address for the per-store work, e.g. tcp://host:8786"
    )
    stats.add_argument("--transformation", choices=("b", "r"), default="b", help="binary (paper) or row-standardised")
    scope.add_argument("--allow-partial", action="store_true", help="analyse interrupted stores (their written steps)")
    scope.add_argument("--recompute", action="store_true", help="recompute metrics even if the store has them")
    p.set_defaults(func=_cmd_rank)


def _cmd_rank(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from layerscope.outputs import check_output_path
    from layerscope.ranking import RankOptions, parse_step_window, rank

    if args.out is not None:
        check_output_path(args.out)  # before the metrics work
    if not 0 < args.alpha < 1:
        raise UsageError(f"--alpha must be between 0 and 1, e.g. 0.05 (got {args.alpha})")
    names = {f.name for f in fields(RankOptions)} - {"steps", "progress"}
    chosen = {name: getattr(args, name) for name in names}
    options = RankOptions(**chosen, steps=parse_step_window(args.steps), progress=True)
    ranking = rank(rank_inputs(args.stores, args.allow_partial), options)
    print(ranking.table())
    if ranking.model.get("weights") == "random":
        print("note: the model has random weights; this ranking shows the machinery, not learned semantics")
    if args.out:
        ranking.save(args.out)
        print(f"wrote {args.out}")
    return 0
