"""Benchmark: where does Eq. 9's region R_k land, under Eq. 6 as printed (S = -cos) and +cos?

The paper prints S_mn = -cos(t_m, v_n) and cites CLIP Surgery, whose finding is that raw
CLIP patch-text similarity is highest on the *background*; with raw features the printed
sign would then put R_k (and the anchor weights) on the object.  Which sign does that
depends on the CLIP.  On the shapes world the object is known, so this measures it: for
held-out scenes, the IoU of R_k (Eq. 9's cells above tau_region on the latent grid) with
the subject's first-frame mask, for the subject's colour and kind words, under both
signs, with the CLIP the pipeline's image encoder matches (``--clip``; default the
shipped testbed model's).

Printed: mean IoU per sign [95% bootstrap over scenes], the paired difference and its
sign-flip p (over scenes).  JSON has every scene's IoUs.

    python benchmarks/fsg_localisation.py [--scenes 40] [--clip DIR] [--json benchmarks/results/fsg_localisation.json]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from _common import print_table, write_json

GRID = (3, 16, 16)  # the shipped model's token grid at 256x256, 9 frames


def region_iou(region: np.ndarray, mask: np.ndarray) -> float:
    """|R & M| / |R | M| of two boolean grids (0 when both are empty)."""
    union = np.logical_or(region, mask).sum()
    return float(np.logical_and(region, mask).sum() / union) if union else 0.0


def scene_ious(pipe, clip, scene, tau_region: float) -> dict[str, list[float]]:
    """IoU of R_k with the subject's mask for each subject word, under sign -1 and +1."""
    from PIL import Image

    from fg_intervene import fsg
    from fg_intervene.wan import _clip_pixels
    from layerscope.clip import image_patch_features, text_token_features
    from layerscope_testbed.shapes.localisation import token_masks
    from layerscope_testbed.shapes.render import reference_image

    image = Image.fromarray(reference_image(scene))
    _, patches = image_patch_features(clip, _clip_pixels(pipe, image))
    text, pieces = text_token_features(clip, scene.prompt.lower())
    words = fsg.group_words(pieces)
    side = int(round(patches.shape[0] ** 0.5))
    mask = token_masks(scene, GRID, 9)[0]
    result: dict[str, list[float]] = {}
    for sign in (-1, 1):
        similarity = fsg.similarity_matrix(text, patches, sign)
        ious = []
        for keyword in (scene.subject.colour, scene.subject.kind):
            sims = fsg.keyword_similarity(similarity, words, keyword)[None]
            region = fsg.region_weights(sims, (side, side), GRID[1:], tau_region)[0].numpy() > 0
            ious.append(region_iou(region, mask))
        result[str(sign)] = ious
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--clip", help="open_clip folder (default: the shipped testbed model's clip/)")
    parser.add_argument("--tau-region", type=float, default=0.5)
    parser.add_argument("--json", default="benchmarks/results/fsg_localisation.json")
    args = parser.parse_args(argv)
    from layerscope.clip import load_open_clip
    from layerscope.loading import load_pipeline
    from layerscope.proportions import paired_sign_flip_test
    from layerscope_testbed import shipped_model_dir
    from layerscope_testbed.shapes.evaluate import eval_scenes

    started = time.perf_counter()
    pipe, _ = load_pipeline(shipped_model_dir())
    clip = load_open_clip(args.clip or shipped_model_dir() / "clip")
    scenes = eval_scenes(args.scenes)
    per_scene = [scene_ious(pipe, clip, scene, args.tau_region) for scene in scenes]
    means = {sign: np.array([np.mean(s[sign]) for s in per_scene]) for sign in ("-1", "1")}
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(scenes), size=(2000, len(scenes)))
    rows, summary = [], {}
    for sign, values in means.items():
        low, high = np.percentile(values[picks].mean(axis=1), [2.5, 97.5])
        summary[sign] = {"mean_iou": float(values.mean()), "ci": [float(low), float(high)]}
        label = "-cos (Eq. 6 as printed)" if sign == "-1" else "+cos"
        rows.append((label, f"{values.mean():.3f} [{low:.3f}, {high:.3f}]"))
    difference = float((means["-1"] - means["1"]).mean())
    p = paired_sign_flip_test(means["-1"], means["1"])
    print_table(("selection sign", f"IoU of R_k with the subject mask ({len(scenes)} scenes)"), rows)
    print(f"\n-cos minus +cos: {difference:+.3f} (paired sign-flip p={p:.3g})")
    write_json(
        {
            "scenes": len(scenes),
            "clip": str(args.clip or "shipped testbed clip"),
            "tau_region": args.tau_region,
            "summary": summary,
            "difference_minus_plus": difference,
            "p_value": p,
            "per_scene": per_scene,
            "seconds": time.perf_counter() - started,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
