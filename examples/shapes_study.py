"""Does the trained shapes-world model have semantic-weak layers?  Record N held-out prompts,
rank the layers over all of them (as the paper averages 50 samples), and save the curves.

    python examples/shapes_study.py --out-dir runs/study --count 20

Writes one store per prompt, ``ranking.json`` (averaged over the runs), ``curves.png``
(Moran's I and std per layer with a spread band, weak band shaded) and ``summary.json``.
Keywords per prompt are the subject's colour and kind ("red", "circle").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="runs/study")
    parser.add_argument("--model", default="default")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="band", choices=("band", "bottom-k", "threshold"))
    args = parser.parse_args(argv)

    from tqdm.auto import tqdm

    from layerscope.loading import load_pipeline, model_info
    from layerscope.ranking import rank_stores
    from layerscope.recording import record
    from layerscope.report.figures import layer_curves
    from layerscope.testbed import resolve_model
    from layerscope.testbed.shapes.render import reference_image
    from layerscope.testbed.shapes.world import sample_scenes

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe, model_dir = load_pipeline(resolve_model(args.model))
    scenes = sample_scenes(args.count, split="heldout", seed=args.seed + 2000)
    stores = []
    for index, scene in enumerate(tqdm(scenes, desc="recording held-out prompts")):
        store = out / f"run{index:03d}.zarr"
        record(
            pipe,
            store,
            image=reference_image(scene),
            prompt=scene.prompt,
            keywords=[scene.subject.colour, scene.subject.kind],
            height=256,
            width=256,
            num_frames=9,
            num_inference_steps=args.steps,
            seed=args.seed + index,
            overwrite=True,
            progress=False,
        )
        stores.append(store)
    ranking = rank_stores(stores, method=args.method)
    ranking.save(out / "ranking.json")
    print(ranking.table())
    figure = layer_curves([ranking], [f"{args.count} held-out prompts"], weak_layers=ranking.weak_layers)
    figure.savefig(out / "curves.png", dpi=100, bbox_inches="tight")
    summary = {
        "model": model_info(model_dir),
        "prompts": [s.prompt for s in scenes],
        "weak_layers": ranking.weak_layers,
        "explanation": ranking.explanation,
        "moran_i": [round(row["moran_i"], 4) for row in ranking.layers],
        "std": [round(row["std"], 4) for row in ranking.layers],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out / 'ranking.json'}, {out / 'curves.png'}, {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
