"""Recording on the tiny real-architecture Wan pipeline: hooks, store, hand-checked maps."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import xarray as xr

import layerscope
from layerscope.recording import record, trace
from layerscope.store import StoreError


def _plain_run(pipe, example, seed=0):
    from PIL import Image

    image = Image.fromarray(example["image"])
    out = pipe(
        image=image,
        prompt=example["prompt"],
        height=example["height"],
        width=example["width"],
        num_frames=example["num_frames"],
        num_inference_steps=example["num_inference_steps"],
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return out.frames[0]


def test_store_shape_coords_and_provenance(recorded_run, example, tiny_pipe):
    path, summary = recorded_run
    ds = layerscope.open_run(path)
    layers = tiny_pipe.transformer.config.num_layers
    steps = example["num_inference_steps"]
    frames = (example["num_frames"] - 1) // 4 + 1
    assert ds.similarity.dims == ("step", "layer", "keyword", "frame", "y", "x")
    assert ds.similarity.shape == (steps, layers, 2, frames, 16, 16)
    assert ds.similarity.encoding["chunks"] == (1, 1, 2, frames, 16, 16)
    assert list(ds.keyword.values) == example["keywords"]
    assert list(ds.block.values) == [f"blocks.{i}" for i in range(layers)]
    assert ds.attrs["status"] == "complete"
    assert ds.attrs["steps_written"] == list(range(steps))
    assert ds.attrs["hook_calls"] == steps * layers
    assert ds.attrs["probe_kind"] == "hidden" and ds.attrs["branch"] == "cond"
    assert ds.attrs["prompt"] == example["prompt"]
    assert ds.attrs["seed"] == 0
    assert np.all(np.diff(ds.timestep.values) < 0), "timesteps decrease over denoising"
    assert ds.reference.shape == (256, 256, 3)
    np.testing.assert_array_equal(ds.reference.values, example["image"])
    assert ds.video.shape == (example["num_frames"], 256, 256, 3)
    assert ds.video.values.std() > 0
    assert not np.isnan(ds.similarity.values).any()
    # the store opens with plain xarray too
    plain = xr.open_zarr(path, consolidated=False)
    assert plain.similarity.shape == ds.similarity.shape
    assert summary.maps_written == steps * layers


def test_hook_calls_cond_only_by_default_and_both_doubles(tiny_pipe, example, tmp_path):
    with trace(tiny_pipe, tmp_path / "a.zarr", layers="1,3", record_steps="0,2", **_trace_args(example)) as rec:
        _plain_run(tiny_pipe, example)
        calls = dict(rec.handle.calls)
        state = rec.handle.state
    assert calls == {1: 2, 3: 2}
    assert state.calls == {"cond": 3, "uncond": 3}  # both branches ran, only cond recorded
    with trace(tiny_pipe, tmp_path / "b.zarr", layers="0", branch="both", **_trace_args(example)) as rec:
        _plain_run(tiny_pipe, example)
        calls = dict(rec.handle.calls)
    assert calls == {0: 2 * example["num_inference_steps"]}
    ds = layerscope.open_run(tmp_path / "b.zarr")
    assert "similarity_uncond" in ds and ds.similarity_uncond.attrs["branch"] == "uncond"
    assert not np.allclose(ds.similarity.values, ds.similarity_uncond.values)


def _trace_args(example):
    return {k: example[k] for k in ("prompt", "keywords", "height", "width", "num_frames", "num_inference_steps")}


def test_hidden_map_equals_hand_computation_from_block_weights(tiny_pipe, example, tmp_path):
    """Eq. 10 by hand: cos(mean_k to_v(text)[tokens], norm2(h)) for block 2 at step 1."""
    block = tiny_pipe.transformer.blocks[2]
    captured = {}
    cond_calls = {"n": 0}

    def count(module, args, kwargs):
        cond_calls["n"] += 1

    def grab(module, args, kwargs):
        # the transformer runs cond then uncond each step: cond call of step 1 is call #3
        if cond_calls["n"] == 3:
            captured["h"] = args[0].detach().clone()
            captured["ctx"] = args[1].detach().clone()

    h1 = tiny_pipe.transformer.register_forward_pre_hook(count, with_kwargs=True)
    h2 = block.attn2.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with trace(tiny_pipe, tmp_path / "h.zarr", dtype="float32", **_trace_args(example)) as rec:
            _plain_run(tiny_pipe, example)
            tokens = rec.probe_config.keyword_tokens
    finally:
        h1.remove()
        h2.remove()
    ds = layerscope.open_run(tmp_path / "h.zarr")
    with torch.no_grad():
        text = captured["ctx"][0, -512:]
        values = block.attn2.to_v(text)
        z = captured["h"][0].double()
        expected = []
        for keyword_tokens in tokens:
            v = values[keyword_tokens].double().mean(0)
            expected.append((z @ v) / (z.norm(dim=-1) * v.norm()))
        expected = torch.stack(expected).reshape(len(tokens), 2, 16, 16).numpy()
    stored = ds.similarity.sel(step=1, layer=2).values
    np.testing.assert_allclose(stored, expected, atol=2e-6)


def test_same_seed_gives_identical_store(tiny_pipe, example, recorded_run, tmp_path):
    path, _ = recorded_run
    record(tiny_pipe, tmp_path / "again.zarr", dtype="float32", progress=False, **example)
    a = layerscope.open_run(path)
    b = layerscope.open_run(tmp_path / "again.zarr")
    np.testing.assert_array_equal(a.similarity.values, b.similarity.values)
    np.testing.assert_array_equal(a.video.values, b.video.values)


def test_interrupted_run_keeps_written_steps_readable(tiny_pipe, example, tmp_path):
    from PIL import Image

    def stop_after_step_1(pipe, step, timestep, kwargs):
        if step == 1:
            raise KeyboardInterrupt
        return kwargs

    with pytest.raises(KeyboardInterrupt), trace(tiny_pipe, tmp_path / "cut.zarr", **_trace_args(example)):
        tiny_pipe(
            image=Image.fromarray(example["image"]),
            prompt=example["prompt"],
            height=256,
            width=256,
            num_frames=example["num_frames"],
            num_inference_steps=example["num_inference_steps"],
            callback_on_step_end=stop_after_step_1,
        )
    ds = layerscope.open_run(tmp_path / "cut.zarr")
    assert ds.attrs["status"] == "interrupted"
    assert ds.attrs["steps_written"] == [0, 1]
    assert "Ctrl-C" in ds.attrs["error"]
    assert not np.isnan(ds.similarity.sel(step=[0, 1]).values).any()
    assert np.isnan(ds.similarity.sel(step=2).values).all()
    assert not (tmp_path / "cut.zarr.lock").exists()


@pytest.mark.slow
def test_hooks_are_removed_after_a_run(tiny_pipe, example, tmp_path):
    before = _plain_run(tiny_pipe, example)
    record(tiny_pipe, tmp_path / "r.zarr", progress=False, **example)
    after = _plain_run(tiny_pipe, example)
    np.testing.assert_array_equal(before, after)
    for block in tiny_pipe.transformer.blocks:
        assert not block.attn2._forward_hooks and not block.attn2._forward_pre_hooks
        assert not block.attn2.to_v._forward_hooks
    assert not tiny_pipe.transformer._diffusers_hook.hooks


@pytest.mark.parametrize("kind", ["output", "attention"])
def test_other_probe_kinds_record_finite_maps(tiny_pipe, example, tmp_path, kind):
    with trace(tiny_pipe, tmp_path / f"{kind}.zarr", probe=kind, layers="0", **_trace_args(example)):
        _plain_run(tiny_pipe, example)
    maps = layerscope.open_run(tmp_path / f"{kind}.zarr").similarity.values.astype(np.float64)
    assert np.isfinite(maps).all()
    if kind == "attention":
        assert (maps >= 0).all() and (maps <= 1).all()
    else:
        assert (np.abs(maps) <= 1.001).all()


def test_open_runs_stacks_along_run(recorded_run, tiny_pipe, example, tmp_path):
    path, _ = recorded_run
    record(tiny_pipe, tmp_path / "seed1.zarr", seed=1, dtype="float32", progress=False, **example)
    both = layerscope.open_runs([path, tmp_path / "seed1.zarr"])
    assert both.similarity.dims[0] == "run"
    assert both.sizes["run"] == 2
    assert list(both.run_seed.values) == [0, 1]
    np.testing.assert_array_equal(both.similarity.isel(run=0).values, layerscope.open_run(path).similarity.values)


def test_existing_store_and_live_lock_are_refused(recorded_run, tiny_pipe, example, tmp_path):
    path, _ = recorded_run
    with pytest.raises(StoreError, match="already exists"):
        record(tiny_pipe, path, progress=False, **example)
    busy = tmp_path / "busy.zarr"
    import json
    import socket

    (tmp_path / "busy.zarr.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(StoreError, match="another process"):
        record(tiny_pipe, busy, progress=False, overwrite=True, **example)
    assert not busy.exists()
    # a lock left by a dead process is stale and taken over
    (tmp_path / "busy.zarr.lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    record(tiny_pipe, busy, progress=False, **example)
    assert layerscope.open_run(busy).attrs["status"] == "complete"


def test_incompatible_store_version_is_refused(recorded_run, tmp_path):
    import shutil

    import zarr

    path, _ = recorded_run
    copy = tmp_path / "old.zarr"
    shutil.copytree(path, copy)
    zarr.open_group(copy, mode="r+").attrs["format"] = "layerscope-run/0"
    with pytest.raises(StoreError, match="store format"):
        layerscope.open_run(copy)


def test_uint8_to_vae_input_scales_to_minus_one_one_and_puts_channels_before_time():
    from layerscope.recording import to_uint8, uint8_to_vae_input

    frames = np.zeros((2, 3, 4, 5, 3), dtype=np.uint8)  # (B, T, H, W, RGB)
    frames[1, 2, 3, 4] = (0, 51, 255)
    tensor = uint8_to_vae_input(frames)
    assert tensor.shape == (2, 3, 3, 4, 5) and tensor.dtype == torch.float32
    # 0 -> -1, 51 -> 51 / 127.5 - 1 = -0.6, 255 -> 1; channel c of pixel (b, t, h, w) lands at [b, c, t, h, w]
    assert tensor[1, :, 2, 3, 4].tolist() == pytest.approx([-1.0, -0.6, 1.0])
    assert float(tensor[0].max()) == -1.0
    # one clip without a batch axis, cast after scaling; the round trip back to uint8 is exact
    single = uint8_to_vae_input(frames[1], dtype=torch.float64)
    assert single.shape == (3, 3, 4, 5) and single.dtype == torch.float64
    back = to_uint8(((single + 1) / 2).movedim(0, -1).numpy())
    np.testing.assert_array_equal(back, frames[1])
