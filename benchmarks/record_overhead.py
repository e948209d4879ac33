"""Benchmark: what recording costs on top of plain generation, as ratios measured in one run.

Why ratios: these 2-core machines are shared and noisy, so absolute times drift between
(and within) runs.  Every case therefore times the plain model and the probed model in
the same process, interleaved (plain, probed, plain, probed, ..., plain), and reports the
median of the per-repeat ratios ``probed / mean(plain before, plain after)`` next to the
median and spread (min/max) of the absolute times.

Cases:
  a  default model: ``layerscope.recording.record`` of the packaged example (256x256, 9 frames,
     6 steps, all layers, probe ``hidden``, store written and flushed) vs the same pipeline
     call without probes.
  b  one forward of a ``WanTransformer3DModel`` at Wan2.1-1.3B width (dim 1536, 12 heads,
     ffn 8960; 4 blocks, random weights, float32, CPU) on the 480p latent grid 3x30x52,
     plain vs probes on all 4 blocks for each probe kind, maps streamed into a real store.
  c  peak RSS of a 5-step vs a 50-step recording of the default model, each in a fresh
     subprocess: memory must not grow with the number of steps.

     Also Focal Guidance on blocks 1-2 (FSG only, Attention Cache only, both).

Targets: (b) hidden, output, contrastive and every Focal Guidance mode <= 1.05x plain (influence has no
target: it re-runs each block's cross-attention once per keyword, its cost is reported); (c) 50-step peak RSS
within 10% of 5-step.

    python benchmarks/record_overhead.py [--quick] [--realistic] [--cases a,b,c] [--repeats N]
                                         [--out benchmarks/results/record_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import interleaved_runs, print_table, summary, transformer_only_adapter, write_json

from layerscope.registry import PROBES
from layerscope_testbed import (
    EXAMPLE_FRAMES,
    EXAMPLE_HEIGHT,
    EXAMPLE_KEYWORDS,
    EXAMPLE_PROMPT,
    EXAMPLE_STEPS,
    EXAMPLE_WIDTH,
    example_image,
)

PROBE_KINDS = tuple(PROBES.names())  # every registered probe kind
#: the contrastive probe's reference rows and the influence probe's neutral (padding) row
REALISTIC_REFERENCE_TOKENS = list(range(20, 40))
REALISTIC_NEUTRAL_TOKEN = 511
#: Focal Guidance ablations measured on the realistic shape (weak layers 1-2 of 4).
FG_MODES = ("fg:fsg", "fg:cache", "fg:fsg+cache")
# Case b: Wan2.1-1.3B width, 480p latent grid (81 frames would be 21 latent frames; 3 keep it CPU-sized).
REALISTIC_GRID = (3, 30, 52)
REALISTIC_KEYWORD_TOKENS = [[3], [7, 8], [12]]
REALISTIC_LAYERS = 4
OVERHEAD_TARGET = 1.05
RSS_TARGET = 1.10
RSS_STEPS = (5, 50)


def _interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, Any]:
    """Time ``plain`` around every other variant: P V1 P V2 ... P, ``repeats`` times.

    Each callable returns its own measured seconds (so set-up it does is excluded).
    Returns per-variant time summaries and, for every non-plain variant, the median of
    its paired ratios against the mean of the two plain runs around it.
    """
    times, ratios = interleaved_runs(variants, repeats)
    result: dict[str, Any] = {"seconds": {name: summary(values) for name, values in times.items()}}
    result["ratio"] = {name: statistics.median(values) for name, values in ratios.items()}
    result["ratios"] = ratios
    result["raw_seconds"] = times
    return result


# -- case a: the default model, record() vs the plain pipeline call ---------------------------------


def _example_kwargs(steps: int) -> dict[str, Any]:
    return {
        "prompt": EXAMPLE_PROMPT,
        "height": EXAMPLE_HEIGHT,
        "width": EXAMPLE_WIDTH,
        "num_frames": EXAMPLE_FRAMES,
        "num_inference_steps": steps,
    }


def _record_example(pipe: Any, store: Path, steps: int) -> Any:
    from layerscope.recording import record

    return record(
        pipe,
        store,
        image=example_image(),
        keywords=list(EXAMPLE_KEYWORDS),
        probe="hidden",
        progress=False,
        **_example_kwargs(steps),
    )


def _plain_example(pipe: Any, steps: int) -> Any:
    """The exact pipeline call :func:`layerscope.recording.record` makes, without probes."""
    import numpy as np
    import torch
    from PIL import Image

    image = Image.fromarray(np.asarray(example_image())).convert("RGB")
    image = image.resize((EXAMPLE_WIDTH, EXAMPLE_HEIGHT), Image.Resampling.BICUBIC)
    return pipe(
        image=image,
        negative_prompt=None,
        guidance_scale=5.0,
        generator=torch.Generator(device="cpu").manual_seed(0),
        output_type="np",
        **_example_kwargs(steps),
    )


def bench_default_model(repeats: int) -> dict[str, Any]:
    import shutil

    from layerscope.loading import load_pipeline
    from layerscope_testbed import resolve_model

    pipe, model_dir = load_pipeline(resolve_model("default"))
    pipe.set_progress_bar_config(disable=True)
    summaries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="layerscope-bench-") as tmp:
        counter = iter(range(10**6))

        def plain() -> float:
            started = time.perf_counter()
            _plain_example(pipe, EXAMPLE_STEPS)
            return time.perf_counter() - started

        def recorded() -> float:
            store = Path(tmp) / f"run{next(counter)}.zarr"
            started = time.perf_counter()
            summary = _record_example(pipe, store, EXAMPLE_STEPS)
            seconds = time.perf_counter() - started
            summaries.append(
                {
                    "status": summary.status,
                    "maps_written": summary.maps_written,
                    "bytes_on_disk": summary.bytes_on_disk,
                    "seconds_probes": summary.seconds_probes,
                    "queue_waits": summary.queue_waits,
                }
            )
            shutil.rmtree(store, ignore_errors=True)
            return seconds

        # Warm-up: first-call allocations, and the store's lazy imports (xarray, zarr, dask)
        # so the first timed recording does not pay them.
        _plain_example(pipe, 1)
        _record_example(pipe, Path(tmp) / "warmup.zarr", 1)
        shutil.rmtree(Path(tmp) / "warmup.zarr", ignore_errors=True)
        result = _interleaved({"plain": plain, "record": recorded}, repeats)
    result["recordings"] = summaries
    result["model_dir"] = str(model_dir)
    result["setup"] = {**_example_kwargs(EXAMPLE_STEPS), "keywords": list(EXAMPLE_KEYWORDS), "probe": "hidden"}
    return result


# -- case b: Wan-1.3B-width transformer forward on CPU ---------------------------------------------


def bench_realistic(repeats: int) -> dict[str, Any]:
    import torch
    from diffusers import WanTransformer3DModel

    from layerscope.probes import ProbeConfig, apply_probes
    from layerscope.store import StoreLayout, StoreWriter

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        num_attention_heads=12,
        attention_head_dim=128,
        in_channels=36,
        out_channels=16,
        text_dim=4096,
        ffn_dim=8960,
        num_layers=REALISTIC_LAYERS,
        cross_attn_norm=True,
        image_dim=1280,
        added_kv_proj_dim=1536,
    ).eval()
    frames, height, width = REALISTIC_GRID
    generator = torch.Generator().manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(1, 36, frames, 2 * height, 2 * width, generator=generator),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn(1, 512, 4096, generator=generator),
        "encoder_hidden_states_image": torch.randn(1, 257, 1280, generator=generator),
        "return_dict": False,
    }
    adapter = transformer_only_adapter(transformer)
    layers = list(range(REALISTIC_LAYERS))
    layout = StoreLayout(
        steps=[0],
        layers=layers,
        blocks=[f"blocks.{i}" for i in layers],
        keywords=[f"keyword{i}" for i in range(len(REALISTIC_KEYWORD_TOKENS))],
        grid=REALISTIC_GRID,
        video_shape=(1, 8, 8),
        attrs={"model_id": "benchmark-wan-1.3b-width-random", "weights": "random"},
    )
    maps_written: dict[str, list[int]] = {kind: [] for kind in PROBE_KINDS}

    def forward() -> None:
        with torch.no_grad(), transformer.cache_context("cond"):
            transformer(**inputs)

    def plain() -> float:
        started = time.perf_counter()
        forward()
        return time.perf_counter() - started

    def probed(kind: str, tmp: Path) -> Callable[[], float]:
        counter = iter(range(10**6))

        def run() -> float:
            # Store creation is a once-per-recording cost (amortised over a run's steps)
            # and is left out; hooks, map computation, submit and the final flush are in.
            writer = StoreWriter(tmp / f"{kind}{next(counter)}.zarr", layout, overwrite=True)
            config = ProbeConfig(
                keyword_tokens=REALISTIC_KEYWORD_TOKENS,
                grid=REALISTIC_GRID,
                kind=kind,
                reference_tokens=REALISTIC_REFERENCE_TOKENS,
                neutral_token=REALISTIC_NEUTRAL_TOKEN,
            )
            handle = apply_probes(adapter, config, writer.submit)
            try:
                started = time.perf_counter()
                forward()
                writer.close()
                seconds = time.perf_counter() - started
            finally:
                handle.remove()
                writer.close()
            maps_written[kind].append(writer.maps_written)
            return seconds

        return run

    def guided(mode: str) -> Callable[[], float]:
        from fg_intervene.config import FocalGuidanceConfig
        from fg_intervene.wan import Guidance, apply_focal_guidance

        g = torch.Generator().manual_seed(2)
        guidance = Guidance(
            keywords=[f"keyword{i}" for i in range(len(REALISTIC_KEYWORD_TOKENS))],
            token_indices=REALISTIC_KEYWORD_TOKENS,
            keyword_sims=torch.rand(len(REALISTIC_KEYWORD_TOKENS), 256, generator=g),
            region=(torch.rand(len(REALISTIC_KEYWORD_TOKENS), height, width, generator=g) > 0.7).float(),
            visual_values={
                (0, layer): torch.randn(len(REALISTIC_KEYWORD_TOKENS), 1536, generator=g) for layer in (1, 2)
            },
            grid=REALISTIC_GRID,
        )
        config = FocalGuidanceConfig(
            weak_layers=[1, 2], keywords=guidance.keywords, fsg="fsg" in mode, attention_cache="cache" in mode
        )

        def run() -> float:
            handle = apply_focal_guidance(adapter, config, guidance)
            try:
                started = time.perf_counter()
                forward()
                return time.perf_counter() - started
            finally:
                handle.remove()

        return run

    with tempfile.TemporaryDirectory(prefix="layerscope-bench-") as tmp:
        forward()  # warm-up
        variants: dict[str, Callable[[], float]] = {"plain": plain}
        variants.update({kind: probed(kind, Path(tmp)) for kind in PROBE_KINDS})
        variants.update({mode: guided(mode) for mode in FG_MODES})
        result = _interleaved(variants, repeats)
    result["maps_written"] = maps_written
    result["setup"] = {
        "dim": 1536,
        "heads": 12,
        "ffn_dim": 8960,
        "num_layers": REALISTIC_LAYERS,
        "grid": list(REALISTIC_GRID),
        "hidden_states": list(inputs["hidden_states"].shape),
        "encoder_hidden_states": list(inputs["encoder_hidden_states"].shape),
        "encoder_hidden_states_image": list(inputs["encoder_hidden_states_image"].shape),
        "keyword_tokens": REALISTIC_KEYWORD_TOKENS,
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
    }
    return result


# -- case c: peak RSS, 5 vs 50 steps, one fresh process each ----------------------------------------


def _vm_hwm_bytes() -> int | None:
    """Peak resident set of this process image from /proc (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def child_rss(steps: int) -> dict[str, Any]:
    """Record the example with ``steps`` steps in this (fresh) process; report peak RSS."""
    from layerscope.loading import load_pipeline
    from layerscope_testbed import resolve_model

    pipe, _ = load_pipeline(resolve_model("default"))
    with tempfile.TemporaryDirectory(prefix="layerscope-bench-") as tmp:
        started = time.perf_counter()
        summary = _record_example(pipe, Path(tmp) / "run.zarr", steps)
        seconds = time.perf_counter() - started
    # ru_maxrss is KiB on Linux, bytes on macOS.  On Linux it survives fork+exec, so a child
    # of a parent that already holds a model reports the parent's size; VmHWM (this
    # process image's own high-water mark) does not, and is what the ratio uses.
    scale = 1 if sys.platform == "darwin" else 1024
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return {
        "steps": steps,
        "peak_rss_bytes": _vm_hwm_bytes() or ru_maxrss,
        "ru_maxrss_bytes": ru_maxrss,
        "seconds": seconds,
        "status": summary.status,
        "maps_written": summary.maps_written,
    }


def bench_rss() -> dict[str, Any]:
    runs = {}
    for steps in RSS_STEPS:
        completed = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child-rss", str(steps)],
            check=True,
            capture_output=True,
            text=True,
        )
        runs[str(steps)] = json.loads(completed.stdout.strip().splitlines()[-1])
    small, large = (runs[str(s)]["peak_rss_bytes"] for s in RSS_STEPS)
    return {"runs": runs, "ratio": large / small}


