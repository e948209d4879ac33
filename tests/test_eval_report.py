"""The HTML section of `layerscope eval` (testbed/layerscope_testbed/shapes/eval_report.py), parsed and in a browser."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from bs4 import BeautifulSoup

from layerscope.cli import main
from layerscope_testbed.shapes.eval_report import outcome_grid, render_eval_html

PROMPTS = [
    ("the red square turns green.", "dynamic_attribute", ["the red square is visible", "the red square is green"]),
    ("the blue circle moves up.", "motion", ["the blue circle is visible", "the blue circle moved up"]),
    ("the <b>yellow</b> circle pushes the green triangle.", "interaction", ["approached", "touched", "pushed"]),
]


def _variant(answers: dict[tuple[int, int], list[bool]], seeds=(0, 1)) -> dict:
    """An eval variant as evaluate_pipeline writes it, with every number computed here by hand."""
    scores = []
    for seed in seeds:
        for index, (prompt, dimension, questions) in enumerate(PROMPTS):
            passed = answers[index, seed]
            scores.append(
                {"prompt": prompt, "dimension": dimension, "questions": dict(zip(questions, passed)),
                 "answers": passed, "all_correct": all(passed), "prompt_index": index, "seed": seed}
            )  # fmt: skip
    outcomes = [[int(all(answers[i, s])) for s in seeds] for i in range(len(PROMPTS))]
    per_dimension = {
        d: {"all_correct": float(np.mean(outcomes[i])), "ci": [0.0, 1.0], "questions": 0.5, "count": len(seeds)}
        for i, (_, d, _) in enumerate(PROMPTS)
    }
    overall = {"all_correct": float(np.mean(outcomes)), "ci": [0.1, 0.9], "wilson": [0.12, 0.88],
               "questions": 0.6, "first_frame_consistency": 0.983, "count": len(scores)}  # fmt: skip
    return {"per_dimension": per_dimension, "overall": overall, "scores": scores, "outcomes": outcomes,
            "by_question": {"interaction": {"approached": 0.5, "contact": 1.0, "pushed": 0.0}},
            "split": "heldout", "count": 3, "seed": 0, "seeds": list(seeds), "steps": 12, "guidance": 5.0,
            "dimensions": [d for _, d, _ in PROMPTS]}  # fmt: skip


def _eval_data() -> dict:
    base = _variant({
        (0, 0): [True, True], (0, 1): [True, False], (1, 0): [True, True], (1, 1): [True, True],
        (2, 0): [True, True, False], (2, 1): [False, True, False],
    })  # fmt: skip
    fg = _variant({key: [True] * len(PROMPTS[key[0]][2]) for key in [(i, s) for i in range(3) for s in (0, 1)]})
    comparisons = {"focal-guidance": {
        "overall": {"difference": 0.5, "p_value": 0.25, "prompts": 3},
        "motion": {"difference": 0.0, "p_value": 1.0, "prompts": 1},
    }}  # fmt: skip
    references = {"ground truth": {"per_dimension": {d: {"all_correct": 1.0} for _, d, _ in PROMPTS},
                                   "overall": {"all_correct": 1.0}}}  # fmt: skip
    return {
        "model": {"model_id": "shapes-v6", "weights": "trained"},
        "results": {"baseline": base, "focal-guidance": fg},
        "comparisons": comparisons,
        "reference_points": references,
    }


def test_outcome_grid_rows_are_prompts_and_cells_seeds_with_the_failed_questions():
    rows = outcome_grid(_eval_data()["results"]["baseline"])
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert [[c["passed"] for c in r["cells"]] for r in rows] == [[True, False], [True, True], [False, False]]
    assert [r["passed"] for r in rows] == [1, 2, 0]
    assert rows[0]["cells"][1]["failed"] == ["the red square is green"]
    assert rows[2]["cells"][1]["failed"] == ["approached", "pushed"]


def test_the_page_shows_rates_intervals_tests_and_every_outcome():
    soup = BeautifulSoup(render_eval_html(_eval_data()), "html.parser")
    assert soup.select_one("#model-id").text == "shapes-v6" and soup.select_one("#seeds").text == "0,1"
    baseline = soup.select_one('#summary tr[data-variant="baseline"]')
    # dimensions in the world's order, then overall: 1/2, 2/2, 0/2 and 3/6
    assert [td["data-rate"] for td in baseline.select("td[data-rate]")] == ["0.5", "1.0", "0.0", "0.5"]
    assert "[0.10, 0.90]" in baseline.text and "[0.12, 0.88]" in baseline.text
    row = soup.select_one('#comparisons tr[data-variant="focal-guidance"]')
    assert "+0.500" in row.text and "p=0.25" in row.text and "no significant effect" in row.text
    assert [th.text for th in soup.select("#by-question thead th")][1:] == [
        "interaction: approached", "interaction: contact", "interaction: pushed"
    ]  # fmt: skip
    grid = soup.select_one('table.outcomes[data-variant="baseline"]')
    cells = [[td["data-all-correct"] for td in tr.select("td.outcome")] for tr in grid.select("tbody tr")]
    assert cells == [["1", "0"], ["1", "1"], ["0", "0"]]
    assert grid.select("tbody tr")[2].select("td.outcome")[1]["title"] == "approached; pushed"
    # the prompt is user text: escaped, never markup
    assert grid.select_one("b") is None and "<b>yellow</b>" in grid.text
    assert soup.select_one('#reference tr[data-reference="ground truth"]') is not None


def test_a_significant_difference_is_called_so():
    data = _eval_data()
    data["comparisons"]["focal-guidance"]["overall"]["p_value"] = 0.01
    soup = BeautifulSoup(render_eval_html(data), "html.parser")
    assert "significant at 0.05" in soup.select_one("#comparisons tbody tr").text


def test_an_eval_file_from_before_intervals_and_question_kinds_still_renders():
    data = _eval_data()
    del data["comparisons"], data["results"]["focal-guidance"]
    for entry in [data["results"]["baseline"]["overall"], *data["results"]["baseline"]["per_dimension"].values()]:
        entry.pop("ci"), entry.pop("wilson", None)
    del data["results"]["baseline"]["by_question"]
    soup = BeautifulSoup(render_eval_html(data), "html.parser")
    assert soup.select_one("#by-question") is None and soup.select_one("#comparisons") is None
    assert "[" not in soup.select_one('#summary tr[data-variant="baseline"] td[data-rate]').text


def test_report_renders_an_eval_json_and_refuses_compare(tmp_path, capsys):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(_eval_data()))
    assert main(["report", str(path), "--out", str(tmp_path / "eval.html")]) == 0
    soup = BeautifulSoup((tmp_path / "eval.html").read_text(), "html.parser")
    assert len(soup.select("table.outcomes")) == 2
    capsys.readouterr()
    assert main(["report", str(path), "--compare", str(path), "--out", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layerscope eval --compare" in err[0] and not (tmp_path / "x.html").exists()
    (tmp_path / "other.json").write_text('{"rows": []}')
    assert main(["report", str(tmp_path / "other.json"), "--out", str(tmp_path / "y.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a `layerscope eval --out` file" in err[0] and not (tmp_path / "y.html").exists()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="Debian chromium is not installed (make test installs it)")
def test_the_eval_page_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    page = tmp_path / "eval.html"
    page.write_text(render_eval_html(_eval_data()))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}"]
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), *flags, f"--screenshot={shot}", "--window-size=1200,1400", page.as_uri()],
                   capture_output=True, timeout=120)  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape == (1400, 1200, 3) and pixels.std() > 20
    # the pass/fail cells are painted: some pixels carry the pass green (#dff3e4)
    assert (np.abs(pixels - [223, 243, 228]).sum(axis=-1) < 6).sum() > 100
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", "--virtual-time-budget=2000", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    soup = BeautifulSoup(dom, "html.parser")
    assert soup.body["data-ready"] == "1" and soup.body["data-js-errors"] == "0"
