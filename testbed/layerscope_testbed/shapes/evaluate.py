"""Instruction-following benchmark on held-out shapes-world prompts (``layerscope eval``).

Generates one video per held-out scene from its reference frame and prompt, with or
without an intervention, and scores it programmatically (:mod:`layerscope_testbed.shapes.scorer`)
with the paper's rule: a prompt counts only if *all* its questions are answered
correctly.  Reported per dimension (dynamic attribute, motion, interaction) and overall,
with first-frame consistency.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def generate(pipe: Any, scene: Any, *, steps: int, seed: int, guidance: float, frames: int = 9) -> np.ndarray:
    """One video (T, H, W, 3) uint8 for ``scene``, conditioned on its rendered first frame."""
    import torch
    from PIL import Image

    from layerscope.recording import to_uint8
    from layerscope_testbed.shapes.render import reference_image

    image = Image.fromarray(reference_image(scene, height=256, width=256))
    output = pipe(
        image=image,
        prompt=scene.prompt,
        height=256,
        width=256,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return to_uint8(output.frames[0])


def eval_scenes(count: int, split: str = "heldout", seed: int = 0) -> list[Any]:
    """The benchmark's prompts: offset from the training seeds so a train-split eval sees fresh scenes."""
    from layerscope_testbed.shapes.world import sample_scenes

    return sample_scenes(count, split=split, seed=seed + 1000)


def apply_intervention(pipe: Any, scene: Any, intervention: Any) -> Any:
    """Attach ``intervention`` for one generation of ``scene``; returns its handle (``.remove()``).

    The run inputs carry the model id, so an intervention checks its ranking against the
    model exactly as ``layerscope record`` does.
    """
    from PIL import Image

    from layerscope.adapters.registry import resolve_adapter
    from layerscope.interventions import RunInputs
    from layerscope.recording import describe_model, pipeline_dir
    from layerscope_testbed.shapes.render import reference_image

    adapter = resolve_adapter(pipe)
    image = Image.fromarray(reference_image(scene, height=256, width=256))
    inputs = RunInputs(
        pipe=pipe,
        adapter=adapter,
        prompt=scene.prompt,
        image=image,
        height=256,
        width=256,
        num_frames=9,
        grid=adapter.token_grid(9, 256, 256),
        model_dir=pipeline_dir(pipe),
        extra={"model_id": describe_model(pipe)["model_id"]},
    )
    return intervention.apply(inputs)


def check_intervention(pipe: Any, intervention_factory: Any, *, split: str = "heldout", seed: int = 0) -> None:
    """Apply and remove one intervention on the first scene, so setup errors (a ranking of
    another model, a missing CLIP) stop the benchmark before any video is generated."""
    apply_intervention(pipe, eval_scenes(1, split, seed)[0], intervention_factory()).remove()


