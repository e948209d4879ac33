"""The shapes world in ``layerscope bench``: its eval set as a bench prompt file, its scorer
as the ``shapes`` judge, and the check of a VLM judge against that scorer.

Why here and not in :mod:`layerscope.bench`: the core never imports the testbed.  The
CLI hands :func:`shapes_factory` to the bench's judge registry, so ``--judge shapes``
and ``--judge vlm:PATH`` run through one harness on one prompt file.

Each exported line carries the scene itself (``scene``), so the programmatic judge
answers from the scene's questions (colours, directions, thresholds) and the video's
pixels, exactly as :mod:`.scorer` does for ``layerscope eval``; the ``questions`` text
is the same check phrased as a yes/no question for a VLM.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from layerscope.bench.judges import Answer
from layerscope.bench.prompts import BenchInputError, BenchPrompt
from layerscope_testbed.shapes.world import Question, Scene, questions


def question_text(scene: Scene, question: Question) -> str:
    """A scorer check as a yes/no question whose expected answer is yes."""
    names = {s.colour: f"{s.colour} {s.kind}" for s in scene.shapes}
    p = question.params
    if question.kind == "present":
        return f"Is there a {names[p['colour']]} at the start of the video?"
    if question.kind == "colour_at_end":
        return f"Has the {names[p['colour']]} turned {p['target']} by the end of the video?"
    if question.kind == "moved":
        return (
            f"Does the {names[p['colour']]} move {p['direction']}, across at least {p['min_distance']:g} of the frame?"
        )
    subject, obj = names[p["subject"]], names[p["object"]]
    if question.kind == "approached":
        return f"Does the {subject} move towards the {obj}?"
    if question.kind == "contact":
        return f"Does the {subject} touch the {obj}?"
    if question.kind == "pushed":
        return f"After they touch, does the {obj} move on, away from the {subject}?"
    raise ValueError(f"unknown question kind {question.kind!r}")


def bench_line(scene: Scene, entry_id: str, image: str) -> dict[str, Any]:
    """One prompt-file line for ``scene`` (image path relative to the file)."""
    return {
        "id": entry_id,
        "image": image,
        "prompt": scene.prompt,
        "dimension": scene.dimension,
        "questions": [question_text(scene, q) for q in questions(scene)],
        "keywords": [scene.subject.colour, scene.subject.kind],
        "scene": scene.to_dict(),
    }


def export_bench(out_dir: str | Path, count: int = 30, split: str = "heldout", seed: int = 0) -> Path:
    """Write ``prompts.jsonl`` + ``images/`` for the eval scenes ``layerscope eval`` uses."""
    from PIL import Image

    from layerscope.outputs import check_output_path, write_text_atomic
    from layerscope_testbed.shapes.evaluate import eval_scenes
    from layerscope_testbed.shapes.render import reference_image

    out_dir = check_output_path(out_dir, "--out", directory=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index, scene in enumerate(eval_scenes(count, split, seed)):
        name = f"{split}-{index:03d}"
        Image.fromarray(reference_image(scene)).save(out_dir / "images" / f"{name}.png")
        lines.append(json.dumps(bench_line(scene, name, f"images/{name}.png")))
    return write_text_atomic(out_dir / "prompts.jsonl", "\n".join(lines) + "\n")


def _scene(prompt: BenchPrompt) -> Scene:
    return Scene.from_dict(prompt.scene)  # type: ignore[arg-type]


class ShapesJudge:
    """``--judge shapes``: the pixel-only scorer of :mod:`.scorer` (verdicts, no margins)."""

    name = "shapes"

    def describe(self) -> dict[str, Any]:
        return {"judge": "shapes", "scorer": "layerscope_testbed.shapes.scorer"}

    def judge(self, video: Path, prompt: BenchPrompt) -> list[Answer]:
        from layerscope.bench.video_io import read_video

        return self.judge_frames(read_video(video), prompt)

    def judge_frames(self, frames: np.ndarray, prompt: BenchPrompt) -> list[Answer]:
        from layerscope_testbed.shapes.scorer import Tracks, answer

        tracks = Tracks(frames)
        checks = questions(_scene(prompt))
        verdicts = [answer(q, tracks) for q in checks]
        return [Answer(question=t, passed=v, raw="yes" if v else "no") for t, v in zip(prompt.questions, verdicts)]


def shapes_factory(argument: str | None, prompts: Sequence[BenchPrompt] = (), **_: Any) -> ShapesJudge:
    """Refuse prompts without a shapes scene (or with questions that do not match it) up front."""
    if argument:
        raise BenchInputError(f"--judge shapes takes no argument (got shapes:{argument})")
    for prompt in prompts:
        fix = "use a prompt file from `layerscope testbed export-bench`, or --judge vlm:PATH"
        if prompt.scene is None:
            raise BenchInputError(
                f"--judge shapes needs the shapes world's 'scene' on every line; {prompt.id} has none; {fix}"
            )
        try:
            checks = questions(_scene(prompt))
        except (KeyError, TypeError, ValueError) as error:
            raise BenchInputError(f"{prompt.id}: 'scene' is not a shapes-world scene ({error}); {fix}") from None
        if len(checks) != len(prompt.questions):
            raise BenchInputError(
                f"{prompt.id}: {len(prompt.questions)} questions but its scene has {len(checks)} checks; {fix}"
            )
    return ShapesJudge()


def _derangement(count: int, seed: int) -> np.ndarray:
    """Scene i gets video partner[i] != i (the scorer's own shuffled-pairing recipe)."""
    order = np.random.default_rng(seed).permutation(count)
    partner = np.empty(count, dtype=int)
    partner[order] = np.roll(order, -1)
    return partner


def judge_validity(
    judge: Any, out_dir: str | Path, *, count: int = 30, split: str = "heldout", seed: int = 0, frames: int = 9,
    size: int = 256, log: Any = print,
) -> dict[str, Any]:  # fmt: skip
    """A judge's agreement with the programmatic oracle on ground-truth and shuffled videos.

    Ground truth: each scene's rendered video (the oracle passes ~all of it).  Shuffled:
    each scene judged on another scene's video (a derangement; the oracle passes only
    coincidences, 0.033 of prompts on the 30 held-out scenes).  Videos go through the
    same mp4 files the benchmark uses.  Agreement is per question (judge verdict ==
    oracle verdict); all-correct rates are given for both.
    """
    from layerscope.bench.prompts import read_bench_prompts
    from layerscope.bench.video_io import write_mp4
    from layerscope.outputs import write_text_atomic
    from layerscope_testbed.shapes.render import render_video

    out_dir = Path(out_dir)
    prompts = read_bench_prompts(export_bench(out_dir, count, split, seed))
    oracle = ShapesJudge()
    truth = [render_video(_scene(p), frames, size, size) for p in prompts]
    partner = _derangement(len(prompts), seed)
    result: dict[str, Any] = {"judge": judge.describe(), "scenes": len(prompts), "split": split, "frames": frames}
    for name, videos in (("ground truth", truth), ("shuffled", [truth[j] for j in partner])):
        folder = out_dir / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        agree, total, confusion, oracle_all, judge_all = 0, 0, {"tp": 0, "tn": 0, "fp": 0, "fn": 0}, [], []
        for prompt, video in zip(prompts, videos):
            path = write_mp4(folder / f"{prompt.id}.mp4", video)
            expected = oracle.judge(path, prompt)
            said = judge.judge(path, prompt)
            for e, s in zip(expected, said):
                agree += e.passed == s.passed
                total += 1
                confusion[("t" if e.passed == s.passed else "f") + ("p" if s.passed else "n")] += 1
            oracle_all.append(all(a.passed for a in expected))
            judge_all.append(all(a.passed for a in said))
        result[name] = {
            "question_agreement": agree / total,
            "questions": total,
            "confusion_vs_oracle": confusion,
            "oracle_all_correct": float(np.mean(oracle_all)),
            "judge_all_correct": float(np.mean(judge_all)),
            "prompt_agreement": float(np.mean(np.array(oracle_all) == np.array(judge_all))),
        }
        log(f"judge validity, {name}: {result[name]}")
    write_text_atomic(out_dir / "judge_validity.json", json.dumps(result, indent=2))
    return result
