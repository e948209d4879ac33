"""The trained shapes-world model that ships in the package: present, safe, loadable, trained.

These tests use the real shipped weights (``testbed/layerscope_testbed/models/shapes-wan-i2v``), loaded
the way ``layerscope record`` loads them: ``from_pretrained(local_dir)``, safetensors only.
The thresholds sit between what the shipped model measures and what a random or
collapsed model would, so an untrained or collapsed model fails them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import layerscope_testbed as testbed

UNSAFE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz"}


@pytest.fixture(scope="module")
def shipped_dir():
    path = testbed.shipped_model_dir()
    assert path is not None, (
        "testbed/layerscope_testbed/models/shapes-wan-i2v is missing: the trained default model must ship"
    )
    return path


@pytest.fixture(scope="module")
def trained_pipe(shipped_dir):
    from layerscope.loading import load_pipeline

    pipe, path = load_pipeline(testbed.resolve_model("default"))
    assert path == shipped_dir
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def heldout_scenes():
    from layerscope_testbed.shapes import sample_scenes

    return sample_scenes(12, split="heldout", seed=1000)


def test_default_model_is_the_trained_one(shipped_dir):

    assert testbed.resolve_model("default") == shipped_dir
    assert testbed.resolve_model("random") != shipped_dir
    info = testbed.model_info(shipped_dir)
    assert info["weights"] == "trained"
    assert info["model_id"].startswith(testbed.TRAINED_MODEL_NAME)
    assert (shipped_dir / "MODEL_CARD.md").read_text().startswith("# layerscope-shapes-wan-i2v")


def test_weights_are_safetensors_small_and_free_of_machine_paths(shipped_dir):
    files = [p for p in shipped_dir.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in UNSAFE_SUFFIXES]
    weights = [p for p in files if p.suffix == ".safetensors"]
    components = {p.parent.name for p in weights}
    assert {"transformer", "vae", "text_encoder", "image_encoder", "clip"} <= components
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    for path in files:
        if path.suffix in {".json", ".jsonl", ".md", ".txt"}:
            text = path.read_text()
            for marker in ("/tmp/", "/work/", "/root/", "/home/"):
                assert marker not in text, f"{path.name} mentions a machine path ({marker})"
    recipe = json.loads((shipped_dir / "layerscope_model.json").read_text())["train_config"]
    assert recipe["seed"] == 0 and "out" not in recipe


def test_shipped_model_loads_through_the_wan_pipeline(trained_pipe):
    from diffusers import WanImageToVideoPipeline

    from layerscope.adapters.registry import resolve_adapter

    assert isinstance(trained_pipe, WanImageToVideoPipeline)
    adapter = resolve_adapter(trained_pipe)
    assert adapter.num_layers() == trained_pipe.transformer.config.num_layers == 12
    assert adapter.token_grid(9, 256, 256)[1:] == (16, 16)
    # trained latent statistics, not the random model's zeros and ones
    assert not np.allclose(trained_pipe.vae.config.latents_std, 1.0)


@pytest.mark.slow
def test_vae_reconstructs_the_shapes(trained_pipe, heldout_scenes):
    from layerscope_testbed.shapes import render_video
    from layerscope_testbed.shapes.train import reconstruction_check

    videos = np.stack([render_video(s, num_frames=9, height=256, width=256) for s in heldout_scenes[:3]])
    check = reconstruction_check(trained_pipe.vae, videos)
    assert not check["collapsed"]
    assert check["shape_error"] < 0.3 * check["grey_shape_error"]
    assert check["std_ratio"] > 0.8


def test_clip_matches_images_to_their_subjects_colour(shipped_dir, heldout_scenes):
    """FSG's keyword selection needs a joint space: an image must prefer its subject's colour.

    Measured on these 12 held-out scenes with captions "the <colour> <subject kind>.":
    shipped CLIP 0.75, random CLIP 0.00, chance 0.20.
    """
    import torch

    from layerscope.clip import load_open_clip, tokenizer_for
    from layerscope_testbed.shapes.render import reference_image
    from layerscope_testbed.shapes.train import _clip_pixels
    from layerscope_testbed.shapes.world import COLOURS

    clip = load_open_clip(shipped_dir / testbed.CLIP_SUBFOLDER)
    tokenizer = tokenizer_for(clip)
    colours = list(COLOURS)
    images = np.stack([reference_image(s, height=256, width=256) for s in heldout_scenes])
    hits = []
    with torch.no_grad():
        image_features = torch.nn.functional.normalize(clip.encode_image(_clip_pixels(images)), dim=-1)
        for scene, features in zip(heldout_scenes, image_features):
            subject = scene.shapes[0]
            captions = [f"the {colour} {subject.kind}." for colour in colours]
            text = torch.nn.functional.normalize(clip.encode_text(tokenizer(captions)), dim=-1)
            hits.append(colours[int((text @ features).argmax())] == subject.colour)
    assert np.mean(hits) >= 0.5


def test_record_uses_the_trained_model_by_default(tmp_path):
    import layerscope
    from layerscope.cli import main

    out = tmp_path / "run.zarr"
    assert main(["record", "--out", str(out), "--steps", "2", "--frames", "5", "--quiet"]) == 0
    ds = layerscope.open_run(out)
    assert ds.attrs["status"] == "complete"
    assert ds.attrs["weights"] == "trained"
    assert ds.attrs["model_id"].startswith(testbed.TRAINED_MODEL_NAME)
    assert ds.sizes["layer"] == 12
