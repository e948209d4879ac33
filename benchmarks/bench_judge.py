"""Benchmark: `layerscope bench` judges (questions/s, peak memory) and the bench's cost beyond generation.

1. Judge throughput: the shapes judge and the `vlm` judge (the tiny random Qwen2.5-VL
   of :mod:`layerscope_testbed.tiny_vlm`, 8 frames) over N shapes-world mp4s (256x256,
   9 frames), each in a fresh process: questions per second (median of repeats) and
   the process's peak RSS (VmHWM).  Run for two N: peak memory must not grow with the
   number of videos (they are streamed from disk, one at a time).
2. Streaming at Wan2.1 size: one 81-frame 480x832 mp4 judged by the vlm judge (8
   sampled frames kept) vs a process that decodes the whole video into memory.
3. Overhead: `layerscope bench` on the default model with its default settings (12
   steps, 9 frames, 256x256), shapes judge and CLIP consistency: seconds beyond model
   loading and the pipeline calls, as a ratio of the pipeline calls (target <= 5%).

    python benchmarks/bench_judge.py [--videos 6,24] [--repeats 3] [--prompts 3]
                                     [--json benchmarks/results/bench_judge.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import print_table, summary, verdict, write_json


def _vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def child_judge(judge_spec: str, prompts_file: str, videos_dir: str, count: int, repeats: int) -> dict[str, Any]:
    """In a fresh process: judge ``count`` videos ``repeats`` times; questions/s and peak RSS."""
    from layerscope.bench.prompts import read_bench_prompts
    from layerscope.bench.vlm import vlm_factory
    from layerscope_testbed.shapes.bench import shapes_factory

    prompts = read_bench_prompts(prompts_file)[:count]
    factories = {"shapes": shapes_factory, "vlm": vlm_factory}
    from layerscope.bench.judges import make_judge

    started = time.perf_counter()
    judge = make_judge(judge_spec, factories, prompts=prompts, frames=8)
    if hasattr(judge, "load"):
        judge.load()
    load = time.perf_counter() - started
    times = []
    questions = sum(len(p.questions) for p in prompts)
    for _ in range(repeats):
        started = time.perf_counter()
        for prompt in prompts:
            judge.judge(Path(videos_dir) / f"{prompt.id}.mp4", prompt)
        times.append(time.perf_counter() - started)
    return {"load_seconds": load, "seconds": times, "questions": questions, "peak_rss_bytes": _vm_hwm_bytes()}


def child_big(mode: str, vlm_dir: str, video: str) -> dict[str, Any]:
    """Peak RSS judging (``vlm``) or fully decoding (``decode``) one large mp4."""
    from layerscope.bench.prompts import BenchPrompt
    from layerscope.bench.video_io import read_video
    from layerscope.bench.vlm import VLMJudge

    started = time.perf_counter()
    if mode == "decode":
        frames = read_video(video)
        shape = list(frames.shape)
    else:
        judge = VLMJudge(vlm_dir, frames=8)
        judge.load()
        prompt = BenchPrompt("big", 1, Path(video), "p", "d", ("Does the red square move left?",))
        judge.judge(Path(video), prompt)
        shape = None
    return {"mode": mode, "seconds": time.perf_counter() - started, "peak_rss_bytes": _vm_hwm_bytes(), "shape": shape}


def _run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_inputs(tmp: Path, count: int) -> tuple[Path, Path, Path, Path]:
    """Shapes prompts + ground-truth mp4s, the tiny VLM, and one Wan-size mp4."""
    from layerscope.bench.video_io import write_mp4
    from layerscope_testbed.shapes.bench import export_bench
    from layerscope_testbed.shapes.evaluate import eval_scenes
    from layerscope_testbed.shapes.render import render_video
    from layerscope_testbed.tiny_vlm import build_tiny_qwen2_5_vl

    prompts = export_bench(tmp / "set", count)
    videos = tmp / "videos"
    videos.mkdir()
    for index, scene in enumerate(eval_scenes(count)):
        write_mp4(videos / f"heldout-{index:03d}.mp4", render_video(scene, 9, 256, 256))
    vlm = build_tiny_qwen2_5_vl(tmp / "tiny-vlm")
    big = tmp / "wan-size.mp4"
    write_mp4(big, render_video(eval_scenes(2)[1], 81, 480, 832))  # a motion scene at Wan2.1's 480p size
    return prompts, videos, vlm, big


def bench_overhead(tmp: Path, prompts_count: int) -> dict[str, Any]:
    from layerscope.cli import main
    from layerscope_testbed.shapes.bench import export_bench

    prompts = export_bench(tmp / "overhead-set", prompts_count)
    out = tmp / "overhead-run"
    code = main(["bench", str(prompts), "--judge", "shapes", "--out", str(out), "--quiet"])
    assert code == 0, code
    return json.loads((out / "results.json").read_text())["timing"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", default="6,24", help="video counts for the throughput runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=3, help="prompts for the overhead run (1 seed each; 0: skip)")
    parser.add_argument("--json", default="benchmarks/results/bench_judge.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = child_judge(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4])) if kind == "judge" else None
        if kind == "big":
            result = child_big(*rest)
        print(json.dumps(result))
        return
    counts = [int(c) for c in args.videos.split(",")]
    results: dict[str, Any] = {"throughput": [], "streaming": [], "overhead": None}
    with tempfile.TemporaryDirectory(prefix="layerscope-bench-judge-") as name:
        tmp = Path(name)
        prompts, videos, vlm, big = make_inputs(tmp, max(counts))
        rows = []
        for spec in ("shapes", f"vlm:{vlm}"):
            for count in counts:
                r = _run_child("judge", spec, str(prompts), str(videos), str(count), str(args.repeats))
                rates = [r["questions"] / s for s in r["seconds"]]
                entry = {"judge": spec.split(":")[0], "videos": count, **r, "questions_per_second": summary(rates)}
                results["throughput"].append(entry)
                rows.append([
                    entry["judge"], count, r["questions"], f"{statistics.median(rates):.1f}",
                    f"{min(rates):.1f}-{max(rates):.1f}", f"{r['peak_rss_bytes'] / 2**20:.0f}",
                    f"{r['load_seconds']:.1f}",
                ])  # fmt: skip
        print_table(["judge", "videos", "questions", "questions/s (median)", "range", "peak RSS MiB", "load s"], rows)
        for judge in ("shapes", "vlm"):
            peaks = [e["peak_rss_bytes"] for e in results["throughput"] if e["judge"] == judge]
            growth = peaks[-1] / peaks[0]
            results[f"{judge}_peak_growth"] = growth
            print(f"{judge}: peak RSS {max(counts)} videos / {min(counts)} videos = {growth:.3f} (streamed: ~1)")
        rows = []
        for mode in ("decode", "vlm"):
            r = _run_child("big", mode, str(vlm), str(big))
            results["streaming"].append(r)
            rows.append([mode, f"{r['peak_rss_bytes'] / 2**20:.0f}", f"{r['seconds']:.1f}"])
        print("\none 81-frame 480x832 mp4 (97 MB of pixels):")
        print_table(["process", "peak RSS MiB", "seconds"], rows)
        small = max(e["peak_rss_bytes"] for e in results["throughput"] if e["judge"] == "vlm")
        results["vlm_peak_wan_size_over_256px"] = results["streaming"][1]["peak_rss_bytes"] / small
        print(f"vlm judge peak RSS, that video / the 256x256 clips: {results['vlm_peak_wan_size_over_256px']:.3f}")
        if args.prompts == 0:  # --prompts 0: judges only
            write_json(results, args.json)
            return
        timing = bench_overhead(tmp, args.prompts)
        results["overhead"] = timing
        ratio = timing["overhead_ratio"]
        print(
            f"\nbench overhead on the default model ({args.prompts} prompts x 1 seed): "
            f"{timing['overhead_seconds']:.2f} s beyond {timing['generation_seconds']:.1f} s of generation "
            f"(+{timing['model_load_seconds']:.1f} s model load) = {100 * ratio:.2f}% "
            f"(target <= 5%: {verdict(ratio <= 0.05)})"
        )
    write_json(results, args.json)


if __name__ == "__main__":
    main()
