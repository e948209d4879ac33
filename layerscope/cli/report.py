"""``layerscope report``: a self-contained HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path

from layerscope.cli.options import positive_int
from layerscope.errors import UsageError
from layerscope.registry import REPORT_PAGES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a run, or of a before/after pair",
        description="One file, no external requests: figures and video are embedded.",
    )
    p.add_argument(
        "store",
        help="the run (the 'before' run with --compare), a sweep directory (verdict over its runs), "
        "or a `layerscope eval` JSON (its HTML section)",
    )
    p.add_argument("--compare", help="the 'after' run, e.g. recorded with --intervene focal-guidance")
    p.add_argument("--out", required=True, help="HTML file to write, e.g. runs/report.html")
    p.add_argument("--force", action="store_true", help="compare runs even if model/prompt/seed/grid differ")
    p.add_argument("--steps-shown", type=positive_int, default=5, help="steps shown in the similarity grids")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    import time

    from layerscope.report import write

    started = time.perf_counter()
    if Path(args.store).suffix == ".json":  # an eval file: its HTML section, not a run's
        if args.compare:
            raise UsageError("--compare pairs two recorded runs; pair two evals with `layerscope eval --compare A B`")
        if "eval" not in REPORT_PAGES:
            raise UsageError(f"{args.store}: rendering an eval JSON needs the testbed (pip install ./testbed)")
        from layerscope.outputs import check_output_path

        out = REPORT_PAGES.load("eval")(Path(args.store), check_output_path(args.out))
    else:
        out = write(args.store, args.out, args.compare, force=args.force, steps_shown=args.steps_shown)
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({size:.2f} MB in {time.perf_counter() - started:.1f} s); open it in a browser")
    return 0
