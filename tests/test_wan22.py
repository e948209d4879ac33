"""Wan2.2-shaped pipelines (two experts switched at boundary_ratio, no image encoder).

Recording with an expert coordinate, and Focal Guidance's one-line refusal.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import layerscope
from layerscope.cli import main
from layerscope.probes import step_timestep


@pytest.fixture(scope="module")
def wan22_dir(tiny_pipe, tmp_path_factory):
    """A tiny Wan2.2 I2V-A14B-shaped pipeline: two experts without the image-context branch."""
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

    config = {k: v for k, v in dict(tiny_pipe.transformer.config).items() if not k.startswith("_")}
    config.update(added_kv_proj_dim=None, image_dim=None)
    torch.manual_seed(0)
    experts = [WanTransformer3DModel.from_config(config) for _ in range(2)]
    pipe = WanImageToVideoPipeline(
        tokenizer=tiny_pipe.tokenizer,
        text_encoder=tiny_pipe.text_encoder,
        vae=tiny_pipe.vae,
        scheduler=tiny_pipe.scheduler,
        image_processor=None,
        image_encoder=None,
        transformer=experts[0],
        transformer_2=experts[1],
        boundary_ratio=0.5,
    )
    path = tmp_path_factory.mktemp("models") / "tiny-wan22-a14b"
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def test_wan22_records_both_experts_with_an_expert_coordinate(wan22_dir, tmp_path, capsys):
    out = tmp_path / "wan22.zarr"
    argv = ["record", "--out", str(out), "--model", str(wan22_dir), "--quiet", "--steps", "4", "--frames", "5"]
    argv += ["--height", "256", "--width", "256", "--prompt", "the red circle moves to the left.", "--keywords", "red"]
    assert main(argv) == 0, capsys.readouterr().err
    ds = layerscope.open_run(out)
    assert ds.attrs["status"] == "complete" and ds.attrs["experts"] == ["transformer", "transformer_2"]
    timesteps = ds["timestep"].values
    experts = ds["expert"].values.tolist()
    # diffusers switches to transformer_2 once t < boundary_ratio * num_train_timesteps
    boundary = 0.5 * 1000
    assert experts == [0 if t >= boundary else 1 for t in timesteps]
    assert 0 in experts and 1 in experts
    assert np.isfinite(ds["similarity"].values).all()


def test_wan22_focal_guidance_refuses_in_one_line_before_any_store(wan22_dir, base_ranking, tmp_path, capsys):
    data = json.loads(base_ranking.read_text())
    data["model"] = {}  # a ranking without model checks: the refusal must come from the missing branch
    ranking = tmp_path / "r.json"
    ranking.write_text(json.dumps(data))
    out = tmp_path / "fg.zarr"
    argv = ["record", "--out", str(out), "--model", str(wan22_dir), "--quiet", "--steps", "2", "--frames", "5"]
    argv += ["--height", "256", "--width", "256", "--prompt", "the red circle moves to the left.", "--keywords", "red"]
    argv += ["--intervene", "focal-guidance", "--ranking", str(ranking), "--clip", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no image encoder" in err[0], err
    assert not out.exists()


def test_step_timestep_of_per_token_timesteps():
    # Wan2.2 TI2V (expand_timesteps): the reference frame's tokens carry t = 0, the rest the step's t
    per_token = torch.cat([torch.zeros(1, 256), torch.full((1, 512), 937.5)], dim=1)
    assert step_timestep(per_token) == 937.5
    assert step_timestep(torch.tensor([700.0])) == 700.0
    assert step_timestep(None) is None
