"""Every command, tried the way a careless user would: one line, exit 2, nothing left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from layerscope.cli import main


def _file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("x")
    return path


def _dir(tmp: Path) -> Path:
    path = tmp / "a-dir"
    path.mkdir(exist_ok=True)
    (path / "keep.txt").write_text("precious")
    return path


def _broken_model(kind: str):
    """A copy of the random tiny model, damaged one way."""

    def make(tmp: Path, model_dir: Path) -> Path:
        path = tmp / f"model-{kind}"
        shutil.copytree(model_dir, path)
        index = path / "model_index.json"
        if kind == "malformed-index":
            index.write_text('{"_class_name": "WanImageToVideoPipeline", ')
        elif kind == "index-not-object":
            index.write_text("[1, 2]")
        elif kind == "missing-component":
            shutil.rmtree(path / "vae")
        elif kind == "pickled-weights":
            for weights in (path / "transformer").glob("*.safetensors"):
                weights.rename(weights.with_suffix(".bin"))
        elif kind == "bad-config":
            (path / "transformer" / "config.json").write_text(
                '{"_class_name": "WanTransformer3DModel", "num_layers": "x"'
            )
        return path

    return make


def _ranking(content: bytes):
    def make(tmp: Path) -> Path:
        path = tmp / "ranking.json"
        path.write_bytes(content)
        return path

    return make


RECORD_CASES = {
    "empty prompt": (["--prompt", "", "--keywords", "cat"], "prompt is empty"),
    "blank keywords": (["--prompt", "a cat", "--keywords", " , "], "keyword"),
    "out under a file": (["--out", lambda t: _file(t) / "run.zarr"], "is a file, not a directory"),
    "out is a file": (["--out", _file], "is a file"),
    "out is a non-store dir": (["--out", _dir, "--overwrite"], "is not a LayerScope store"),
    "empty out": (["--out", ""], "--out is empty"),
    "uncond without guidance": (["--branch", "uncond", "--guidance", "1"], "needs classifier-free guidance"),
    "empty image": (["--image", ""], "--image is empty"),
    "image is a dir": (["--image", _dir], "is a directory"),
    "bad device": (["--device", "banana"], "not a torch device"),
    "no cuda": (["--device", "cuda"], "CUDA is not available"),
    "ranking not utf-8": (["--intervene", "focal-guidance", "--ranking", _ranking(b"\xff\xfe\x00")], "not UTF-8"),
    "ranking wrong types": (
        ["--intervene", "focal-guidance", "--ranking", _ranking(json.dumps({"weak_layers": "4-7"}).encode())],
        "'weak_layers' must be a list",
    ),
    "ranking is a list": (["--intervene", "focal-guidance", "--ranking", _ranking(b"[]")], "expected a JSON object"),
    "ranking is a dir": (["--intervene", "focal-guidance", "--ranking", _dir], "is a directory"),
    "ranking without intervene": (["--ranking", "r.json"], "need --intervene"),
}

MODEL_CASES = {
    "malformed-index": "model_index.json is not valid JSON",
    "index-not-object": "no '_class_name'",
    "missing-component": "vae/ is missing",
    "pickled-weights": "safetensors only",
    "bad-config": "could not load this pipeline",
}


def _run(args: list, tmp: Path, capsys) -> tuple[int, str]:
    resolved = [str(a(tmp)) if callable(a) else str(a) for a in args]
    code = main(resolved)
    err = capsys.readouterr().err.strip()
    return code, err


def _assert_one_line(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert message in err, err


def _leftovers(tmp: Path, before: set[Path]) -> list[Path]:
    return sorted(p for p in tmp.rglob("*") if p not in before and "model-" not in str(p))


@pytest.mark.parametrize("case", sorted(RECORD_CASES))
def test_record_bad_input(case, model_dir, tmp_path, capsys):
    args, message = RECORD_CASES[case]
    if "--out" not in args:
        args = ["--out", tmp_path / "run.zarr", *args]
    prepared = [a for a in args]  # inputs are made inside the temporary folder first
    resolved = [a(tmp_path) if callable(a) else a for a in prepared]
    before = set(tmp_path.rglob("*"))
    code, err = _run(
        ["record", "--model", "random", "--quiet", "--steps", "1", "--frames", "5", *resolved], tmp_path, capsys
    )
    _assert_one_line(code, err, message)
    assert _leftovers(tmp_path, before) == []
    if case == "out is a non-store dir":
        assert (tmp_path / "a-dir" / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("kind", sorted(MODEL_CASES))
def test_record_broken_model_folder(kind, model_dir, tmp_path, capsys):
    model = _broken_model(kind)(tmp_path, model_dir)
    before = set(tmp_path.rglob("*"))
    code, err = _run(["record", "--out", tmp_path / "run.zarr", "--model", model, "--quiet"], tmp_path, capsys)
    _assert_one_line(code, err, MODEL_CASES[kind])
    assert _leftovers(tmp_path, before) == []


@pytest.fixture()
def store(recorded_run, tmp_path):
    path, _ = recorded_run
    copy = tmp_path / "run.zarr"
    shutil.copytree(path, copy)
    return copy


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (lambda t, s: ["rank", t / "missing.zarr"], "is not a Zarr store"),
        (lambda t, s: ["rank", _file(t)], "is not a Zarr store"),
        (lambda t, s: ["rank", s, "--out", _dir(t)], "is a directory"),
        (lambda t, s: ["rank", s, "--out", _file(t) / "r.json"], "is a file, not a directory"),
        (lambda t, s: ["rank", s, "--out", ""], "--out is empty"),
        (lambda t, s: ["rank", s, "--steps", "x:y"], "cannot read --steps"),
        (lambda t, s: ["rank", s, "--method", "bottom-k", "--k", "99"], "between 1 and"),
        (lambda t, s: ["report", s, "--out", _dir(t)], "is a directory"),
        (lambda t, s: ["report", s, "--out", _file(t) / "r.html"], "is a file, not a directory"),
        (lambda t, s: ["report", _dir(t), "--out", t / "r.html"], "is not a Zarr store"),
        (lambda t, s: ["report", s, "--compare", t / "nope.zarr", "--out", t / "r.html"], "is not a Zarr store"),
        (lambda t, s: ["eval", "--quick", "--out", _file(t) / "e.json"], "is a file, not a directory"),
        (lambda t, s: ["eval", "--quick", "--count", "3"], "--quick sets"),
        (lambda t, s: ["testbed", "train"], "needs --out"),
        (lambda t, s: ["testbed", "train", "--out", _file(t)], "is not an empty directory"),
    ],
)
def test_other_commands_bad_input(command, message, store, tmp_path, capsys):
    args = command(tmp_path, store)
    before = set(tmp_path.rglob("*"))
    code, err = _run(args, tmp_path, capsys)
    _assert_one_line(code, err, message)
    new = [p for p in _leftovers(tmp_path, before) if not str(p).startswith(str(store))]
    assert new == []


KILL_SCRIPT = """
import os, signal, sys
import layerscope_testbed as testbed
from layerscope.loading import load_pipeline
from layerscope.recording import record
from layerscope.store import StoreWriter

