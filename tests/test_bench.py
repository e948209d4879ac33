"""`layerscope bench`: prompt file, resumable generation, judges, consistency, results, report, bad input.

Most tests drive the harness with a fake pipeline (frames computed from the seed) and a
fake judge whose answers are a table, so every rate, interval and p-value below is
checked against numbers worked out by hand.  One test runs the shipped default model
through the CLI end to end.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from layerscope.bench.consistency import consistency_from_features
from layerscope.bench.generation import GenerationSettings
from layerscope.bench.judges import Answer
from layerscope.bench.prompts import BenchInputError, read_bench_prompts
from layerscope.bench.run import BenchOptions, run_bench
from layerscope.bench.video_io import read_video, sample_indices, write_mp4
from layerscope.cli import main

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = GenerationSettings(model="fake", steps=1, frames=5, height=32, width=32)


class FakePipe:
    """Stands in for a diffusers I2V pipeline: frame t is the image brightened by 10 t + seed."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[tuple[str, int]] = []
        self.delay = delay

    def __call__(self, *, image, prompt, num_frames, generator, **_):
        seed = int(generator.initial_seed())
        self.calls.append((prompt, seed))
        time.sleep(self.delay)
        base = np.asarray(image, dtype=np.float32) / 255.0
        frames = np.stack([np.clip(base + (10 * t + seed) / 255.0, 0, 1) for t in range(num_frames)])
        return SimpleNamespace(frames=[frames])


class TableJudge:
    """Answers from a table keyed by (prompt id, seed); the video's file name says which."""

    name = "table"

    def __init__(self, table: dict[tuple[str, int], list[bool]]):
        self.table = table
        self.seen: list[str] = []

    def describe(self) -> dict:
        return {"judge": "table", "answers": sorted((f"{k[0]}-{k[1]}", v) for k, v in self.table.items())}

    def judge(self, video: Path, prompt) -> list[Answer]:
        self.seen.append(video.stem)
        seed = int(video.stem.rsplit("-seed", 1)[1])
        verdicts = self.table[prompt.id, seed]
        return [
            Answer(q, v, margin=1.0 if v else -1.0, raw="Yes" if v else "No")
            for q, v in zip(prompt.questions, verdicts)
        ]


