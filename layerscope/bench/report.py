"""The benchmark's HTML report: one self-contained file (thumbnails as PNG data URIs).

Per dimension and overall all-correct rates with intervals and the consistency means
up top; below, every prompt with one thumbnail strip per seed (first, middle and last
frame) and each question's verdict and margin, so a reader can check the judge by eye.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

THUMB_FRAMES = 3
THUMB_HEIGHT = 72


def thumbnail(mp4: Path) -> str:
    """First, middle and last frame side by side, ``THUMB_HEIGHT`` px high, as a data URI."""
    from PIL import Image

    from layerscope.bench.video_io import read_sampled
    from layerscope.report.render import image_uri

    frames = read_sampled(mp4, THUMB_FRAMES)
    strip = np.concatenate(list(frames), axis=1)
    height, width = strip.shape[:2]
    scaled = Image.fromarray(strip).resize((max(1, round(width * THUMB_HEIGHT / height)), THUMB_HEIGHT))
    return image_uri(np.asarray(scaled), max_width=10_000)


def render_bench(results: dict[str, Any], out_dir: Path) -> str:
    """HTML of one benchmark run (``results`` as :func:`layerscope.bench.run.run_bench` builds it)."""
    from layerscope import __version__
    from layerscope.bench.generation import VIDEO_DIR
    from layerscope.report.render import _environment

    summary = results["summary"]
    by_key = {(r["id"], r["seed"]): r for r in results["records"]}
    prompts = []
    for prompt in results["prompts"]:
        runs = []
        for seed in summary["seeds"]:
            record = by_key[prompt["id"], seed]
            runs.append(
                {
                    "seed": seed,
                    "thumbnail": thumbnail(out_dir / VIDEO_DIR / f"{prompt['id']}-seed{seed}.mp4"),
                    "all_correct": record["all_correct"],
                    "answers": record["answers"],
                    "consistency": record.get("consistency"),
                }
            )
        prompts.append({**prompt, "runs": runs})
    template = _environment().get_template("bench.html.j2")
    return template.render(
        results=results,
        summary=summary,
        dimensions=list(summary["per_dimension"]),
        prompts=prompts,
        layerscope_version=__version__,
    )