original = StoreWriter.set_timestep

def set_timestep(self, step, timestep, expert=0):
    if step == 3:
        self._queue.join()  # steps 0-2 are on disk
        os.kill(os.getpid(), signal.SIGKILL)
    original(self, step, timestep, expert)

StoreWriter.set_timestep = set_timestep
pipe, _ = load_pipeline(sys.argv[1])
record(pipe, sys.argv[2], image=testbed.example_image(), prompt=testbed.EXAMPLE_PROMPT,
       keywords=list(testbed.EXAMPLE_KEYWORDS), height=256, width=256, num_frames=5,
       num_inference_steps=5, progress=False)
"""


def test_kill_9_leaves_the_truth_about_whole_steps(model_dir, tmp_path, capsys):
    import subprocess
    import sys

    import layerscope

    out = tmp_path / "killed.zarr"
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(model_dir), str(out)], capture_output=True)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    ds = layerscope.open_run(out)
    assert ds.attrs["status"] == "recording"
    assert ds.attrs["steps_written"] == [0, 1, 2]
    # what the error recommends works, on exactly the whole steps
    code, err = _run(["rank", out], tmp_path, capsys)
    _assert_one_line(code, err, "was killed while recording and has 3 of 5 steps whole")
    assert main(["rank", str(out), "--allow-partial", "--out", str(tmp_path / "r.json")]) == 0
    ranking = json.loads((tmp_path / "r.json").read_text())
    assert ranking["runs"][0]["steps"] == [0, 1, 2]  # only the whole steps were analysed
    assert all(row["n_maps"] == 3 * 2 * 2 for row in ranking["layers"])  # 3 steps x 2 keywords x 2 frames


def test_finetune_layer_out_of_range_writes_nothing(tmp_path, capsys):
    """Checked from the model's configs before any training clip is generated into --out."""
    out = tmp_path / "ft"
    argv = ["finetune", "--model", "default", "--data", "shapes:2", "--layers", "99", "--out", str(out)]
    assert main([*argv, "--frames", "5", "--height", "128", "--width", "128", "--quiet", "--no-fg"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layer 99 is out of range; this model has layers 0-11" in err[0]
    assert not out.exists()


def test_a_clip_model_folder_without_its_tokenizer_is_named_so(tmp_path):
    """Not "keyword has no CLIP tokens" later: the folder's missing tokenizer, in one line."""
    from transformers import CLIPConfig, CLIPModel

    from layerscope.clip import ClipError, load_clip

    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=100)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32)
    config = CLIPConfig(text_config=text, vision_config={**vision, "patch_size": 16}, projection_dim=8)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    with pytest.raises(ClipError, match="holds a CLIPModel but no tokenizer"):
        load_clip(tmp_path / "clip")
    with pytest.raises(ClipError, match="or config.json, \\*.safetensors and the tokenizer"):
        load_clip(tmp_path / "empty")