def write_prompts(folder: Path, specs: list[tuple[str, str, int]]) -> Path:
    """A prompt file of ``(id, dimension, number of questions)`` lines, each with its own image."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (entry_id, dimension, questions) in enumerate(specs):
        pixels = np.full((32, 32, 3), 40 * index, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{entry_id}.png")
        lines.append(
            json.dumps(
                {
                    "id": entry_id,
                    "image": f"images/{entry_id}.png",
                    "prompt": f"prompt {entry_id}",
                    "dimension": dimension,
                    "questions": [f"question {q} of {entry_id}?" for q in range(questions)],
                }
            )
        )
    path = folder / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


SPECS = [("p0", "A", 2), ("p1", "A", 1), ("p2", "B", 2), ("p3", "B", 3)]
T, F = True, False
TABLE = {
    ("p0", 0): [T, T], ("p0", 1): [T, F],
    ("p1", 0): [T], ("p1", 1): [T],
    ("p2", 0): [F, F], ("p2", 1): [T, F],
    ("p3", 0): [T, T, T], ("p3", 1): [F, T, T],
}  # fmt: skip
ALL_PASS = {key: [True] * len(value) for key, value in TABLE.items()}


def bench(prompts: Path, out: Path, judge, pipe=None, seeds="0-1", **options) -> int:
    pipe = pipe or FakePipe()
    return run_bench(
        BenchOptions(prompts=str(prompts), out_dir=str(out), settings=SETTINGS, judge="table", seeds=seeds,
                     progress=False, **options),
        factories={"table": lambda argument, prompts, **_: judge},
        load_pipe=lambda device: pipe,
        model_info=lambda: {"model_id": "fake-pipe", "weights": "none"},
        log=lambda _: None,
    )  # fmt: skip


@pytest.fixture()
def four_prompts(tmp_path):
    return write_prompts(tmp_path / "set", SPECS)


def test_all_correct_rates_intervals_and_question_rates_match_hand_computed_values(four_prompts, tmp_path):
    out = tmp_path / "run"
    assert bench(four_prompts, out, TableJudge(TABLE)) == 0
    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    # outcomes per prompt (rows) and seed (columns): p0 [1, 0], p1 [1, 1], p2 [0, 0], p3 [1, 0]
    assert summary["outcomes"] == [[1, 0], [1, 1], [0, 0], [1, 0]]
    assert summary["per_dimension"]["A"]["all_correct"] == 0.75
    assert summary["per_dimension"]["B"]["all_correct"] == 0.25
    assert summary["overall"]["all_correct"] == 0.5
    # question pass rate per prompt: p0 3/4, p1 1, p2 1/4, p3 5/6; dimension = mean over its prompts
    assert summary["per_dimension"]["A"]["questions"] == pytest.approx((0.75 + 1.0) / 2, abs=1e-12)
    assert summary["per_dimension"]["B"]["questions"] == pytest.approx((0.25 + 5 / 6) / 2, abs=1e-12)
    assert summary["overall"]["questions"] == pytest.approx((0.75 + 1 + 0.25 + 5 / 6) / 4, abs=1e-12)
    # Wilson 95% over the 8 outcomes, 4 successes: centre 0.5, half-width 0.284784
    assert summary["overall"]["wilson"] == pytest.approx([0.215216, 0.784784], abs=1e-6)
    assert summary["per_dimension"]["A"]["wilson"] == pytest.approx([0.300642, 0.954413], abs=1e-6)
    low, high = summary["overall"]["ci"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0  # a bootstrap over 4 prompts; its draws are pinned by seed 0
    from layerscope.proportions import prompt_bootstrap_interval

    assert [low, high] == list(prompt_bootstrap_interval(np.array(summary["outcomes"], float)))
    rates = {(q["id"], q["question"]): (q["passes"], q["trials"]) for q in summary["per_question"]}
    assert rates["p0", "question 0 of p0?"] == (2, 2)
    assert rates["p0", "question 1 of p0?"] == (1, 2)
    assert rates["p3", "question 0 of p3?"] == (1, 2)
    assert rates["p2", "question 1 of p2?"] == (0, 2)
    assert summary["consistency"]["subject_consistency"]["overall"]["n"] == 0  # no --clip: none computed
    assert summary["total_score"]["value"] is None  # and so no Total Score
    # every answer is kept for audit: 16 answers (2 seeds x 8 questions), margins included
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 16 and {a["margin"] for a in answers} == {1.0, -1.0}
    table = (out / "results.md").read_text()
    assert "| 0.750 [" in table and "| p0 | question 1 of p0? | 1/2 | +0.000 |" in table


def test_compare_is_paired_with_the_sign_flip_p_value_by_hand(four_prompts, tmp_path, capsys):
    assert bench(four_prompts, tmp_path / "a", TableJudge(TABLE)) == 0
    assert bench(four_prompts, tmp_path / "b", TableJudge(ALL_PASS)) == 0
    out = tmp_path / "cmp.json"
    assert main(["bench", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    comparison = json.loads(out.read_text())["comparison"]["all_correct"]
    # per-prompt mean differences: p0 0.5, p1 0, p2 1, p3 0.5; |sum| = 2 is reached by 2 of the
    # 2^3 sign patterns of the three nonzero prompts: p = 0.25
    assert comparison["overall"]["difference"] == 0.5
    assert comparison["overall"]["p_value"] == 0.25
    assert comparison["A"]["difference"] == 0.25 and comparison["A"]["p_value"] == 1.0  # one nonzero prompt: 2/2
    assert comparison["B"]["difference"] == 0.75
    assert "p=0.25" in capsys.readouterr().out


def test_compare_refuses_runs_over_other_prompts(four_prompts, tmp_path, capsys):
    other = write_prompts(tmp_path / "other", SPECS[:3])
    assert bench(four_prompts, tmp_path / "a", TableJudge(TABLE)) == 0
    assert bench(other, tmp_path / "b", TableJudge(TABLE)) == 0
    assert main(["bench", "--compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "same prompts and seeds" in capsys.readouterr().err


def test_saved_videos_are_reused_and_cached_answers_follow_the_judge(four_prompts, tmp_path):
    out = tmp_path / "run"
    first = FakePipe()
    assert bench(four_prompts, out, TableJudge(TABLE), pipe=first) == 0
    assert len(first.calls) == 8
    video = read_video(out / "videos" / "p1-seed1.mp4")
    assert video.shape == (5, 32, 32, 3)
    # the fake brightens frame t by 10 t + seed over the image's grey 40: the mp4 keeps that to a few units
    assert np.abs(video[:, 8:24, 8:24].astype(float).mean(axis=(1, 2, 3)) - (40 + 1 + 10 * np.arange(5))).max() < 3
    png = np.asarray(Image.open(out / "videos" / "p1-seed1.png"))
    assert png.shape == (32, 32, 3) and abs(float(png.mean()) - 41) < 3
    second, judge = FakePipe(), TableJudge(TABLE)
    assert bench(four_prompts, out, judge, pipe=second) == 0
    assert second.calls == [] and judge.seen == []  # nothing regenerated, nothing re-judged
    changed = TableJudge(ALL_PASS)
    assert bench(four_prompts, out, changed, pipe=second) == 0
    assert second.calls == [] and len(changed.seen) == 8  # another judge: same videos, new answers
    assert json.loads((out / "results.json").read_text())["summary"]["overall"]["all_correct"] == 1.0
    third, again = FakePipe(), TableJudge(ALL_PASS)
    assert bench(four_prompts, out, again, pipe=third, resume=False) == 0
    assert len(third.calls) == 8 and len(again.seen) == 8  # --no-resume: made again, so judged again


def test_other_settings_on_resume_are_refused_not_mixed(four_prompts, tmp_path):
    out = tmp_path / "run"
    assert bench(four_prompts, out, TableJudge(TABLE)) == 0
    with pytest.raises(BenchInputError, match="settings"):
        run_bench(
            BenchOptions(prompts=str(four_prompts), out_dir=str(out), seeds="0-1", judge="table", progress=False,
                         settings=GenerationSettings(model="fake", steps=2, frames=5, height=32, width=32)),
            factories={"table": lambda argument, prompts, **_: TableJudge(TABLE)},
            load_pipe=lambda device: FakePipe(),
            log=lambda _: None,
        )  # fmt: skip


KILLED_RUN = """
import sys, time
from types import SimpleNamespace
import numpy as np
sys.path.insert(0, {tests!r})
from test_bench import FakePipe, TableJudge, TABLE, bench
from pathlib import Path
bench(Path({prompts!r}), Path({out!r}), TableJudge(TABLE), pipe=FakePipe(delay=0.6))
"""


def test_resume_after_kill_regenerates_nothing_already_saved(four_prompts, tmp_path):
    out = tmp_path / "run"
    code = KILLED_RUN.format(tests=str(ROOT / "tests"), prompts=str(four_prompts), out=str(out))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    videos = out / "videos"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(videos.glob("*.json"))) < 3:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    saved = sorted(p.stem for p in videos.glob("*.json"))
    assert 3 <= len(saved) < 8, (saved, child.stderr.read().decode()[-2000:])
    mtimes = {p.name: p.stat().st_mtime_ns for p in videos.iterdir() if p.stem in saved}
    pipe = FakePipe()
    assert bench(four_prompts, out, TableJudge(TABLE), pipe=pipe) == 0
    made = {f"prompt {name.rsplit('-seed', 1)[0]}|{name.rsplit('-seed', 1)[1]}" for name in saved}
    assert {f"{p}|{s}" for p, s in pipe.calls}.isdisjoint(made)
    assert len(pipe.calls) == 8 - len(saved)  # only the unsaved ones (the one in flight included)
    assert {p.name: p.stat().st_mtime_ns for p in videos.iterdir() if p.stem in saved} == mtimes
    assert len(list(videos.glob("*.json"))) == 8


def test_consistency_matches_hand_computed_cosines():
    # frames at 0, 45 and 90 degrees from the reference: conformity [1, 1/sqrt2, 0], consecutive [1/sqrt2, 1/sqrt2]
    scores = consistency_from_features(np.array([2.0, 0.0]), np.array([[1.0, 0.0], [3.0, 3.0], [0.0, 0.5]]))
    assert scores["conformity"] == pytest.approx([1.0, math.sqrt(0.5), 0.0], abs=1e-12)
    assert scores["consecutive"] == pytest.approx([math.sqrt(0.5)] * 2, abs=1e-12)
    assert scores["subject_consistency"] == pytest.approx(0.5 + 0.5 * math.sqrt(0.5), abs=1e-12)  # 0.853553
    assert scores["background_consistency"] == pytest.approx(0.4 + 0.6 * math.sqrt(0.5), abs=1e-12)  # 0.824264
    # negative cosines count as 0 (VBench clips them): a frame pointing away from the reference
    flipped = consistency_from_features(np.array([1.0, 0.0]), np.array([[1.0, 0.0], [-1.0, 0.0]]))
    assert flipped["conformity"] == [1.0, 0.0] and flipped["consecutive"] == [0.0]
    assert flipped["subject_consistency"] == 0.5 and flipped["background_consistency"] == pytest.approx(0.4)


def test_clip_consistency_of_an_mp4_streams_frames_and_equals_the_feature_formula(tmp_path):
    from layerscope.bench.consistency import ClipFeatures
    from layerscope_testbed import shipped_model_dir
    from layerscope_testbed.shapes.evaluate import eval_scenes
    from layerscope_testbed.shapes.render import render_video

    clip = ClipFeatures(shipped_model_dir() / "clip")
    video = render_video(eval_scenes(2)[1], 9, 64, 64)  # a motion scene
    path = write_mp4(tmp_path / "v.mp4", video)
    decoded = read_video(path)
    scores = clip.video(video[0], path)
    expected = consistency_from_features(clip.encode([video[0]])[0], clip.encode(list(decoded)))
    assert scores["subject_consistency"] == pytest.approx(expected["subject_consistency"], abs=1e-9)
    assert scores["background_consistency"] == pytest.approx(expected["background_consistency"], abs=1e-9)
    still = write_mp4(tmp_path / "still.mp4", np.repeat(video[:1], 9, axis=0))
    repeated = clip.video(video[0], still)  # the reference repeated: 1 but for the mp4's compression
    assert repeated["subject_consistency"] > max(0.98, scores["subject_consistency"])
    assert repeated["background_consistency"] > scores["background_consistency"]


def test_uniform_frame_sampling_keeps_first_and_last():
    assert sample_indices(9, 4) == [0, 3, 5, 8]  # round(i * 8 / 3)
    assert sample_indices(81, 8) == [0, 11, 23, 34, 46, 57, 69, 80]
    assert sample_indices(5, 8) == [0, 1, 2, 3, 4]
    assert sample_indices(5, 1) == [0]


# ---------------------------------------------------------------- the shapes world through the bench


def test_export_bench_and_shapes_judge_agree_with_the_oracle_on_truth_and_shuffled(tmp_path):
    from layerscope_testbed.shapes.bench import ShapesJudge, judge_validity

    result = judge_validity(ShapesJudge(), tmp_path / "validity", count=6, log=lambda _: None)
    assert result["ground truth"]["oracle_all_correct"] == 1.0  # through the mp4 files, as the bench reads them
    assert result["ground truth"]["question_agreement"] == 1.0
    assert result["shuffled"]["question_agreement"] == 1.0  # the oracle agrees with itself...
    assert result["shuffled"]["oracle_all_correct"] <= 1 / 6  # ...and shuffled videos pass only by coincidence
    prompts = read_bench_prompts(tmp_path / "validity" / "prompts.jsonl")
    assert [p.dimension for p in prompts] == ["dynamic_attribute", "motion", "interaction"] * 2
    assert prompts[0].questions[0].startswith("Is there a ") and prompts[0].questions[0].endswith("?")
    assert all(p.scene is not None and p.keywords for p in prompts)


def test_bench_cli_on_the_shipped_model_records_and_writes_results_and_report(tmp_path, capsys):
    assert main(["testbed", "export-bench", "--out", str(tmp_path / "set"), "--scenes", "2"]) == 0
    out = tmp_path / "run"
    args = ["bench", str(tmp_path / "set" / "prompts.jsonl"), "--judge", "shapes", "--out", str(out), "--quiet"]
    args += ["--steps", "2", "--frames", "5", "--height", "64", "--width", "64", "--record"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    import layerscope

    store = layerscope.open_run(out / "stores" / "heldout-001-seed0.zarr")  # --record: maps beside the video
    assert store.attrs["status"] == "complete" and store.attrs["prompt"] == results["prompts"][1]["prompt"]
    assert np.array_equal(store["video"].values[0], np.asarray(Image.open(out / "videos" / "heldout-001-seed0.png")))
    assert results["model"]["model_id"].startswith("layerscope-shapes-wan-i2v")
    assert len(results["records"]) == 2 and all(len(r["answers"]) == 2 for r in results["records"])
    subject = results["summary"]["consistency"]["subject_consistency"]["overall"]
    assert subject["n"] == 2 and 0.0 < subject["mean"] <= 1.0
    total = results["summary"]["total_score"]  # the paper's Table 1 total, in JSON, markdown and HTML
    assert total["value"] == pytest.approx(np.mean(list(total["components"].values())))
    assert set(total["components"]) == {"I2V subject", "I2V background", *results["summary"]["per_dimension"]}
    assert "total score" in (out / "results.md").read_text()
    html = (out / "report.html").read_text()
    assert f'id="total-score" data-value="{total["value"]}"' in html
    assert html.count('class="prompt-card"') == 2 and html.count("data:image/png;base64,") == 2
    assert "layerscope-shapes-wan-i2v" in html
    assert "wrote" in capsys.readouterr().out


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing created


def _bad(args: list[str], capsys, out: Path) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    return err


def test_empty_prompt_file(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("# nothing here\n\n")
    out = tmp_path / "out"
    assert "has no prompts" in _bad(["bench", str(empty), "--judge", "shapes", "--out", str(out)], capsys, out)


def test_missing_image(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"image": "nope.png", "prompt": "x", "dimension": "d", "questions": ["q?"]}) + "\n")
    out = tmp_path / "out"
    assert "nope.png not found" in _bad(["bench", str(path), "--judge", "shapes", "--out", str(out)], capsys, out)


@pytest.mark.parametrize(
    "judge, message",
    [("gpt4", "is not a judge"), ("vlm", "needs a model directory"), ("vlm:/no/such/dir", "no such directory")],
)
def test_bad_judge(four_prompts, tmp_path, capsys, judge, message):
    out = tmp_path / "out"
    assert message in _bad(["bench", str(four_prompts), "--judge", judge, "--out", str(out)], capsys, out)


def test_shapes_judge_needs_scenes(four_prompts, tmp_path, capsys):
    out = tmp_path / "out"
    assert "'scene'" in _bad(["bench", str(four_prompts), "--judge", "shapes", "--out", str(out)], capsys, out)


def test_out_under_a_file(four_prompts, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "run"
    err = _bad(["bench", str(four_prompts), "--judge", "shapes", "--out", str(out)], capsys, out)
    assert "is a file" in err


def test_bad_json_line_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text('{"image": "a.png"\n')
    out = tmp_path / "out"
    assert f"{path}:1" in _bad(["bench", str(path), "--judge", "shapes", "--out", str(out)], capsys, out)


def test_fg_options_without_intervene(tmp_path, capsys):
    from layerscope_testbed.shapes.bench import export_bench

    prompts = export_bench(tmp_path / "set", 1)
    out = tmp_path / "out"
    args = ["bench", str(prompts), "--judge", "shapes", "--out", str(out), "--ranking", "r.json"]
    assert "need --intervene" in _bad(args, capsys, out)


def test_bench_help_does_not_import_torch():
    code = "import sys; from layerscope.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- the HTML report in a real browser


def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="Debian chromium is not installed (make test installs it)")
def test_bench_report_renders_in_headless_chromium(four_prompts, tmp_path):
    from bs4 import BeautifulSoup

    out = tmp_path / "run"
    assert bench(four_prompts, out, TableJudge(TABLE)) == 0
    page = out / "report.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}"]
    shot = tmp_path / "shot.png"
    run = [_chromium(), *flags, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()]
    subprocess.run(run, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (1600, 1200) and pixels.std() > 20
    dom = subprocess.run(
        [_chromium(), *flags, "--dump-dom", "--virtual-time-budget=2000", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    soup = BeautifulSoup(dom, "html.parser")
    assert soup.body["data-ready"] == "1" and soup.body["data-js-errors"] == "0"
    cards = soup.select("section.prompt-card")
    assert [c["data-id"] for c in cards] == ["p0", "p1", "p2", "p3"]
    p0 = {f["data-seed"]: f for f in cards[0].select("figure")}
    assert p0["0"]["data-all-correct"] == "1" and p0["1"]["data-all-correct"] == "0"
    assert [li["class"] for li in p0["1"].select("li")] == [["yes"], ["no"]]
    assert [li["data-margin"] for li in p0["1"].select("li")] == ["1.0", "-1.0"]
    rates = [td["data-rate"] for td in soup.select("#summary td[data-rate]")]
    assert rates == ["0.75", "0.25", "0.5"]


@pytest.mark.slow  # ~4 min here: a recorded ranking and four 256x256 generations
def test_focal_guidance_with_zero_strength_equals_the_baseline_and_compares_as_no_difference(
    base_ranking, tmp_path, capsys
):
    from layerscope_testbed.shapes.bench import export_bench

    prompts = export_bench(tmp_path / "set", 2)
    common = ["bench", str(prompts), "--judge", "shapes", "--model", "random", "--quiet", "--no-consistency"]
    common += ["--steps", "1", "--frames", "5"]  # 256x256: the ranking's token grid
    assert main([*common, "--out", str(tmp_path / "base")]) == 0
    fg = ["--intervene", "focal-guidance", "--ranking", str(base_ranking), "--fg-set", "weak_layers=[2]"]
    for setting in ("tau_sel=-1", "lambda_txt=0", "lambda_lat=0", "lambda_cache=0"):
        fg += ["--fg-set", setting]
    # a ranking made at another resolution is refused in one line before any video is made
    capsys.readouterr()
    assert main([*common, "--height", "64", "--width", "64", "--out", str(tmp_path / "bad"), *fg]) == 2
    err = capsys.readouterr().err
    assert "token grid" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad" / "videos").exists()
    assert main([*common, "--out", str(tmp_path / "fg"), *fg]) == 0
    settings = json.loads((tmp_path / "fg" / "results.json").read_text())["settings"]
    assert settings["intervention"]["weak_layers"] == [2] and settings["intervention"]["lambda_lat"] == 0
    for name in ("heldout-000-seed0", "heldout-001-seed0"):  # FG at strength 0 is the baseline, bit for bit
        base = read_video(tmp_path / "base" / "videos" / f"{name}.mp4")
        assert np.array_equal(base, read_video(tmp_path / "fg" / "videos" / f"{name}.mp4"))
    capsys.readouterr()
    assert main(["bench", "--compare", str(tmp_path / "base"), str(tmp_path / "fg")]) == 0
    assert "+0.000, p=1" in capsys.readouterr().out


def test_total_score_is_the_mean_of_consistency_and_dimension_rates_by_hand():
    from layerscope.bench.results import total_score

    outcomes = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], dtype=float)  # dimension A: p0, p1; B: p2, p3
    subject = np.array([[0.9, 0.8], [1.0, 1.0], [0.7, 0.9], [0.8, 0.8]])
    background = np.full((4, 2), 0.95)
    groups = {"A": [0, 1], "B": [2, 3]}
    total = total_score(outcomes, {"subject_consistency": subject, "background_consistency": background}, groups)
    # components: subject 0.8625, background 0.95, A 0.75, B 0.25 -> mean 0.703125
    assert total["components"] == pytest.approx({"I2V subject": 0.8625, "I2V background": 0.95, "A": 0.75, "B": 0.25})
    assert total["value"] == pytest.approx(0.703125)
    assert total["ci"][0] <= total["value"] <= total["ci"][1]
    none = {"subject_consistency": np.full((4, 2), np.nan), "background_consistency": np.full((4, 2), np.nan)}
    assert total_score(outcomes, none, groups)["value"] is None  # no CLIP: no total


def test_consistency_frames_keep_their_aspect_ratio_and_are_centre_cropped():
    from layerscope.bench.consistency import resize_and_crop

    # a 60x120 frame: left quarter red, middle half green, right quarter blue
    frame = np.zeros((60, 120, 3), dtype=np.uint8)
    frame[:, :30, 0] = 255
    frame[:, 30:90, 1] = 255
    frame[:, 90:, 2] = 255
    out = resize_and_crop(frame, (30, 30))  # shorter side 60 -> 30, width 120 -> 60, centre 30 columns
    assert out.shape == (30, 30, 3)
    # the centre crop holds only the green middle (a squash would have kept red and blue at the edges)
    assert out[:, :, 1].min() > 200 and out[:, :, 0].max() < 60 and out[:, :, 2].max() < 60