def evaluate_pipeline(
    pipe: Any,
    *,
    count: int = 30,
    split: str = "heldout",
    seed: int = 0,
    seeds: tuple[int, ...] | list[int] = (0,),
    steps: int = 12,
    guidance: float = 5.0,
    intervention_factory: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``count`` scenes of ``split`` under each generation seed of ``seeds``.

    ``seed`` fixes the scene set (the prompts); ``seeds`` are the generation seeds (the
    paper's five), so the same prompts are scored ``len(seeds)`` times.  Video ``i`` of
    generation seed ``s`` uses noise seed ``10000 s + seed + i`` (for ``seeds=(0,)`` the
    numbering of earlier versions).  ``intervention_factory()`` gives a fresh
    intervention per video.  Adds 95% intervals (bootstrap over prompts, and Wilson) and
    the (prompt x seed) outcome matrices that paired comparisons need.
    """
    from tqdm.auto import tqdm

    from layerscope.proportions import prompt_bootstrap_interval, wilson_interval
    from layerscope_testbed.shapes.render import reference_image
    from layerscope_testbed.shapes.scorer import score_video, summarise

    scenes = eval_scenes(count, split, seed)
    references = [reference_image(s, height=256, width=256) for s in scenes]
    pipe.set_progress_bar_config(disable=True)
    scores = []
    started = time.perf_counter()
    jobs = [(g, index, scene) for g in seeds for index, scene in enumerate(scenes)]
    for generation_seed, index, scene in tqdm(jobs, desc=f"eval {split}", disable=not progress):
        handle = None if intervention_factory is None else apply_intervention(pipe, scene, intervention_factory())
        try:
            video = generate(pipe, scene, steps=steps, seed=10_000 * generation_seed + seed + index, guidance=guidance)
        finally:
            if handle is not None:
                handle.remove()
        # first-frame consistency compares each video with the image it was conditioned on
        scores.append({**score_video(scene, video, references[index]), "prompt_index": index, "seed": generation_seed})
    summary = {**summarise(scores), "scores": scores}
    outcomes = np.array([s["all_correct"] for s in scores], dtype=float).reshape(len(seeds), len(scenes)).T
    groups = {"overall": np.arange(len(scenes))}
    groups.update(
        {d: np.array([i for i, s in enumerate(scenes) if s.dimension == d]) for d in summary["per_dimension"]}
    )
    for name, rows in groups.items():
        target = summary["overall"] if name == "overall" else summary["per_dimension"][name]
        chosen = outcomes[rows]
        target["ci"] = list(prompt_bootstrap_interval(chosen))
        target["wilson"] = list(wilson_interval(int(chosen.sum()), chosen.size))
        target["prompts"], target["seeds"] = int(chosen.shape[0]), len(seeds)
    summary.update(
        {
            "split": split,
            "count": count,
            "steps": steps,
            "guidance": guidance,
            "seed": seed,
            "seeds": list(seeds),
            "outcomes": outcomes.astype(int).tolist(),
            "dimensions": [s.dimension for s in scenes],
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    return summary


def paired_comparison(baseline: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    """Variant minus baseline on the same prompts and seeds: difference and sign-flip p-value."""
    from layerscope.proportions import paired_sign_flip_test

    a, b = np.array(baseline["outcomes"], dtype=float), np.array(variant["outcomes"], dtype=float)
    dimensions = np.array(baseline["dimensions"])
    result = {}
    for name in ["overall", *sorted(set(dimensions))]:
        rows = np.ones(len(dimensions), bool) if name == "overall" else dimensions == name
        result[name] = {
            "difference": float(b[rows].mean() - a[rows].mean()),
            "p_value": paired_sign_flip_test(a[rows], b[rows]),
            "prompts": int(rows.sum()),
        }
    return result


def reference_points(*, count: int = 30, split: str = "heldout", seed: int = 0, size: int = 128) -> dict[str, Any]:
    """The scorer on the same scenes :func:`evaluate_pipeline` uses, fed known videos.

    ``ground truth`` is the ceiling (the scorer's own accuracy, ~1.0); ``static``,
    ``reversed`` and ``shuffled`` (see :func:`~layerscope_testbed.shapes.scorer.chance_level`) are
    the chance level a model has to beat.  Rendered at ``size`` px: the scorer is
    resolution-independent and this keeps it to a second or two.
    """
    from layerscope_testbed.shapes.render import render_video
    from layerscope_testbed.shapes.scorer import chance_level, evaluate, summarise

    scenes = eval_scenes(count, split, seed)
    truth = [render_video(s, 9, size, size) for s in scenes]
    return {"ground truth": summarise(evaluate(scenes, truth)["scores"]), **chance_level(scenes, truth, seed=seed)}


def vae_round_trip(pipe: Any, *, count: int = 30, split: str = "heldout", seed: int = 0) -> dict[str, Any]:
    """The scorer on the ground truth after the model's VAE: encoded, decoded, scored.

    Why: no DiT can generate more than its VAE can decode, so this is the model's own
    ceiling, below the scorer's 1.0 on rendered truth; a dimension far below it is the
    DiT's doing.  Full clips at 256 px through the pipeline's VAE (its device and dtype),
    posterior mean as the pipeline encodes; ~6 s per clip on 2 CPU cores.
    """
    import torch

    from layerscope.recording import to_uint8, uint8_to_vae_input
    from layerscope_testbed.shapes.render import render_video
    from layerscope_testbed.shapes.scorer import evaluate

    vae = pipe.vae
    parameter = next(vae.parameters())
    scenes = eval_scenes(count, split, seed)
    truth = [render_video(scene, 9, 256, 256) for scene in scenes]
    decoded = []
    with torch.no_grad():
        for video in truth:
            clip = uint8_to_vae_input(video[None], parameter.device, parameter.dtype)
            frames = vae.decode(vae.encode(clip).latent_dist.mode()).sample[0]  # (3, T, H, W) in [-1, 1]
            decoded.append(to_uint8(((frames.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).cpu().numpy()))
    result = evaluate(scenes, decoded, [video[0] for video in truth])
    result.pop("scores")
    return result


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per variant, all-correct rate per dimension with its 95% interval."""
    dimensions = sorted({d for r in results.values() for d in r.get("per_dimension", {})})
    header = "| variant | " + " | ".join(dimensions) + " | overall | first-frame consistency |"
    lines = [header, "|" + " --- |" * (len(dimensions) + 3)]

    def cell(entry: dict[str, Any]) -> str:
        value = f"{entry.get('all_correct', float('nan')):.3f}"
        ci = entry.get("ci")
        if ci and all(np.isfinite(ci)):
            value += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
        return value

    for name, result in results.items():
        cells = [cell(result["per_dimension"].get(d, {})) for d in dimensions]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {cell(result['overall'])} | {result['overall']['first_frame_consistency']:.3f} |"
        )
    return "\n".join(lines)


def format_question_rates(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table: per variant, the share of videos passing each kind of question, by dimension."""
    columns = sorted({(d, k) for r in results.values() for d, kinds in r.get("by_question", {}).items() for k in kinds})
    if not columns:
        return ""
    lines = ["| variant | " + " | ".join(f"{d}: {k}" for d, k in columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for name, result in results.items():
        rates = result.get("by_question", {})
        cells = [f"{rates[d][k]:.2f}" if k in rates.get(d, {}) else "-" for d, k in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_comparisons(comparisons: dict[str, dict[str, Any]]) -> str:
    """Markdown table of paired differences (variant - baseline) with sign-flip p-values."""
    if not comparisons:
        return ""
    names = list(next(iter(comparisons.values())))
    lines = ["| variant - baseline | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
    for variant, result in comparisons.items():
        cells = [f"{result[n]['difference']:+.3f} (p={result[n]['p_value']:.3g})" for n in names]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(results: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=float))
    return path


#: What makes two evals' outcomes cells of the same table: the prompts and the generation seeds.
PAIRING_KEYS = ("split", "count", "seed", "seeds")
#: The sampler settings: equal for a comparison of models, the treatment in a comparison of settings.
SETTING_KEYS = ("steps", "guidance")
#: What must match for two evals' outcomes to be paired prompt x seed by prompt x seed.
PROTOCOL_KEYS = PAIRING_KEYS + SETTING_KEYS


def read_results(path: str | Path) -> dict[str, Any]:
    """An eval JSON written by :func:`write_results`, or one clear error naming the problem."""
    from layerscope.errors import LayerScopeError

    path = Path(path)
    if not path.is_file():
        raise LayerScopeError(f"{path}: no such eval file; pass JSON files written by `layerscope eval --out`")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LayerScopeError(f"{path}: not JSON ({error}); pass a file written by `layerscope eval --out`") from None
    # "baseline" is absent from an `--intervene X --skip-baseline` eval: any variant will do
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict) or not data["results"]:
        raise LayerScopeError(f"{path}: not a `layerscope eval --out` file (no results)")
    return data


def compare_results(
    a: dict[str, Any], b: dict[str, Any], variant: str = "baseline", across_settings: bool = False
) -> dict[str, Any]:
    """B minus A for two eval files' ``variant`` (e.g. two models' baselines): the paired test of
    :func:`paired_comparison`, refused unless both ran the same prompts under the same seeds.

    Why a separate entry point: comparing two *models* (a model and its continued version) is
    the question every retraining asks, and their evals necessarily run in two calls.  With
    ``across_settings`` the sampler settings (:data:`SETTING_KEYS`) may differ instead, the
    question of which guidance or step count to use; then the model must be the same, so
    that exactly one thing differs between A and B.
    """
    from layerscope.errors import LayerScopeError

    runs = []
    for name, data in (("A", a), ("B", b)):
        if variant not in data["results"]:
            raise LayerScopeError(
                f"{name} has no variant {variant!r} (it has {', '.join(data['results'])}); pick one with --variant"
            )
        runs.append(data["results"][variant])
    models = [data.get("model", {}).get("model_id") for data in (a, b)]
    for key in PAIRING_KEYS if across_settings else PROTOCOL_KEYS:
        if runs[0].get(key) != runs[1].get(key):
            hint = "" if key in PAIRING_KEYS else ", or pass --across-settings to compare the settings on one model"
            raise LayerScopeError(
                f"the two evals differ in {key} ({runs[0].get(key)!r} vs {runs[1].get(key)!r}): a paired test needs "
                f"the same prompts, seeds, steps and guidance; run both with the same options{hint}"
            )
    if across_settings and models[0] != models[1]:
        raise LayerScopeError(
            f"--across-settings compares sampler settings on one model, but A is {models[0]} and B {models[1]}; "
            "compare models under the same settings instead (drop --across-settings)"
        )
    prompts = [[row["prompt"] for row in run["scores"]] for run in runs]
    if prompts[0] != prompts[1]:
        raise LayerScopeError("the two evals scored different prompts; run both with the same --seed and --count")
    settings = {key: [run.get(key) for run in runs] for key in SETTING_KEYS if runs[0].get(key) != runs[1].get(key)}
    return {
        "a": models[0],
        "b": models[1],
        "variant": variant,
        "protocol": {key: runs[0].get(key) for key in PROTOCOL_KEYS if key not in settings},
        "settings_compared": settings,
        "comparison": paired_comparison(runs[0], runs[1]),
    }


def write_prompt_file(out_dir: str | Path, count: int, split: str = "heldout", seed: int = 0) -> Path:
    """Write ``prompts.jsonl`` and one reference PNG per scene: a ``layerscope sweep`` input.

    The scenes are :func:`eval_scenes` (the benchmark's prompts); keywords are the
    subject's colour and kind, ``questions`` the scorer's checks in words.
    """
    from PIL import Image

    from layerscope.outputs import check_output_path, write_text_atomic
    from layerscope_testbed.shapes.render import reference_image
    from layerscope_testbed.shapes.world import questions

    out_dir = check_output_path(out_dir, "--out", directory=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index, scene in enumerate(eval_scenes(count, split, seed)):
        name = f"images/{split}-{index:03d}.png"
        Image.fromarray(reference_image(scene)).save(out_dir / name)
        lines.append(
            json.dumps(
                {
                    "id": f"{split}-{index:03d}",
                    "image": name,
                    "prompt": scene.prompt,
                    "keywords": [scene.subject.colour, scene.subject.kind],
                    "dimension": scene.dimension,
                    "questions": [q.text for q in questions(scene)],
                    "meta": {"scene": scene.to_dict(), "split": split, "index": index},
                }
            )
        )
    return write_text_atomic(out_dir / "prompts.jsonl", "\n".join(lines) + "\n")


def write_training_data(out_dir: str | Path, count: int, seed: int = 0, frames: int = 9, size: int = 256) -> Path:
    """Write ``train.jsonl`` and one folder of PNG frames per scene: a ``layerscope finetune`` input.

    Scenes come from the training split (the held-out combinations stay unseen); the
    caption is the scene's prompt, the keywords its subject's colour and kind.
    """
    from PIL import Image

    from layerscope.outputs import check_output_path, write_text_atomic
    from layerscope_testbed.shapes.render import render_video
    from layerscope_testbed.shapes.world import sample_scenes

    out_dir = check_output_path(out_dir, "--data", directory=True)
    lines = []
    for index, scene in enumerate(sample_scenes(count, split="train", seed=seed + 5000)):
        folder = out_dir / "clips" / f"train-{index:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for number, frame in enumerate(render_video(scene, num_frames=frames, height=size, width=size)):
            Image.fromarray(frame).save(folder / f"{number:03d}.png")
        lines.append(
            json.dumps(
                {
                    "video": f"clips/train-{index:04d}",
                    "caption": scene.prompt,
                    "keywords": [scene.subject.colour, scene.subject.kind],
                }
            )
        )
    return write_text_atomic(out_dir / "train.jsonl", "\n".join(lines) + "\n")
