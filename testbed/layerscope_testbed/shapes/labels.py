"""Human labels of the shipped model's own videos, to validate the pixel scorer where it matters.

Why: the scorer was checked on rendered ground truth (1.00) and on chance videos, but the
model's videos drift and grow coloured blobs, which is exactly where a colour-segmenting
scorer can go wrong.  ``python -m layerscope_testbed.shapes.labels render OUT`` generates
the labelled videos exactly as ``layerscope eval`` does (same scenes, steps, guidance and
noise seeds) and writes one contact sheet per video (every frame, the prompt and the
questions) to look at; the labels, one verdict per question given by a person looking at
the sheets, live in ``model_video_labels.json`` beside this file, together with the
scorer's answers at labelling time.  :func:`agreement` compares the two.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: Labels of the shipped model's videos (its ``model`` key names the model they were made on).
LABEL_FILE = Path(__file__).resolve().parent / "model_video_labels.json"
#: Labels of earlier shipped models, kept as data in the repository's ``testbed/archive/``
#: (never in a wheel: their videos can only be regenerated with those weights, in the
#: repository's history).  Empty outside a source checkout.
ARCHIVE = Path(__file__).resolve().parents[2] / "archive"
ARCHIVED_LABEL_FILES = tuple(
    path for path in (ARCHIVE / f"model_video_labels_v{version}.json" for version in (2, 3, 4, 5, 6)) if path.is_file()
)
#: (eval prompt index, generation seed): the 30 eval prompts under generation seed 0, i.e. the
#: videos ``layerscope eval`` (and ``--seeds 0-4``'s first seed) scores.
JOBS = [(i, 0) for i in range(30)]
STEPS, GUIDANCE, COUNT = 12, 5.0, 30  # layerscope eval's defaults


def generate_job(pipe: Any, index: int, seed: int) -> tuple[Any, np.ndarray]:
    """The video ``layerscope eval --seeds SEED`` scores for eval prompt ``index`` (scene seed 0)."""
    from layerscope_testbed.shapes.evaluate import eval_scenes, generate

    scene = eval_scenes(COUNT)[index]
    return scene, generate(pipe, scene, steps=STEPS, seed=10_000 * seed + index, guidance=GUIDANCE)


def contact_sheet(scene: Any, video: np.ndarray, title: str) -> Any:
    """All frames side by side at 160 px with the prompt and the questions above them."""
    from PIL import Image, ImageDraw

    from layerscope_testbed.shapes.world import questions

    size = 160
    frames = [Image.fromarray(frame).resize((size, size), Image.Resampling.NEAREST) for frame in video]
    lines = [f"{title}: {scene.prompt}", *(f"Q{k}: {q.text}" for k, q in enumerate(questions(scene)))]
    sheet = Image.new("RGB", (size * len(frames) + 4 * (len(frames) - 1), size + 16 * len(lines) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for row, line in enumerate(lines):
        draw.text((4, 4 + 16 * row), line, fill="black")
    for k, frame in enumerate(frames):
        sheet.paste(frame, (k * (size + 4), 16 * len(lines) + 8))
    return sheet


def render(out_dir: str | Path, pipe: Any = None, model: str | Path | None = None) -> Path:
    """Generate every job's video, write ``video-NN.png`` sheets and ``scorer.json`` (the scorer's answers).

    The videos come from ``pipe``, else from ``model`` (a model directory), else from the shipped model.
    """
    from layerscope.loading import load_pipeline
    from layerscope_testbed import shipped_model_dir
    from layerscope_testbed.shapes.scorer import score_video

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if pipe is None:
        pipe, _ = load_pipeline(model or shipped_model_dir())
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for n, (index, seed) in enumerate(JOBS):
        scene, video = generate_job(pipe, index, seed)
        score = score_video(scene, video)
        contact_sheet(scene, video, f"video {n:02d} (prompt {index}, seed {seed})").save(out / f"video-{n:02d}.png")
        rows.append({"video": n, "prompt_index": index, "seed": seed, "prompt": scene.prompt,
                     "questions": list(score["questions"]), "scorer": [bool(a) for a in score["answers"]]})  # fmt: skip
        print(f"video {n:02d}: {scene.prompt} scorer {score['answers']}", flush=True)
    path = out / "scorer.json"
    path.write_text(json.dumps(rows, indent=2))
    return path


def load_labels(path: str | Path = LABEL_FILE) -> list[dict[str, Any]]:
    return json.loads(Path(path).read_text())["videos"]


def labelled_model(path: str | Path = LABEL_FILE) -> str:
    """The model id (``name-vN``) whose videos a label file describes."""
    return json.loads(Path(path).read_text())["model"]


def agreement(videos: list[dict[str, Any]]) -> dict[str, Any]:
    """Scorer vs human: agreement per question and per video (all-correct), with Wilson 95% intervals,
    and the confusion counts of the all-correct verdict (human rows, scorer columns)."""
    from layerscope.proportions import wilson_interval

    questions = [(h, s) for v in videos for h, s in zip(v["human"], v["scorer"])]
    q_agree = sum(h == s for h, s in questions)
    verdicts = [(all(v["human"]), all(v["scorer"])) for v in videos]
    v_agree = sum(h == s for h, s in verdicts)
    pairs = [(h, s) for h in (True, False) for s in (True, False)]
    confusion = {f"human {h} / scorer {s}": sum(p == (h, s) for p in verdicts) for h, s in pairs}
    return {
        "videos": len(videos),
        "questions": len(questions),
        "question_agreement": q_agree / len(questions),
        "question_agreement_ci": list(wilson_interval(q_agree, len(questions))),
        "all_correct_agreement": v_agree / len(videos),
        "all_correct_agreement_ci": list(wilson_interval(v_agree, len(videos))),
        "human_all_correct": sum(h for h, _ in verdicts) / len(videos),
        "scorer_all_correct": sum(s for _, s in verdicts) / len(videos),
        "confusion": confusion,
    }


if __name__ == "__main__":  # python -m layerscope_testbed.shapes.labels render OUT_DIR [MODEL_DIR]
    if len(sys.argv) not in (3, 4) or sys.argv[1] != "render":
        sys.exit("usage: python -m layerscope_testbed.shapes.labels render OUT_DIR [MODEL_DIR]")
    print(render(sys.argv[2], model=sys.argv[3] if len(sys.argv) == 4 else None))
