"""Benchmark: recording overhead on a realistic-shape HunyuanVideo-I2V single-stream block.

Shape: width 3072 (24 heads x 128), MLP ratio 4, RoPE axes (16, 56, 56), text 400 rows
(144 image rows of ``token_replace``'s interleave 4 + 256 prompt tokens).  720p/129 frames
is a 33 x 45 x 80 latent token grid (118,800 visual rows); one 2-core CPU cannot run that,
so the visual grid is scaled to ``GRID`` (one latent frame, 720p's aspect ratio).  The
probes' cost is linear in the visual rows, like the block's projections, so the ratio
carries over; on paper for the full grid the block's attention is quadratic and the
probes' share only shrinks.

Cases:
  time  one transformer forward (0 double + 1 single block, random weights, float32, CPU)
        plain vs with the ``hidden`` probe streaming maps into a real store, interleaved
        (P V P V ... P); the ratio is the median of probed / mean(plain around it).
  rss   peak RSS (VmHWM) of a fresh process that records ``RSS_STEPS[0]`` vs
        ``RSS_STEPS[1]`` steps of the same block: probe memory must not grow with steps.

Targets: time ratio <= 1.05; RSS ratio <= 1.10.

    python benchmarks/hunyuan_overhead.py [--repeats N] [--out benchmarks/results/hunyuan_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import print_table, summary, verdict, write_json

GRID = (1, 30, 40)
TEXT_ROWS = 400
KEYWORD_ROWS = [[150], [160, 161]]
OVERHEAD_TARGET = 1.05
RSS_TARGET = 1.10
RSS_STEPS = (2, 6)


def _model_and_inputs() -> tuple[Any, dict[str, Any]]:
    import torch
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    model = HunyuanVideoTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=24,
        attention_head_dim=128,
        num_layers=0,
        num_single_layers=1,
        num_refiner_layers=1,
        text_embed_dim=4096,
        guidance_embeds=True,
        image_condition_type="token_replace",
    ).eval()
    frames, height, width = GRID
    generator = torch.Generator().manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(1, 16, frames, 2 * height, 2 * width, generator=generator),
        "encoder_hidden_states": torch.randn(1, TEXT_ROWS, 4096, generator=generator),
        "encoder_attention_mask": torch.ones(1, TEXT_ROWS),
        "pooled_projections": torch.randn(1, 768, generator=generator),
        "guidance": torch.tensor([6000.0]),
        "return_dict": False,
    }
    return model, inputs


def _adapter(model: Any) -> Any:
    """A HunyuanVideo adapter over a bare transformer (probes need ``denoisers`` and sites only)."""
    from layerscope.adapters.hunyuan_video import HunyuanVideoAdapter

    class TransformerOnly(HunyuanVideoAdapter):
        def __init__(self, transformer: Any):
            super().__init__(pipe=None)
            self.transformer = transformer

        def denoisers(self) -> list[Any]:
            return [self.transformer]

    return TransformerOnly(model)


def _recording(model: Any, store: Path, steps: int):
    """Probes on the block streaming into a real store of ``steps`` steps; returns (handle, writer)."""
    from layerscope.probes import ProbeConfig, apply_probes
    from layerscope.store import StoreLayout, StoreWriter

    layout = StoreLayout(
        steps=list(range(steps)),
        layers=[0],
        blocks=["single_transformer_blocks.0"],
        streams=["single"],
        keywords=["a", "b"],
        grid=GRID,
        video_shape=(1, 8, 8),
        attrs={"model_id": "benchmark-hunyuan-single-block-random", "weights": "random"},
    )
    writer = StoreWriter(store, layout, overwrite=True)
    config = ProbeConfig(keyword_tokens=KEYWORD_ROWS, grid=GRID, kind="hidden", steps=list(range(steps)))
    return apply_probes(_adapter(model), config, writer.submit), writer


def _forward(model: Any, inputs: dict[str, Any], step: int) -> None:
    import torch

    with torch.no_grad():
        model(timestep=torch.tensor([1000.0 - step]), **inputs)


def bench_time(repeats: int) -> dict[str, Any]:
    model, inputs = _model_and_inputs()
    calls = iter(range(10**6))

    def plain() -> float:
        started = time.perf_counter()
        _forward(model, inputs, next(calls))
        return time.perf_counter() - started

    def probed() -> float:
        with tempfile.TemporaryDirectory(prefix="layerscope-bench-") as tmp:
            handle, writer = _recording(model, Path(tmp) / "run.zarr", 1)
            started = time.perf_counter()
            _forward(model, inputs, 0)
            writer.close()
            seconds = time.perf_counter() - started
            handle.remove()
        return seconds

    _forward(model, inputs, 0)  # warm-up
    times: dict[str, list[float]] = {"plain": [], "probed": []}
    ratios = []
    before = plain()
    times["plain"].append(before)
    for _ in range(repeats):
        seconds = probed()
        after = plain()
        times["probed"].append(seconds)
        times["plain"].append(after)
        ratios.append(seconds / ((before + after) / 2.0))
        before = after
    ratios.sort()
    return {
        "seconds": {name: summary(values) for name, values in times.items()},
        "ratios": ratios,
        "ratio": ratios[len(ratios) // 2],
    }


def _vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def child_rss(steps: int) -> dict[str, Any]:
    model, inputs = _model_and_inputs()
    with tempfile.TemporaryDirectory(prefix="layerscope-bench-") as tmp:
        handle, writer = _recording(model, Path(tmp) / "run.zarr", steps)
        for step in range(steps):
            _forward(model, inputs, step)
        writer.close()
        handle.remove()
    return {"steps": steps, "peak_rss_bytes": _vm_hwm_bytes(), "maps_written": writer.maps_written}


def bench_rss() -> dict[str, Any]:
    runs = {}
    for steps in RSS_STEPS:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child-rss", str(steps)],
            check=True,
            capture_output=True,
            text=True,
        )
        runs[str(steps)] = json.loads(done.stdout.strip().splitlines()[-1])
    small, large = (runs[str(s)]["peak_rss_bytes"] for s in RSS_STEPS)
    return {"runs": runs, "ratio": large / small}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/hunyuan_overhead.json")
    parser.add_argument("--child-rss", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_rss:
        print(json.dumps(child_rss(args.child_rss)))
        return 0
    timing = bench_time(args.repeats)
    rss = bench_rss()
    plain, probed = timing["seconds"]["plain"], timing["seconds"]["probed"]
    rows = [
        (
            f"single block, grid {'x'.join(map(str, GRID))} + {TEXT_ROWS} text rows, width 3072",
            f"{plain['median']:.2f} s ({plain['min']:.2f}-{plain['max']:.2f})",
            f"{probed['median']:.2f} s ({probed['min']:.2f}-{probed['max']:.2f})",
            f"{timing['ratio']:.3f}x ({timing['ratios'][0]:.3f}-{timing['ratios'][-1]:.3f})",
            f"<= {OVERHEAD_TARGET}",
            verdict(timing["ratio"] <= OVERHEAD_TARGET),
        ),
        (
            f"peak RSS, {RSS_STEPS[1]} vs {RSS_STEPS[0]} steps",
            f"{rss['runs'][str(RSS_STEPS[0])]['peak_rss_bytes'] / 2**20:.0f} MiB",
            f"{rss['runs'][str(RSS_STEPS[1])]['peak_rss_bytes'] / 2**20:.0f} MiB",
            f"{rss['ratio']:.3f}x",
            f"<= {RSS_TARGET}",
            verdict(rss["ratio"] <= RSS_TARGET),
        ),
    ]
    print_table(["case", "plain / fewer steps", "probed / more steps", "ratio", "target", "met"], rows)
    write_json({"grid": GRID, "text_rows": TEXT_ROWS, "time": timing, "rss": rss}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
