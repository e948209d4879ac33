"""The `vlm` judge end to end on CPU with a tiny offline Qwen2.5-VL built here.

The model is the real transformers architecture (``Qwen2_5_VLForConditionalGeneration``)
at toy size -- a 2-layer text model of width 32 with ``mrope_section`` [1, 1, 2], a
2-block vision tower -- with a WordLevel tokenizer that knows the chat-template tokens,
saved with ``save_pretrained`` and loaded back from the directory through
``AutoProcessor`` + ``AutoModelForImageTextToText``, the path a real Qwen2.5-VL-7B takes.
Its weights are random, so its answers mean nothing; what is checked is the plumbing:
margins are logit(yes) - logit(no) at the answer position, batching and left padding
change no margin, verdicts follow the margin's sign, and everything is saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from layerscope.bench.prompts import BenchPrompt
from layerscope.bench.video_io import write_mp4
from layerscope.bench.vlm import VLMJudge
from layerscope.cli import main
from layerscope_testbed.tiny_vlm import build_tiny_qwen2_5_vl


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny-qwen2.5-vl"))


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory) -> Path:
    from layerscope_testbed.shapes.bench import export_bench

    return export_bench(tmp_path_factory.mktemp("shapes-set"), 3)


def _video(tmp_path: Path) -> Path:
    from layerscope_testbed.shapes.evaluate import eval_scenes
    from layerscope_testbed.shapes.render import render_video

    return write_mp4(tmp_path / "v.mp4", render_video(eval_scenes(3)[2], 9, 64, 64))


def test_margins_are_yes_minus_no_logits_and_batching_changes_none(tiny_vlm, tmp_path):
    import torch

    video = _video(tmp_path)
    questions = ("Does the red square touch the yellow circle?", "Is there a red square at the start of the video?",
                 "After they touch, does the yellow circle move on, away from the red square?")  # fmt: skip
    prompt = BenchPrompt("x", 1, video, "the red square pushes the yellow circle.", "interaction", questions)
    batched = VLMJudge(tiny_vlm, frames=4, batch_size=3).judge(video, prompt)
    one_by_one = VLMJudge(tiny_vlm, frames=4, batch_size=1).judge(video, prompt)
    assert [a.question for a in batched] == list(questions)
    # left padding: questions of different lengths share a batch without changing any margin
    lengths = {len(q.split()) for q in questions}
    assert len(lengths) == 3
    assert [a.margin for a in batched] == pytest.approx([a.margin for a in one_by_one], abs=1e-5)
    assert all(a.passed == (a.margin > 0) for a in batched)
    # the margin by hand: one forward pass of the model on the processor's inputs
    judge = VLMJudge(tiny_vlm, frames=4)
    judge.load()
    from layerscope.bench.video_io import read_sampled

    frames = read_sampled(video, 4)
    text = judge._texts([questions[0]], instruction=prompt.prompt)
    inputs = judge.processor(text=text, videos=[frames], return_tensors="pt")
    with torch.no_grad():
        logits = judge.model(**inputs).logits[0, -1]
    vocab = judge.tokenizer.get_vocab()
    expected = float(logits[vocab["Yes"]] - logits[vocab["No"]])
    assert batched[0].margin == pytest.approx(expected, abs=1e-4)
    assert batched[0].raw == judge.tokenizer.decode([int(logits.argmax())]).strip()
    assert "Question: Does the red square touch the yellow circle?" in text[0]
    assert text[0].endswith("<|im_start|>assistant\n")
    # Eq. 14 conditions the answer on the generation prompt S; the ablation leaves it out
    assert 'generated from the instruction "the red square pushes the yellow circle."' in text[0]
    blind = VLMJudge(tiny_vlm, frames=4, with_instruction=False)
    blind.load()
    assert "instruction" not in blind._texts([questions[0]], instruction=prompt.prompt)[0]
    assert judge.describe()["with_instruction"] is True and blind.describe()["with_instruction"] is False


def test_frame_count_is_configurable_and_reaches_the_model(tiny_vlm, tmp_path):
    video = _video(tmp_path)
    judge = VLMJudge(tiny_vlm, frames=4)
    judge.load()
    from layerscope.bench.video_io import read_sampled

    for count, grid_t in ((2, 1), (4, 2), (8, 4)):  # temporal patches of 2 frames (9 frames hold 8 distinct picks)
        frames = read_sampled(video, count)
        inputs = judge.processor(text=judge._texts(["q"]), videos=[frames], return_tensors="pt")
        assert int(inputs["video_grid_thw"][0, 0]) == grid_t


def test_bench_cli_with_the_tiny_vlm_judge_end_to_end(tiny_vlm, shapes_set, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["bench", str(shapes_set), "--judge", f"vlm:{tiny_vlm}", "--out", str(out), "--quiet", "--seeds", "0"]
    args += ["--steps", "1", "--frames", "5", "--height", "64", "--width", "64", "--judge-frames", "4"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["judge"]["judge"] == "vlm" and results["judge"]["frames"] == 4
    answers = [a for r in results["records"] for a in r["answers"]]
    assert len(answers) == 2 + 2 + 3  # the three dimensions' questions
    assert all(isinstance(a["margin"], float) and a["passed"] == (a["margin"] > 0) and a["raw"] for a in answers)
    saved = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [a["margin"] for a in saved] == [a["margin"] for a in answers]
    html = (out / "report.html").read_text()
    assert html.count("margin ") >= len(answers) and "tiny-qwen2.5-vl" in html
    # judged again with another frame count: same videos (resume), fresh answers
    assert main([*args[:-1], "2"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["timing"]["videos_generated"] == 0 and again["judge"]["frames"] == 2
    assert "generated" in capsys.readouterr().out


def test_judge_validity_harness_runs_the_vlm_against_the_oracle(tiny_vlm, tmp_path, capsys):
    out = tmp_path / "validity"
    args = ["bench", "--judge-validity", "--judge", f"vlm:{tiny_vlm}", "--out", str(out), "--scenes", "3"]
    assert main([*args, "--judge-frames", "4"]) == 0
    result = json.loads((out / "judge_validity.json").read_text())
    for name in ("ground truth", "shuffled"):
        block = result[name]
        assert block["questions"] == 7 and sum(block["confusion_vs_oracle"].values()) == 7
        agree = block["confusion_vs_oracle"]["tp"] + block["confusion_vs_oracle"]["tn"]
        assert block["question_agreement"] == agree / 7
    assert result["ground truth"]["oracle_all_correct"] == 1.0
    assert json.loads(capsys.readouterr().out)["scenes"] == 3


def test_a_folder_without_safetensors_is_refused_in_one_line(tmp_path, shapes_set, capsys):
    folder = tmp_path / "vlm"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    out = tmp_path / "out"
    assert main(["bench", str(shapes_set), "--judge", f"vlm:{folder}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no *.safetensors" in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_sampled_frames_are_uniform(tmp_path):
    from layerscope.bench.video_io import read_sampled

    video = np.stack([np.full((16, 16, 3), 25 * t, dtype=np.uint8) for t in range(9)])
    path = write_mp4(tmp_path / "ramp.mp4", video)
    levels = read_sampled(path, 4).reshape(4, -1).mean(axis=1)
    assert levels == pytest.approx([0, 75, 125, 200], abs=3)  # frames 0, 3, 5, 8


def test_a_processor_without_chat_template_is_refused_before_any_video(tiny_vlm, tmp_path, shapes_set, capsys):
    """The tiny VLM with its chat template removed: one line, exit 2, nothing generated or written."""
    import shutil

    folder = tmp_path / "vlm"
    shutil.copytree(tiny_vlm, folder)
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    for name in ("tokenizer_config.json", "processor_config.json"):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text())
            data.pop("chat_template", None)
            path.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["bench", str(shapes_set), "--judge", f"vlm:{folder}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no chat template" in err[0] and not out.exists()
