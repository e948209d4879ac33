"""Stores at fsspec URLs (issue 38, item 7): ``memory://`` and ``file://`` for record, sweep,
rank, report and ``open_run``; the lock and the completion status there; missing packages.

The ``memory://`` filesystem lives in this process only, so every command runs in-process
through ``layerscope.cli.main``; each test uses its own prefix and removes it.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import uuid

import fsspec
import numpy as np
import pytest

import layerscope
from layerscope.cli import main
from layerscope.locations import Remote, location
from layerscope.store import StoreError, StoreLayout, StoreWriter, is_store
from layerscope.sweep import store_state, sweep_index

FAST = ["--steps", "2", "--frames", "5", "--quiet"]
MEMORY = fsspec.filesystem("memory")


def _prefix() -> str:
    return f"memory://test-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def memory_prefix():
    prefix = _prefix()
    yield prefix
    root = prefix.split("://", 1)[1]
    if MEMORY.exists(f"/{root}"):
        MEMORY.rm(f"/{root}", recursive=True)


@pytest.fixture()
def three_recordings(tmp_path_factory, model_dir):
    """The same seed recorded to a local path, to ``memory://`` and to a ``file://`` URL."""
    import os

    work = tmp_path_factory.mktemp("urls")
    prefix = _prefix()
    old = os.getcwd()
    os.chdir(work)  # a relative "file:" folder would appear here
    try:
        local = work / "local.zarr"
        memory = f"{prefix}/run.zarr"
        file_url = f"file://{work}/url.zarr"
        for out in (str(local), memory, file_url):
            assert main(["record", "--out", out, "--seed", "3", "--store-dtype", "float32", *FAST]) == 0
    finally:
        os.chdir(old)
    yield work, local, memory, file_url
    MEMORY.rm("/" + prefix.split("://", 1)[1], recursive=True)


def test_record_to_memory_and_file_urls_matches_a_local_recording_and_ranks_the_same(
    three_recordings, tmp_path, memory_prefix
):
    work, local, memory, file_url = three_recordings
    assert not (work / "file:").exists(), "a file:// URL must not create a folder named 'file:'"
    assert is_store(work / "url.zarr") and location(file_url) == work / "url.zarr"
    assert MEMORY.isfile("/" + memory.split("://", 1)[1] + "/zarr.json")
    reference = layerscope.open_run(local)
    for url in (memory, file_url):
        ds = layerscope.open_run(url)
        assert ds.attrs["status"] == "complete"
        assert ds.attrs["steps_written"] == reference.attrs["steps_written"] == [0, 1]
        np.testing.assert_array_equal(ds["similarity"].values, reference["similarity"].values)
        np.testing.assert_array_equal(ds["video"].values, reference["video"].values)
        assert np.isfinite(ds["similarity"].values).all()
    assert not MEMORY.exists("/" + memory.split("://", 1)[1] + ".lock")  # released at close
    # rank and report read a memory store as they read a local one
    # copies: rank writes its metrics back into the store it reads
    copy = f"{memory_prefix}/copy.zarr"
    MEMORY.copy("/" + memory.split("://", 1)[1], "/" + copy.split("://", 1)[1], recursive=True)
    local_copy = tmp_path / "local.zarr"
    import shutil

    shutil.copytree(local, local_copy)
    args = ["--method", "bottom-k", "--k", "2"]
    assert main(["rank", copy, "--out", str(tmp_path / "mem.json"), *args]) == 0
    assert main(["rank", str(local_copy), "--out", str(tmp_path / "local.json"), *args]) == 0
    from_memory = json.loads((tmp_path / "mem.json").read_text())
    from_disk = json.loads((tmp_path / "local.json").read_text())
    assert [r["moran_i"] for r in from_memory["layers"]] == [r["moran_i"] for r in from_disk["layers"]]
    assert from_memory["weak_layers"] == from_disk["weak_layers"]
    assert "moran_i" in layerscope.open_run(copy)  # the metrics went back into the memory store
    # a ranking and a report may be written to a URL too
    assert main(["rank", copy, "--out", f"{memory_prefix}/ranking.json", *args]) == 0
    assert json.loads(location(f"{memory_prefix}/ranking.json").read_text())["weak_layers"] == from_disk["weak_layers"]
    assert main(["report", copy, "--out", str(tmp_path / "r.html")]) == 0
    assert "<html" in (tmp_path / "r.html").read_text().lower()
    assert main(["report", copy, "--out", f"{memory_prefix}/r.html"]) == 0
    assert location(f"{memory_prefix}/r.html").read_text().lower().count("<html") == 1


def test_sweep_to_a_memory_out_dir_indexes_resumes_and_ranks(tmp_path, memory_prefix, capsys, model_dir):
    assert main(["testbed", "prompts", "--out", str(tmp_path), "--scenes", "1"]) == 0
    out = f"{memory_prefix}/sweep"
    assert main(["sweep", str(tmp_path / "prompts.jsonl"), "--out-dir", out, *FAST]) == 0
    index = sweep_index(out)
    assert index["complete"] and index["counts"] == {"complete": 1}
    assert json.loads(location(f"{out}/index.json").read_text())["counts"] == {"complete": 1}
    store = f"{out}/{index['runs'][0]['store']}"
    assert layerscope.open_run(store).attrs["status"] == "complete"
    capsys.readouterr()
    assert main(["sweep", str(tmp_path / "prompts.jsonl"), "--out-dir", out, *FAST]) == 0
    assert "0 to record, 1 complete and skipped" in capsys.readouterr().out
    assert main(["rank", out, "--method", "bottom-k", "--k", "2"]) == 0  # a sweep directory at a URL
    assert "moran_i" in layerscope.open_run(store)


