"""`layerscope finetune` on HunyuanVideo-I2V: only the chosen single-stream blocks' attention trains,
with Focal Guidance on; the fixed-sample loss falls; resume is exact; the output loads and records."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from layerscope.cli import main

SIZE = ["--frames", "9", "--height", "64", "--width", "64", "--quiet"]


@pytest.fixture(scope="module")
def hunyuan_dir(tmp_path_factory):
    from layerscope_testbed.hunyuan_video import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("hunyuan") / "model", "token_replace")


def _finetune(model, out, *extra):
    argv = ["finetune", "--model", str(model), "--data", "shapes:2", "--out", str(out), "--layers", "3-4", *SIZE]
    assert main([*argv, *extra]) == 0
    return json.loads((out / "layerscope_finetune.json").read_text())


@pytest.fixture(scope="module")
def trained(hunyuan_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "run"
    record = _finetune(hunyuan_dir, out, "--steps", "12", "--checkpoint-every", "6", "--lr", "3e-3")
    return out, record


def test_hunyuan_finetune_changes_only_the_single_blocks_attention(hunyuan_dir, trained):
    from layerscope.loading import load_pipeline

    out, record = trained
    assert record["focal_guidance"] and record["intervention"]["anchor_gradients"] is True
    assert record["config"]["lr"] == 3e-3
    base, _ = load_pipeline(hunyuan_dir)
    tuned, _ = load_pipeline(out)
    delta = load_file(out / "transformer_delta.safetensors")
    prefixes = ("single_transformer_blocks.1.attn.", "single_transformer_blocks.2.attn.")  # layers 3, 4
    expected = {n for n, _ in base.transformer.named_parameters() if n.startswith(prefixes)}
    assert set(delta) == expected and {n.split(".attn.")[1] for n in expected} >= {"to_q.weight", "to_v.weight"}
    before, after = base.transformer.state_dict(), tuned.transformer.state_dict()
    for name, tensor in after.items():
        if name in expected:
            assert torch.equal(tensor, delta[name])
        else:
            assert torch.equal(tensor, before[name]), name
    assert all(not torch.equal(before[n], after[n]) for n in expected if n.endswith("weight"))


def test_hunyuan_finetune_loss_falls(trained):
    _, record = trained
    assert record["eval_loss_after"] < 0.95 * record["eval_loss_before"]


def test_hunyuan_finetune_resume_is_exact(hunyuan_dir, trained, tmp_path):
    out, _ = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    for name in ("layerscope_finetune.json", "transformer_delta.safetensors", "MODEL_CARD.md"):
        (resumed / name).unlink()
    record = _finetune(hunyuan_dir, resumed, "--steps", "12", "--checkpoint-every", "6", "--lr", "3e-3", "--resume")
    assert record["resumed_from_step"] == 6
    a, b = load_file(out / "transformer_delta.safetensors"), load_file(resumed / "transformer_delta.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_hunyuan_finetune_default_lr_is_the_papers_and_output_records(hunyuan_dir, trained, tmp_path):
    record = _finetune(hunyuan_dir, tmp_path / "default-lr", "--steps", "1", "--no-fg")
    assert record["config"]["lr"] == 1e-4  # paper §4.3 for HunyuanVideo-I2V
    out, _ = trained
    store = tmp_path / "run.zarr"
    argv = ["record", "--model", str(out), "--out", str(store), "--frames", "9", "--height", "64", "--width", "64"]
    assert main([*argv, "--steps", "1", "--quiet", "--prompt", "a red circle", "--keywords", "red"]) == 0
    import layerscope

    assert layerscope.open_run(store).attrs["weights"] == "finetuned"
