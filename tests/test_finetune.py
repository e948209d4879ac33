"""`layerscope finetune`: only the weak layers' cross-attention trains, the loss falls, resume is
exact, FG is installed per sample, the output loads and records, bad data is one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from layerscope.cli import main

SMALL = ["--model", "default", "--frames", "5", "--height", "128", "--width", "128", "--quiet"]
BIN = Path(sys.executable).parent


def _finetune(out: Path, *extra: str) -> dict:
    assert main(["finetune", "--data", "shapes:2", "--out", str(out), *SMALL, *extra]) == 0
    return json.loads((out / "layerscope_finetune.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "run"
    record = _finetune(out, "--layers", "2-3", "--steps", "6", "--checkpoint-every", "3", "--lr", "1e-3", "--no-fg")
    return out, record


def test_finetune_changes_only_the_chosen_cross_attention(trained):
    import layerscope_testbed as testbed
    from layerscope.loading import load_pipeline

    out, record = trained
    base, _ = load_pipeline(testbed.resolve_model("default"))
    tuned, _ = load_pipeline(out)
    delta = load_file(out / "transformer_delta.safetensors")
    expected = {
        n for n, _ in base.transformer.named_parameters() if n.startswith(("blocks.2.attn2.", "blocks.3.attn2."))
    }
    assert set(delta) == expected and record["trainable_parameters"] == sum(delta[n].numel() for n in expected)
    before, after = base.transformer.state_dict(), tuned.transformer.state_dict()
    for name, tensor in after.items():
        if name in expected:
            assert torch.equal(tensor, delta[name])
        else:
            assert torch.equal(tensor, before[name]), name  # frozen: bit for bit
    assert any(not torch.equal(before[n], after[n]) for n in expected)
    # every other component is the base's, untouched
    for name in ("vae", "text_encoder", "image_encoder"):
        a, b = getattr(base, name).state_dict(), getattr(tuned, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_loss_falls_on_a_fixed_batch(tmp_path):
    record = _finetune(tmp_path / "fit", "--layers", "0-11", "--steps", "30", "--lr", "3e-3", "--no-fg")
    # the same (clip, noise, level) set before and after: the fit must improve
    assert record["eval_loss_after"] < 0.9 * record["eval_loss_before"]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "fit" / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 30


def test_resume_equals_an_uninterrupted_run(trained, tmp_path):
    out, _ = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    # as if the run had stopped after its step-3 checkpoint
    for name in ("layerscope_finetune.json", "transformer_delta.safetensors", "MODEL_CARD.md"):
        (resumed / name).unlink()
    argv = ["finetune", "--data", "shapes:2", "--out", str(resumed), *SMALL, "--layers", "2-3", "--steps", "6"]
    assert main([*argv, "--checkpoint-every", "3", "--lr", "1e-3", "--no-fg", "--resume"]) == 0
    record = json.loads((resumed / "layerscope_finetune.json").read_text())
    assert record["resumed_from_step"] == 3
    a, b = load_file(out / "transformer_delta.safetensors"), load_file(resumed / "transformer_delta.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # without --resume an existing --out is refused
    assert main(argv) == 2


def test_focal_guidance_is_installed_for_every_sample_and_removed(tmp_path):
    import layerscope_testbed as testbed
    from layerscope.finetune import FinetuneConfig, finetune
    from layerscope.loading import load_pipeline
    from layerscope.training_data import read_training_data
    from layerscope_testbed.shapes.evaluate import write_training_data

    clips = read_training_data(write_training_data(tmp_path / "data", 2, frames=5, size=128))
    pipe, model_dir = load_pipeline(testbed.resolve_model("default"))
    calls = []

    class Spy:
        def apply(self, inputs):
            hooks = sum(len(m._forward_pre_hooks) for m in pipe.transformer.modules())
            calls.append({"prompt": inputs.prompt, "grid": inputs.grid, "hooks": hooks})
            return self

        def remove(self):
            calls[-1]["removed"] = True

    config = FinetuneConfig(layers=[2], steps=3, grad_accum=2, height=128, width=128, num_frames=5, eval_samples=1)
    finetune(pipe, model_dir, clips, config, tmp_path / "out", intervention=Spy(), progress=False)
    # eval before + 3 steps x 2 micro-batches + eval after, each with its clip's caption
    assert len(calls) == 1 + 6 + 1 and all(c.get("removed") for c in calls)
    assert {c["prompt"] for c in calls} <= {c.caption for c in clips}
    assert calls[0]["grid"] == (2, 8, 8)


@pytest.mark.slow
def test_finetuned_model_records_with_focal_guidance(tmp_path):
    out = tmp_path / "fg"
    record = _finetune(out, "--layers", "2-3", "--steps", "2")
    assert record["focal_guidance"] and record["intervention"]["weak_layers"] == [2, 3]
    store = tmp_path / "run.zarr"
    argv = ["record", "--model", str(out), "--out", str(store), "--frames", "5", "--steps", "2", "--quiet"]
    assert main([*argv, "--intervene", "focal-guidance", "--fg-set", "weak_layers=[2,3]"]) == 0
    import layerscope

    ds = layerscope.open_run(store)
    assert ds.attrs["status"] == "complete" and ds.attrs["weights"] == "finetuned"
    import layerscope_testbed as testbed

    assert ds.attrs["model_id"].startswith(testbed.model_info(testbed.shipped_model_dir())["model_id"] + "+")


def _clip_folder(path: Path, frames: int) -> None:
    from PIL import Image

    path.mkdir(parents=True)
    for i in range(frames):
        Image.fromarray(np.full((64, 64, 3), 40 * i % 255, dtype=np.uint8)).save(path / f"{i:03d}.png")


@pytest.mark.parametrize(
    "line, message",
    [
        ({"video": "broken.mp4", "caption": "the red circle moves."}, "cannot decode video broken.mp4"),
        ({"video": "clip5", "caption": "the red circle moves.", "keywords": ["cat"]}, "cat"),
        ({"video": "clip6", "caption": "the red circle moves."}, "has 6 frames; the model takes 4n+1"),
        ({"video": "clip5", "caption": ""}, "'caption' must be a non-empty string"),
    ],
)
def test_bad_training_data_is_one_line_before_training(tmp_path, capsys, line, message):
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    _clip_folder(tmp_path / "clip5", 5)
    _clip_folder(tmp_path / "clip6", 6)
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(line) + "\n")
    out = tmp_path / "out"
    code = main(["finetune", "--data", str(data), "--out", str(out), "--layers", "2", *SMALL, "--no-fg"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_finetune_needs_layers_from_somewhere(tmp_path, capsys):
    assert main(["finetune", "--data", "shapes:1", "--out", str(tmp_path / "o"), *SMALL]) == 2
    assert "--ranking R.json (its weak band) or --layers" in capsys.readouterr().err


@pytest.mark.slow
def test_accelerate_launch_two_processes_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    command = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "layerscope", "finetune",
               "--data", "shapes:2", "--out", str(out), *SMALL, "--layers", "2", "--steps", "2", "--no-fg"]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = json.loads((out / "layerscope_finetune.json").read_text())
    assert record["processes"] == 2 and record["layers"] == [2]


def test_gradient_checkpointing_trains_the_same_weights(tmp_path):
    args = ("--layers", "2", "--steps", "2", "--lr", "1e-3", "--no-fg")
    _finetune(tmp_path / "plain", *args)
    _finetune(tmp_path / "checkpointed", *args, "--gradient-checkpointing")
    a = load_file(tmp_path / "plain" / "transformer_delta.safetensors")
    b = load_file(tmp_path / "checkpointed" / "transformer_delta.safetensors")
    assert a.keys() == b.keys()
    for name in a:  # recomputing activations must not change the update
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7)
