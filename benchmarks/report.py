"""Benchmark: time and size of `layerscope report` for the default run and a 14B-shaped store.

Cases:
  default    a recording of the packaged example with the default model
  synthetic  40 layers x 50 steps x 3 keywords x 21 frames x 30 x 52 (the Wan2.1-14B
             480p workload), written by benchmarks/metrics.py's synthetic-store writer

Target (issue #5): the synthetic report renders in under 60 s and weighs under 15 MB.

    python benchmarks/report.py [--model default] [--out benchmarks/results/report.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table, verdict, write_json


def _render(store: Path, out: Path) -> dict[str, float]:
    from layerscope.report import write

    started = time.perf_counter()
    write(store, out)
    return {"seconds": time.perf_counter() - started, "megabytes": out.stat().st_size / 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", default="benchmarks/results/report.json")
    args = parser.parse_args(argv)

    from metrics import write_synthetic_store

    import layerscope_testbed as testbed
    from layerscope.loading import load_pipeline
    from layerscope.recording import record

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pipe, _ = load_pipeline(testbed.resolve_model(args.model))
        record(
            pipe,
            tmp / "default.zarr",
            image=testbed.example_image(),
            prompt=testbed.EXAMPLE_PROMPT,
            keywords=list(testbed.EXAMPLE_KEYWORDS),
            height=256,
            width=256,
            num_frames=9,
            num_inference_steps=testbed.EXAMPLE_STEPS,
            progress=False,
        )
        results["default"] = _render(tmp / "default.zarr", tmp / "default.html")
        started = time.perf_counter()
        write_synthetic_store(tmp / "synthetic.zarr")
        results["synthetic_store_seconds"] = time.perf_counter() - started
        results["synthetic"] = _render(tmp / "synthetic.zarr", tmp / "synthetic.html")
    d, s = results["default"], results["synthetic"]
    met = s["seconds"] < 60 and s["megabytes"] < 15
    print_table(
        ("report", "seconds", "MB", "target", "met"),
        [
            ("default run", f"{d['seconds']:.1f}", f"{d['megabytes']:.2f}", "", ""),
            ("40x50x3x21x30x52", f"{s['seconds']:.1f}", f"{s['megabytes']:.2f}", "< 60 s, < 15 MB", verdict(met)),
        ],
    )
    write_json(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
