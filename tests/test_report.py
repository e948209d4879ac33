"""HTML reports: self-contained, escaped, faithful to the store, and alive in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from bs4 import BeautifulSoup

import layerscope
from layerscope.metrics import ensure_metrics
from layerscope.ranking import rank_datasets
from layerscope.report import render
from layerscope.report.render import ReportError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_with_metrics(recorded_run, tmp_path_factory):
    path, _ = recorded_run
    copy = tmp_path_factory.mktemp("report") / "run.zarr"
    shutil.copytree(path, copy)
    ensure_metrics(copy)
    return copy


@pytest.fixture(scope="module")
def seed1_run(tiny_pipe, example, tmp_path_factory):
    from layerscope.recording import record

    path = tmp_path_factory.mktemp("report") / "seed1.zarr"
    record(tiny_pipe, path, seed=1, dtype="float32", progress=False, **example)
    return path


@pytest.fixture(scope="module")
def run_html(run_with_metrics):
    return render(run_with_metrics)


def _external_references(soup: BeautifulSoup, html: str) -> list[str]:
    found = []
    for tag in soup.find_all(True):
        for attr in ("src", "href", "poster", "data"):
            value = tag.get(attr)
            if value and not value.startswith(("data:", "#")):
                found.append(f"{tag.name}[{attr}]={value[:60]}")
    found += re.findall(r"url\(\s*['\"]?(?!data:)[^)]+\)", html)
    found += re.findall(r"@import", html)
    return found


def test_single_run_report_is_self_contained(run_html):
    soup = BeautifulSoup(run_html, "html.parser")
    images = soup.find_all("img")
    assert len(images) >= 5  # reference, video, curves, one grid per keyword
    assert all(img["src"].startswith("data:image/") for img in images)
    assert _external_references(soup, run_html) == []
    assert not re.search(r"(src|href)\s*=\s*['\"]https?://", run_html)
    assert soup.find("script", src=True) is None and soup.find("link") is None
    video = soup.find("img", alt="generated video")
    assert video["src"].startswith("data:image/gif;base64,")


def test_header_tells_model_status_and_highlights_keywords(run_html, run_with_metrics):
    soup = BeautifulSoup(run_html, "html.parser")
    attrs = layerscope.open_run(run_with_metrics).attrs
    assert soup.find(id="model-id").text == attrs["model_id"]
    assert soup.find(id="status").text == "complete"
    assert "random weights" in soup.find(class_="warning").text
    from layerscope_testbed import EXAMPLE_KEYWORDS

    marks = [m.text for m in soup.select(".prompt mark")]
    assert marks == list(EXAMPLE_KEYWORDS)
    assert [b.text for b in soup.select(".tabs button")] == list(EXAMPLE_KEYWORDS)


def test_weak_band_and_ranking_match_the_store(run_html, run_with_metrics):
    ds = layerscope.open_run(run_with_metrics)
    expected = rank_datasets([ds])
    soup = BeautifulSoup(run_html, "html.parser")
    shown = soup.find(id="weak-layers").text
    assert shown == (", ".join(map(str, expected.weak_layers)) or "none")
    rows = soup.select("table.ranking tbody tr")
    assert [int(r["data-layer"]) for r in rows] == [row["layer"] for row in expected.layers]
    assert [int(r["data-layer"]) for r in rows if "weak" in r.get("class", [])] == expected.weak_layers
    shown_moran = [float(r.find_all("td")[2].text) for r in rows]
    np.testing.assert_allclose(shown_moran, [row["moran_i"] for row in expected.layers], atol=5e-5)


def test_hostile_prompt_is_shown_as_text(run_with_metrics):
    ds = layerscope.open_run(run_with_metrics)
    hostile = "<script>window.pwned=1</script> a red circle"
    ds.attrs.update(prompt=hostile, prompt_cleaned=hostile, keywords=[])
    html = render(ds)
    assert "<script>window.pwned" not in html
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html
    soup = BeautifulSoup(html, "html.parser")
    assert hostile in soup.select_one(".prompt").text


def test_interrupted_store_is_reported_as_such(run_with_metrics, tmp_path):
    import zarr

    copy = tmp_path / "cut.zarr"
    shutil.copytree(run_with_metrics, copy)
    zarr.open_group(copy, mode="r+").attrs.update({"status": "interrupted", "steps_written": [0, 1]})
    soup = BeautifulSoup(render(copy), "html.parser")
    assert soup.find(id="status").text == "interrupted"
    assert any("2 of 3 steps" in w.text for w in soup.find_all(class_="warning"))


def test_comparison_refuses_mismatched_runs_unless_forced(run_with_metrics, seed1_run):
    with pytest.raises(ReportError, match="seed differs"):
        render(run_with_metrics, seed1_run)
    html = render(run_with_metrics, seed1_run, force=True)
    soup = BeautifulSoup(html, "html.parser")
    assert soup.find(id="delta")["src"].startswith("data:image/png")
    assert len(soup.select("table.ranking")) == 2
    assert len(soup.select("img[alt^='video']")) == 2
    assert _external_references(soup, html) == []
    # the headline deltas, split by role, equal the two rankings' differences
    from layerscope.metrics import compute_metrics
    from layerscope.ranking import rank_datasets

    def ranked(path):
        ds = layerscope.open_run(path)
        return rank_datasets([ds.merge(compute_metrics(ds)).compute()])

    before, after = ranked(run_with_metrics), ranked(seed1_run)
    rows = soup.select("#delta-by-role tbody tr")
    assert [r.find_all("td")[0].text.split(" ")[0] for r in rows] == ["upstream", "touched", "downstream"]
    # one run carries no verdict and neither run was guided: no layer has a role, every cell says so
    # (the numbers of each role are checked by hand in test_delta_by_role_by_hand)
    assert before.weak_layers == [] and after.weak_layers == []
    assert [r.find_all("td")[2].text for r in rows] == ["–", "–", "–"]


def test_delta_by_role_by_hand():
    from layerscope.ranking import Ranking
    from layerscope.report.render import delta_by_role

    def ranking(values):
        rows = [{"layer": i, "moran_i": v, "std": 2 * v} for i, v in enumerate(values)]
        return Ranking("moran_i", "band", {}, rows, [], "")

    before = ranking([0.1, 0.2, 0.3, 0.4, 0.5])
    after = ranking([0.1, 0.25, 0.45, 0.3, float("nan")])
    groups = delta_by_role(before, after, touched=[2, 3])
    assert [g["layers"] for g in groups] == [[0, 1], [2, 3], [4]]
    assert groups[0]["moran_i"] == pytest.approx(0.025)
    assert groups[1]["moran_i"] == pytest.approx(0.025)  # (+0.15 - 0.1) / 2
    assert groups[1]["std"] == pytest.approx(0.05)
    assert np.isnan(groups[2]["moran_i"])


def test_report_cli(run_with_metrics, tmp_path, capsys):
    from layerscope.cli import main

    out = tmp_path / "r.html"
    assert main(["report", str(run_with_metrics), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(run_with_metrics), "--compare", str(tmp_path / "nope.zarr"), "--out", str(out)]) == 2
    assert "not a Zarr store" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    return subprocess.run([_chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="Debian chromium is not installed (make test installs it)")
@pytest.mark.parametrize("kind", ["run", "compare"])
def test_reports_render_in_headless_chromium(run_with_metrics, seed1_run, tmp_path, kind):
    from PIL import Image

    html = render(run_with_metrics) if kind == "run" else render(run_with_metrics, seed1_run, force=True)
    page = tmp_path / f"{kind}.html"
    page.write_text(html)
    shot = tmp_path / f"{kind}.png"
    _browser([f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()], tmp_path)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 20, "the screenshot is (nearly) blank"
    dom = _browser(["--dump-dom", "--virtual-time-budget=2000", page.as_uri()], tmp_path).stdout
    body = BeautifulSoup(dom, "html.parser").body
    assert body["data-ready"] == "1", "the page script did not run to the end"
    assert body["data-js-errors"] == "0"


def test_templates_ship_inside_the_wheel(tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    # our packaging configuration must build without deprecation warnings
    assert "deprecat" not in (build.stdout + build.stderr).lower(), build.stderr
    (wheel,) = tmp_path.glob("layerscope-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for template in ("run.html.j2", "compare.html.j2", "base.html.j2", "_macros.html.j2"):
        assert f"layerscope/report/templates/{template}" in names
    assert not any("layerscope_testbed" in n or n.endswith(".safetensors") for n in names)  # the testbed ships apart
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = (
        "import layerscope.report.render as r; d = r._template_dir(); print(d); "
        "print(r._environment().get_template('run.html.j2').name)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(unpacked)!r}); {code}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout.split()
    assert out[0].startswith(str(unpacked)) and out[1] == "run.html.j2"


def test_store_with_sparse_provenance_still_renders(run_with_metrics):
    ds = layerscope.open_run(run_with_metrics)
    for key in ("probe_kind", "branch", "model_id", "weights", "probe", "keywords", "prompt_cleaned"):
        ds.attrs.pop(key, None)
    soup = BeautifulSoup(render(ds), "html.parser")
    assert soup.find(id="model-id").text == "?"