def _layout() -> StoreLayout:
    return StoreLayout(
        steps=[0, 1], layers=[0, 1], blocks=["b.0", "b.1"], keywords=["cat"], grid=(1, 2, 2),
        video_shape=(1, 4, 4), dtype="float32",
    )  # fmt: skip


def _write_lock(url: str, **owner) -> None:
    location(url + ".lock").write_text(json.dumps(owner))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_lock_on_memory_refuses_a_second_writer_while_the_first_is_live(memory_prefix):
    url = f"{memory_prefix}/run.zarr"
    first = StoreWriter(url, _layout())
    assert location(url + ".lock").exists()
    with pytest.raises(StoreError, match="being written by another process"):
        StoreWriter(url, _layout(), overwrite=True)
    with pytest.raises(StoreError, match="being written by another process"):
        layerscope.store.write_metrics(url, None)  # rank's write-back waits for no one either
    for step in (0, 1):
        for layer in (0, 1):
            first.submit(step, layer, "cond", np.ones((1, 1, 2, 2), dtype=np.float32))
    assert first.close() == "complete"
    assert not location(url + ".lock").exists()
    second = StoreWriter(url, _layout(), overwrite=True)  # free again
    assert second.close() == "interrupted"  # nothing written: never "complete"


def test_a_lock_from_another_host_is_judged_by_its_heartbeat(memory_prefix, monkeypatch):
    url = f"{memory_prefix}/run.zarr"
    _write_lock(url, pid=1, host="elsewhere", time=time.time(), heartbeat=time.time(), token="x")
    with pytest.raises(StoreError, match="pid 1 on elsewhere"):
        StoreWriter(url, _layout())
    _write_lock(url, pid=1, host="elsewhere", time=0.0, heartbeat=time.time() - 7200, token="x")
    writer = StoreWriter(url, _layout())  # stale: older than REMOTE_LOCK_STALE_SECONDS
    owner = json.loads(location(url + ".lock").read_text())
    assert owner["host"] == socket.gethostname() and owner["token"] != "x"
    writer.close()


def test_a_killed_store_on_memory_is_never_reported_complete(memory_prefix, capsys):
    url = f"{memory_prefix}/run.zarr"
    writer = StoreWriter(url, _layout())
    for layer in (0, 1):
        writer.submit(0, layer, "cond", np.ones((1, 1, 2, 2), dtype=np.float32))
    writer._queue.put(None)  # the process "dies": its writer thread stops, nothing is closed
    writer._thread.join()
    assert store_state(url).status == "recording"  # its lock says it is live (this process)
    _write_lock(url, pid=_dead_pid(), host=socket.gethostname(), time=time.time(), token="dead")
    state = store_state(url)
    assert state.status == "killed" and state.attrs["steps_written"] == [0]
    assert layerscope.open_run(url).attrs["status"] == "recording"
    assert main(["rank", url]) == 2
    assert "was killed while recording and has 1 of 2 steps whole" in capsys.readouterr().err
    # another host's lock without a fresh heartbeat: killed too; with one: still recording
    _write_lock(url, pid=1, host="elsewhere", heartbeat=time.time() - 7200)
    assert store_state(url).status == "killed"
    _write_lock(url, pid=1, host="elsewhere", heartbeat=time.time())
    assert store_state(url).status == "recording"
    with pytest.raises(StoreError, match="being written by another process"):
        StoreWriter(url, _layout(), overwrite=True)


def _missing_filesystem() -> tuple[str, str]:
    for protocol, package in (("s3", "s3fs"), ("gs", "gcsfs"), ("az", "adlfs")):
        if importlib.util.find_spec(package) is None:
            return protocol, package
    pytest.skip("s3fs, gcsfs and adlfs are all installed")


@pytest.mark.parametrize(
    "command",
    [
        ["record", "--out", "URL", *FAST],
        ["sweep", "PROMPTS", "--out-dir", "URL", *FAST],
        ["rank", "URL"],
        ["report", "URL", "--out", "OUT"],
        ["rank", "STORE", "--out", "URL"],
    ],
)
def test_a_url_whose_package_is_missing_is_one_line_naming_it(command, tmp_path, monkeypatch, capsys):
    protocol, package = _missing_filesystem()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text("")
    url = f"{protocol}://bucket/x.zarr"
    argv = [{"URL": url, "OUT": str(tmp_path / "r.html"), "PROMPTS": "p.jsonl", "STORE": "s.zarr"}.get(a, a)
            for a in command]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pip install {package}" in err and url in err
    assert list(tmp_path.iterdir()) == [tmp_path / "p.jsonl"]  # nothing written


def test_an_unknown_protocol_and_a_remote_file_url_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["record", "--out", "nosuch://bucket/x.zarr", *FAST]) == 2
    assert "unknown storage protocol 'nosuch://'" in capsys.readouterr().err
    assert main(["record", "--out", "file://otherhost/x.zarr", *FAST]) == 2
    assert "file:///data/run.zarr" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_locations_resolve_paths_and_urls(tmp_path):
    assert location("runs/a.zarr") == __import__("pathlib").Path("runs/a.zarr")
    assert location(f"file://{tmp_path}/a%20b.zarr") == tmp_path / "a b.zarr"
    remote = location("memory://bucket/dir/")
    assert isinstance(remote, Remote) and str(remote) == "memory://bucket/dir"
    assert str(remote / "run.zarr") == "memory://bucket/dir/run.zarr" and (remote / "run.zarr").name == "run.zarr"
    assert str((remote / "run.zarr").with_name("run.zarr.lock")) == "memory://bucket/dir/run.zarr.lock"
