"""Benchmark: what `layerscope sweep` costs per run beyond the recordings themselves.

Both sides load the shipped default model once and record the same N runs (prompt file
from `layerscope testbed prompts`, 6 steps, 9 frames, 256x256): once through
`layerscope sweep` (plan, prompt-file checks, image hashes, resume checks, the index
rewritten after every run, the final barrier), once as a plain loop of `record()` calls.
The difference per run is the sweep's overhead.  Alternating order, repeated; medians.

Target (issue #14): <= 0.3 s per run.

    python benchmarks/sweep_overhead.py [--runs 6] [--repeats 2] [--json benchmarks/results/sweep_overhead.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table, summary, verdict, write_json


def plain_loop(prompts: Path, out: Path, seeds: list[int]) -> float:
    import layerscope_testbed as testbed
    from layerscope.loading import load_image, load_pipeline
    from layerscope.recording import record
    from layerscope.sweep import read_prompts

    started = time.perf_counter()
    pipe, _ = load_pipeline(testbed.resolve_model("default"))
    for entry in read_prompts(prompts):
        for seed in seeds:
            record(
                pipe,
                out / f"{entry.id}-seed{seed}.zarr",
                prompt=entry.prompt,
                keywords=list(entry.keywords),
                image=load_image(entry.image),
                height=testbed.EXAMPLE_HEIGHT,
                width=testbed.EXAMPLE_WIDTH,
                num_frames=testbed.EXAMPLE_FRAMES,
                num_inference_steps=testbed.EXAMPLE_STEPS,
                seed=seed,
                progress=False,
            )
    return time.perf_counter() - started


def sweep(prompts: Path, out: Path, seeds: list[int]) -> float:
    from layerscope.cli import main

    started = time.perf_counter()
    code = main(["sweep", str(prompts), "--out-dir", str(out), "--seeds", ",".join(map(str, seeds)), "--quiet"])
    assert code == 0, code
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=6, help="runs per side: 3 prompts x runs/3 seeds")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default="benchmarks/results/sweep_overhead.json")
    args = parser.parse_args(argv)
    from layerscope_testbed.shapes.evaluate import write_prompt_file

    seeds = list(range(max(1, args.runs // 3)))
    plain_times, sweep_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        prompts = write_prompt_file(Path(tmp) / "prompts", 3)
        for repeat in range(args.repeats):
            order = (plain_loop, sweep) if repeat % 2 == 0 else (sweep, plain_loop)
            for fn in order:
                out = Path(tmp) / f"{fn.__name__}-{repeat}"
                (plain_times if fn is plain_loop else sweep_times).append(fn(prompts, out, seeds))
    runs = 3 * len(seeds)
    per_run = (statistics.median(sweep_times) - statistics.median(plain_times)) / runs
    print_table(
        ("case", "measured", "target", "met"),
        [
            (f"plain record() loop, {runs} runs", "{median:.1f} s (min {min:.1f}, max {max:.1f})".format(
                **summary(plain_times)), "", ""),
            (f"layerscope sweep, {runs} runs", "{median:.1f} s (min {min:.1f}, max {max:.1f})".format(
                **summary(sweep_times)), "", ""),
            ("sweep overhead per run", f"{per_run:+.3f} s", "<= 0.3 s", verdict(per_run <= 0.3)),
        ],
    )  # fmt: skip
    write_json(
        {"runs": runs, "plain_s": summary(plain_times), "sweep_s": summary(sweep_times), "overhead_s_per_run": per_run},
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
