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


def _save_tiny_wan(tiny_pipe, path, config_update: dict, **pipeline_kwargs):
    """A WanImageToVideoPipeline from the tiny pipeline's parts and new transformers, saved and returned by path."""
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

    config = {k: v for k, v in dict(tiny_pipe.transformer.config).items() if not k.startswith("_")}
    config.update(config_update)
    torch.manual_seed(0)
    experts = [WanTransformer3DModel.from_config(config) for _ in range(pipeline_kwargs.pop("experts", 1))]
    pipe = WanImageToVideoPipeline(
        tokenizer=tiny_pipe.tokenizer,
        text_encoder=tiny_pipe.text_encoder,
        vae=tiny_pipe.vae,
        scheduler=tiny_pipe.scheduler,
        image_processor=None,
        image_encoder=None,
        transformer=experts[0],
        transformer_2=experts[1] if len(experts) > 1 else None,
        **pipeline_kwargs,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def wan22_dir(tiny_pipe, tmp_path_factory):
    """A tiny Wan2.2 I2V-A14B-shaped pipeline: two experts without the image-context branch."""
    path = tmp_path_factory.mktemp("models") / "tiny-wan22-a14b"
    return _save_tiny_wan(
        tiny_pipe, path, {"added_kv_proj_dim": None, "image_dim": None}, experts=2, boundary_ratio=0.5
    )


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
    data["weak_layers"] = [1, 2]  # a one-run ranking names no band; these layers are forced
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


def test_wan22_rank_ranks_each_expert(wan22_dir, tmp_path, capsys):
    out = tmp_path / "wan22.zarr"
    argv = ["record", "--out", str(out), "--model", str(wan22_dir), "--quiet", "--steps", "6", "--frames", "5"]
    argv += ["--height", "256", "--width", "256", "--prompt", "the red circle moves to the left.", "--keywords", "red"]
    assert main(argv) == 0, capsys.readouterr().err
    ranking = tmp_path / "r.json"
    assert main(["rank", str(out), "--out", str(ranking)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(ranking.read_text())
    assert set(data["per_expert"]) == {"transformer", "transformer_2"}
    assert "expert transformer: " in printed and "expert transformer_2: " in printed
    ds = layerscope.open_run(out).compute()
    for index, name in enumerate(("transformer", "transformer_2")):
        sub = data["per_expert"][name]
        assert sub["expert"] == name and sub["verdict"]
        # each expert's curve is the mean over its own steps only
        steps = ds["expert"].values == index
        expected = ds["moran_i"].isel(step=np.flatnonzero(steps)).mean(("step", "keyword", "frame")).values
        assert [row["moran_i"] for row in sub["layers"]] == pytest.approx(expected.tolist(), abs=1e-9)
        assert all(row["n_maps"] == int(steps.sum()) * 1 * 2 for row in sub["layers"])  # 1 keyword x 2 frames
    # one expert on request: the top level is that expert's ranking
    assert main(["rank", str(out), "--expert", "transformer_2", "--out", str(ranking)]) == 0
    only = json.loads(ranking.read_text())
    assert only["expert"] == "transformer_2" and only["per_expert"] == {}
    assert only["runs"][0]["steps"] == np.flatnonzero(ds["expert"].values == 1).tolist()
    assert [r["moran_i"] for r in only["layers"]] == pytest.approx(
        [r["moran_i"] for r in data["per_expert"]["transformer_2"]["layers"]]
    )


@pytest.fixture(scope="module")
def wan22_ti2v_dir(tiny_pipe, tmp_path_factory):
    """A tiny Wan2.2 TI2V-shaped pipeline: one transformer, ``expand_timesteps`` (the reference frame
    is the first latent frame, with per-token timesteps), no image encoder."""
    z_dim = tiny_pipe.vae.config.z_dim
    update = {"added_kv_proj_dim": None, "image_dim": None, "in_channels": z_dim, "out_channels": z_dim}
    path = tmp_path_factory.mktemp("models") / "tiny-wan22-ti2v"
    return _save_tiny_wan(tiny_pipe, path, update, expand_timesteps=True)


def test_wan22_ti2v_records_with_the_steps_timestep_and_refuses_fg(wan22_ti2v_dir, tmp_path, capsys):
    out = tmp_path / "ti2v.zarr"
    argv = ["record", "--out", str(out), "--model", str(wan22_ti2v_dir), "--quiet", "--steps", "3", "--frames", "5"]
    argv += ["--height", "256", "--width", "256", "--prompt", "the red circle moves to the left.", "--keywords", "red"]
    assert main(argv) == 0, capsys.readouterr().err
    ds = layerscope.open_run(out)
    assert ds.attrs["status"] == "complete" and ds["expert"].values.tolist() == [0, 0, 0]
    # per-token timesteps: the reference frame's tokens carry 0; the store keeps the step's t
    timesteps = ds["timestep"].values
    assert (timesteps > 0).all() and (np.diff(timesteps) < 0).all()
    assert np.isfinite(ds["similarity"].values).all()
    assert main(["rank", str(out)]) == 0
    # Focal Guidance needs the image-context branch, which TI2V does not have
    fg = tmp_path / "fg.zarr"
    forced = ["--intervene", "focal-guidance", "--fg-set", "weak_layers=[1,2]", "--clip", str(tmp_path)]
    capsys.readouterr()
    assert main([*argv[:2], str(fg), *argv[3:], *forced]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no image encoder" in err[0] and not fg.exists()


def test_step_timestep_of_per_token_timesteps():
    # Wan2.2 TI2V (expand_timesteps): the reference frame's tokens carry t = 0, the rest the step's t
    per_token = torch.cat([torch.zeros(1, 256), torch.full((1, 512), 937.5)], dim=1)
    assert step_timestep(per_token) == 937.5
    assert step_timestep(torch.tensor([700.0])) == 700.0
    assert step_timestep(None) is None
