"""`layerscope sweep`: the prompt file, resume, kill -9, and 2-process launchers on CPU."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layerscope.cli import main
from layerscope.sweep import SweepError, parse_seeds, plan_runs, read_prompts, shard, sweep_index

FAST = ["--steps", "2", "--frames", "5", "--quiet"]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    out = tmp_path_factory.mktemp("prompts")
    assert main(["testbed", "prompts", "--out", str(out), "--scenes", "3"]) == 0
    return out / "prompts.jsonl"


def _status(store: Path) -> str:
    return json.loads((store / "zarr.json").read_text())["attributes"]["status"]


def test_prompt_file_is_read_and_planned(prompts):
    entries = read_prompts(prompts)
    assert [e.id for e in entries] == ["heldout-000", "heldout-001", "heldout-002"]
    assert all(e.image.is_file() and e.questions and e.dimension for e in entries)
    runs = plan_runs(entries, parse_seeds("0-1"))
    assert [r.store_name for r in runs][:2] == ["heldout-000-seed0.zarr", "heldout-000-seed1.zarr"]
    # shards cover every run exactly once
    shards = [shard(runs, rank, 4) for rank in range(4)]
    assert sorted(r.name for s in shards for r in s) == sorted(r.name for r in runs)
    assert parse_seeds("0-2,5") == [0, 1, 2, 5]


def test_ids_without_id_are_stable_and_content_addressed(tmp_path, prompts):
    line = json.loads(prompts.read_text().splitlines()[0])
    del line["id"]
    line["image"] = str(prompts.parent / line["image"])
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(line) + "\n")
    first = read_prompts(path)[0].id
    assert first == read_prompts(path)[0].id and first.startswith("p0001-")
    line["prompt"] = line["prompt"].replace("the", "the big", 1)
    path.write_text(json.dumps(line) + "\n")
    assert read_prompts(path)[0].id != first


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json\n", "not JSON"),
        ('{"image": "missing.png", "prompt": "the red circle", "keywords": ["red"]}\n', "not found"),
        ('{"image": "IMG", "prompt": "the red circle", "keywords": ["cat"]}\n', "cat"),
        ('{"image": "IMG", "prompt": "", "keywords": ["red"]}\n', "'prompt' must be a non-empty string"),
        ('{"image": "IMG", "prompt": "the red circle", "keywords": []}\n', "'keywords' must be"),
        ('{"image": "IMG", "prompt": "the red circle", "keywords": ["red"], "colour": 1}\n', "unknown key"),
        ('{"image": "IMG", "prompt": "the red circle", "keywords": ["red"], "id": "a/b"}\n', "id 'a/b'"),
        ('{"id": "x", "image": "IMG", "prompt": "a red circle", "keywords": ["red"]}\n' * 2, "also on line 1"),
        ("# only a comment\n\n", "has no runs"),
    ],
)
def test_bad_prompt_files_are_one_line_and_create_nothing(tmp_path, prompts, capsys, text, message):
    image = sorted((prompts.parent / "images").iterdir())[0]
    path = tmp_path / "bad.jsonl"
    path.write_text(text.replace("IMG", str(image)))
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out-dir", str(out), "--model", "default", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "3-1"], "ranges go up"),
        (["--seeds", "x"], "cannot read --seeds"),
        (["--out-dir", ""], "--out-dir is empty"),
    ],
)
def test_bad_sweep_options(tmp_path, prompts, capsys, args, message):
    argv = ["sweep", str(prompts), "--out-dir", str(tmp_path / "o"), *FAST, *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(SweepError):
        read_prompts(tmp_path)  # a directory is not a prompt file


def test_sweep_records_indexes_and_resumes(tmp_path, prompts, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(prompts), "--out-dir", str(out), "--seeds", "0-1", *FAST]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["complete"] and index["counts"] == {"complete": 6} and len(index["runs"]) == 6
    store = out / "heldout-001-seed1.zarr"
    import layerscope

    ds = layerscope.open_run(store)
    assert ds.attrs["seed"] == 1 and ds.attrs["sweep_id"] == "heldout-001"
    assert ds.attrs["dimension"] and ds.attrs["questions"] and ds.attrs["record_config"]["num_inference_steps"] == 2
    # resume: complete stores are skipped, an interrupted one and a missing one are redone
    import zarr

    kept = out / "heldout-000-seed0.zarr"
    stamp = (kept / "zarr.json").stat().st_mtime_ns
    zarr.open_group(store, mode="r+").attrs.update({"status": "interrupted", "steps_written": [0]})
    shutil.rmtree(out / "heldout-002-seed0.zarr")
    assert sweep_index(out)["counts"] == {"complete": 4, "interrupted": 1, "missing": 1}
    capsys.readouterr()
    assert main(["sweep", str(prompts), "--out-dir", str(out), "--seeds", "0-1", *FAST]) == 0
    assert "2 to record, 4 complete and skipped" in capsys.readouterr().out
    assert (kept / "zarr.json").stat().st_mtime_ns == stamp
    assert sweep_index(out)["counts"] == {"complete": 6}
    # a complete store recorded with other options is not silently reused
    assert (
        main(
            ["sweep", str(prompts), "--out-dir", str(out), "--seeds", "0-1", "--steps", "3", "--frames", "5", "--quiet"]
        )
        == 2
    )
    assert "recorded with other num_inference_steps" in capsys.readouterr().err
    # rank reads the sweep directory
    ranking = tmp_path / "ranking.json"
    assert main(["rank", str(out), "--out", str(ranking)]) == 0
    data = json.loads(ranking.read_text())
    # 3 prompts x 2 seeds: the prompt is the unit, and 3 are too few for a verdict
    assert data["n_runs"] == 6 and data["interval_unit"] == "prompt" and data["n_units"] == 3
    assert data["verdict"] == "too few prompts for a verdict (n_prompts=3, need >= 10)" and data["p_value"] is None
    assert {r["id"] for r in data["runs"]} == {"heldout-000", "heldout-001", "heldout-002"}
    # the sweep report leads with the same verdict, lists every run's prompt, and shows CIs over runs
    from bs4 import BeautifulSoup

    html = tmp_path / "sweep.html"
    assert main(["report", str(out), "--out", str(html)]) == 0
    page = BeautifulSoup(html.read_text(), "html.parser")
    verdicts = page.select("p.verdict")
    assert len(verdicts) == 1 and data["verdict"] in verdicts[0].get_text()
    assert verdicts[0]["data-n-runs"] == "6" and page.select_one("#n-runs").get_text() == "6"
    rows = page.select("table.runs tbody tr")
    assert len(rows) == 6 and {r.select("td")[2].get_text() for r in rows} == {e.prompt for e in read_prompts(prompts)}
    # the agreement table: every statistic of the stores, its verdict, and Spearman's rho between them
    rows = {r["data-metric"]: r for r in page.select("#agreement tbody tr")}
    assert set(rows) == {"moran_i", "std", "rms"}
    assert data["verdict"] in rows["moran_i"].get_text()
    diagonal = [r.select("td")[i].get_text() for i, r in enumerate(page.select("#correlation tbody tr"))]
    assert all(cell in ("+1.00", "–") for cell in diagonal)
    first = page.select("table.ranking tbody tr")[0].select("td")
    low, high = data["layers"][0]["moran_i_ci"]
    assert first[3].get_text() == f"[{low:.4f}, {high:.4f}]"


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_sweep_resumes_without_redoing_complete_stores(tmp_path, prompts):
    out = tmp_path / "sweep"
    argv = [str(BIN / "layerscope"), "sweep", str(prompts), "--out-dir", str(out), "--steps", "4", "--frames", "5"]
    process = subprocess.Popen([*argv, "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    first, second = out / "heldout-000-seed0.zarr", out / "heldout-001-seed0.zarr"
    try:
        _wait_for(lambda: (second / "zarr.json").is_file())  # the first is complete, the second under way
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert _status(first) == "complete"
    stamp = (first / "zarr.json").stat().st_mtime_ns
    result = subprocess.run([*argv, "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "1 complete and skipped" in result.stdout
    assert (first / "zarr.json").stat().st_mtime_ns == stamp
    assert all(run["status"] == "complete" for run in sweep_index(out)["runs"])


def _one_line_prompts(prompts: Path, target: Path) -> Path:
    """A copy of the first prompt with its image, so a test may change the image."""
    target.mkdir(parents=True, exist_ok=True)
    line = json.loads(prompts.read_text().splitlines()[0])
    shutil.copy(prompts.parent / line["image"], target / "ref.png")
    line["image"] = "ref.png"
    (target / "p.jsonl").write_text(json.dumps(line) + "\n")
    return target / "p.jsonl"


@pytest.mark.slow
def test_a_failed_run_is_one_line_and_the_sweep_goes_on(tmp_path, prompts, monkeypatch, capsys):
    import layerscope.recording

    real, calls = layerscope.recording.record, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(layerscope.recording, "record", flaky)
    out = tmp_path / "sweep"
    assert main(["sweep", str(prompts), "--out-dir", str(out), *FAST]) == 1
    printed = capsys.readouterr()
    assert "heldout-000-seed0 failed (RuntimeError: CUDA out of memory" in printed.err + printed.out
    assert sweep_index(out)["counts"] == {"complete": 2, "missing": 1}
    monkeypatch.setattr(layerscope.recording, "record", real)
    assert main(["sweep", str(prompts), "--out-dir", str(out), *FAST]) == 0
    assert sweep_index(out)["counts"] == {"complete": 3}


@pytest.mark.slow
def test_resume_refuses_stores_made_from_another_image_or_model(tmp_path, prompts, capsys):
    from PIL import Image

    path = _one_line_prompts(prompts, tmp_path / "p")
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--out-dir", str(out), *FAST]) == 0
    image = Image.open(tmp_path / "p" / "ref.png")
    image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "p" / "ref.png")
    capsys.readouterr()
    assert main(["sweep", str(path), "--out-dir", str(out), *FAST]) == 2
    assert "recorded with other image_sha1" in capsys.readouterr().err
    assert main(["sweep", str(path), "--out-dir", str(out), *FAST, "--model", "random"]) == 2
    assert "model_path" in capsys.readouterr().err
    assert main(["sweep", str(path), "--out-dir", str(out), *FAST, "--no-resume"]) == 0


def test_rank_of_a_sweep_without_complete_stores_and_with_allow_partial(tmp_path, prompts, capsys):
    import zarr

    path = _one_line_prompts(prompts, tmp_path / "p")
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--out-dir", str(out), "--seeds", "0-1", *FAST]) == 0
    for store in out.glob("*.zarr"):
        zarr.open_group(store, mode="r+").attrs.update({"status": "interrupted", "steps_written": [0]})
    capsys.readouterr()
    assert main(["rank", str(out)]) == 2
    assert "the sweep has no complete store yet" in capsys.readouterr().err
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 2
    assert main(["rank", str(out), "--allow-partial", "--out", str(tmp_path / "r.json")]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["n_runs"] == 2 and all(run["steps"] == [0] for run in data["runs"])


def _launched(command: list[str], out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # each process recorded its own share; every store exactly once, by exactly one process
    # (searched in the whole output: the processes share one stdout, so lines may interleave)
    shares = [int(n) for n in re.findall(r"this process: (\d+) to record", result.stdout)]
    assert len(shares) == 2 and sum(shares) == 3
    import layerscope

    writers = {}
    for run in sweep_index(out)["runs"]:
        assert run["status"] == "complete"
        writers[run["store"]] = tuple(layerscope.open_run(out / run["store"]).attrs["sweep_process"])
    assert sorted(writers.values()) == [(0, 2), (0, 2), (1, 2)]


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path, prompts):
    out = tmp_path / "sweep"
    launcher = [str(BIN / "torchrun"), "--nproc-per-node", "2", "-m", "layerscope"]
    _launched([*launcher, "sweep", str(prompts), "--out-dir", str(out), *FAST], out)
    # more processes than runs: one process has nothing to do and still joins the barrier
    one = _one_line_prompts(prompts, tmp_path / "p")
    result = subprocess.run(
        [*launcher, "sweep", str(one), "--out-dir", str(tmp_path / "one"), *FAST],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0 to record" in result.stdout and sweep_index(tmp_path / "one")["counts"] == {"complete": 1}


@pytest.mark.slow
def test_accelerate_launch_two_processes_on_cpu(tmp_path, prompts):
    out = tmp_path / "sweep"
    # accelerate's --cpu multi-process mode needs MPI; its torch.distributed launcher
    # (--multi_gpu) runs CPU processes too, and the sweep asks PartialState for CPU
    launcher = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "layerscope"]  # fmt: skip
    _launched([*launcher, "sweep", str(prompts), "--out-dir", str(out), *FAST], out)


def test_resume_matches_true_cfg_and_reads_older_stores_as_default():
    """A store made with --true-cfg 3 is not resumed by a sweep without it; stores older than the
    option (no key in record_config) were made with its default and still match."""
    from layerscope.sweep import mismatched_options

    wanted = {"prompt": "p", "true_cfg_scale": 1.0}
    older = {"record_config": {"prompt": "p"}}
    assert mismatched_options(older, wanted, {}) == []
    assert mismatched_options({"record_config": {"prompt": "p", "true_cfg_scale": 3.0}}, wanted, {}) == [
        "true_cfg_scale"
    ]
