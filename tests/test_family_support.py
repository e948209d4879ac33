"""The support matrix's finetune column for the families added after Wan and HunyuanVideo-I2V.

SkyReels-V2-I2V is Wan's architecture under other class names, so `layerscope finetune`
trains it through the Wan adapter's recipe (only the chosen blocks' ``attn2``); the
others refuse in one line before any clip is generated or anything is written.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from layerscope.cli import main

#: one worker builds this module's tiny pipelines once (make test runs xdist with --dist loadgroup)
pytestmark = pytest.mark.xdist_group("family-support")


SIZE = ["--frames", "5", "--height", "64", "--width", "64", "--quiet", "--steps", "2", "--no-fg"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """build-tiny, once per family this module needs."""
    built = {}

    def build(family: str):
        if family not in built:
            out = tmp_path_factory.mktemp("tiny") / family
            assert main(["testbed", "build-tiny", "--family", family, "--out", str(out)]) == 0
            built[family] = out
        return built[family]

    return build


@pytest.mark.parametrize(
    "family, name",
    [
        ("cogvideox-i2v", "cogvideox"),
        ("ltx-video-i2v", "ltx-video"),
        ("hunyuan-video-1.5-i2v", "hunyuan-video-1.5"),
        ("cosmos-predict2-video2world", "cosmos-predict2"),
    ],
)
def test_finetune_refuses_cogvideox_ltx_hunyuan15_and_cosmos_in_one_line(tiny, family, name, tmp_path, capsys):
    out, model = tmp_path / "ft", tiny(family)
    capsys.readouterr()
    argv = ["finetune", "--model", str(model), "--data", "shapes:2", "--layers", "1", "--out", str(out), *SIZE]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"does not support {name}" in err[0]
    assert not out.exists()


def test_skyreels_finetune_trains_only_the_chosen_cross_attention(tiny, tmp_path):
    from layerscope.loading import load_pipeline

    model, out = tiny("skyreels-v2-i2v"), tmp_path / "ft"
    argv = ["finetune", "--model", str(model), "--data", "shapes:2", "--layers", "1", "--out", str(out), *SIZE]
    assert main([*argv, "--lr", "1e-3"]) == 0
    delta = load_file(out / "transformer_delta.safetensors")
    base, _ = load_pipeline(model)
    expected = {n for n, _ in base.transformer.named_parameters() if n.startswith("blocks.1.attn2.")}
    assert set(delta) == expected
    tuned, _ = load_pipeline(out)
    before, after = base.transformer.state_dict(), tuned.transformer.state_dict()
    assert all(torch.equal(after[n], before[n]) for n in after if n not in expected)  # frozen: bit for bit
    assert any(not torch.equal(after[n], before[n]) for n in expected)
    assert json.loads((out / "layerscope_finetune.json").read_text())["config"]["steps"] == 2


@pytest.mark.parametrize(
    "family, scales, option",
    [
        ("cosmos-predict2-video2world", ["--guidance", "1", "--true-cfg", "2"], "--guidance > 1"),
        ("hunyuan-video-i2v", ["--guidance", "3", "--true-cfg", "1"], "--true-cfg > 1"),
    ],
)
def test_uncond_branch_without_guidance_names_the_familys_own_option(tiny, family, scales, option, tmp_path, capsys):
    """Cosmos runs its uncond branch by call order like HunyuanVideo-I2V, yet under --guidance."""
    out, model = tmp_path / "run.zarr", tiny(family)
    capsys.readouterr()
    argv = ["record", "--model", str(model), "--out", str(out), "--branch", "both", *scales, "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"only with {option};" in err[0]
    assert not out.exists()