# -- report ------------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f} ms"


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str, str, str, str]]:
    rows = []
    if "a" in results:
        a = results["a"]
        for name in ("plain", "record"):
            s = a["seconds"][name]
            ratio = f"{a['ratio'][name]:.3f}x" if name in a["ratio"] else ""
            rows.append(("a default model", name, _ms(s["median"]), _ms(s["min"]), _ms(s["max"]), ratio, "", ""))
    if "b" in results:
        b = results["b"]
        for name in ("plain", *PROBE_KINDS, *FG_MODES):
            s = b["seconds"][name]
            ratio, target, met = "", "", ""
            if name in b["ratio"]:
                ratio = f"{b['ratio'][name]:.3f}x"
                if name in ("hidden", "output", *FG_MODES):
                    target = f"<= {OVERHEAD_TARGET:.2f}x"
                    met = "yes" if b["ratio"][name] <= OVERHEAD_TARGET else "NO"
            rows.append(("b Wan-1.3B width", name, _ms(s["median"]), _ms(s["min"]), _ms(s["max"]), ratio, target, met))
    if "c" in results:
        c = results["c"]
        for steps in RSS_STEPS:
            mb = f"{c['runs'][str(steps)]['peak_rss_bytes'] / 2**20:,.0f} MiB"
            ratio, target, met = "", "", ""
            if steps == RSS_STEPS[-1]:
                ratio = f"{c['ratio']:.3f}x"
                target = f"<= {RSS_TARGET:.2f}x"
                met = "yes" if c["ratio"] <= RSS_TARGET else "NO"
            rows.append(("c peak RSS", f"{steps} steps", mb, "", "", ratio, target, met))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat; skip case b unless --realistic")
    parser.add_argument("--realistic", action="store_true", help="run case b even with --quick")
    parser.add_argument("--cases", default="a,b,c", help="comma-separated subset of a,b,c")
    parser.add_argument("--repeats", type=int, default=None, help="repeats for case a (default 3; b uses 2)")
    parser.add_argument("--out", default="benchmarks/results/record_overhead.json")
    parser.add_argument("--child-rss", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_rss is not None:
        print(json.dumps(child_rss(args.child_rss)))
        return 0

    cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    unknown = cases - {"a", "b", "c"}
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; choose from a,b,c")
    if args.quick and not args.realistic:
        cases.discard("b")
    repeats_a = 1 if args.quick else (args.repeats or 3)
    repeats_b = 1 if args.quick else (args.repeats or 2)

    import torch

    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__},
        "threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
    }
    if "c" in cases:  # first, while this parent is still small (see child_rss)
        results["c"] = bench_rss()
    if "a" in cases:
        results["a"] = bench_default_model(repeats_a)
    if "b" in cases:
        results["b"] = bench_realistic(repeats_b)

    results["load_average_at_end"] = list(os.getloadavg())
    print_table(("case", "variant", "median", "min", "max", "ratio", "target", "met"), _rows(results))
    write_json(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
