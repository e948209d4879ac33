"""Planted truth (testbed/layerscope_testbed/shapes/plant.py): a small planted model built in the test.

What is checked, each against a computation that does not use the builder's code path:
the build is bit-for-bit deterministic; the planted blocks' cross-attention output does
not depend on the text at all (two different prompts, same visual input, identical
output) while an unplanted block's does; the recorded ``hidden`` maps of the planted
blocks equal cos(b, z) computed here from the attention inputs captured with our own
hook, the same for every keyword; the readout search's Moran ratio equals esda's Moran's I
up to the N/S0 factor; moving b is function-preserving.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

LAYERS = (4, 5)


def _build(out):
    from layerscope_testbed.shapes.plant import PlantConfig, plant

    config = PlantConfig(str(out), layers=LAYERS, seed=3, clips=1, steps=2, calibration_scenes=1, calibration_steps=2)
    return plant(config)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("planted") / "model")


@pytest.fixture(scope="module")
def planted_pipe(planted):
    from layerscope.loading import load_pipeline

    pipe, _ = load_pipeline(planted)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tensors(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "transformer" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.slow
def test_same_seed_gives_bit_identical_weights(planted, tmp_path):
    again = _build(tmp_path / "again")
    first, second = _tensors(planted), _tensors(again)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    # the text weights of the planted blocks are exactly zero, and only those were frozen at zero
    for layer in LAYERS:
        for name in ("to_k.weight", "to_k.bias", "to_v.weight"):
            assert not first[f"blocks.{layer}.attn2.{name}"].any()
    assert first["blocks.3.attn2.to_v.weight"].abs().sum() > 0


def test_saved_configs_name_no_source_directory(planted):
    """diffusers writes the loaded-from directory as ``_name_or_path``; the plant must drop it."""
    import json

    configs = [planted / "model_index.json", *planted.glob("*/config.json")]
    assert planted / "transformer" / "config.json" in configs
    for path in configs:
        assert "_name_or_path" not in json.loads(path.read_text()), path


def _attn2_output(pipe, layer, hidden, context):
    with torch.no_grad():
        return pipe.transformer.blocks[layer].attn2(hidden, encoder_hidden_states=context)


def test_planted_cross_attention_ignores_the_text(planted_pipe):
    pipe = planted_pipe
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 64, pipe.transformer.config.num_attention_heads * 24, generator=generator)
    image_tokens = torch.randn(1, 257, hidden.shape[-1], generator=generator)
    texts = []
    for prompt in ("the red circle moves to the left.", "the green triangle pushes the blue square."):
        with torch.no_grad():
            embeds, _ = pipe.encode_prompt(prompt, negative_prompt="", device="cpu", max_sequence_length=512)
        texts.append(pipe.transformer.condition_embedder.text_embedder(embeds))
    contexts = [torch.cat([image_tokens, text], dim=1) for text in texts]
    for layer in LAYERS:
        a, b = (_attn2_output(pipe, layer, hidden, c) for c in contexts)
        assert torch.equal(a, b)
    # control: an unplanted block reads the text (so the check above can fail)
    a, b = (_attn2_output(pipe, 3, hidden, c) for c in contexts)
    assert (a - b).abs().max() > 1e-3


def test_planted_maps_are_cos_of_the_constant_value(planted_pipe, tmp_path):
    import layerscope
    import layerscope_testbed as testbed
    from layerscope.recording import record

    pipe = planted_pipe
    captured = {layer: [] for layer in LAYERS}
    handles = []
    for layer in LAYERS:

        def hook(module, args, kwargs, layer=layer):
            captured[layer].append((args[0] if args else kwargs["hidden_states"])[0].detach().clone())

        handles.append(pipe.transformer.blocks[layer].attn2.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        out = tmp_path / "run.zarr"
        record(
            pipe,
            out,
            image=testbed.example_image(),
            prompt="the red circle moves to the left.",
            keywords=["red", "circle", "left"],
            height=256,
            width=256,
            num_frames=9,
            num_inference_steps=2,
            dtype="float32",
            progress=False,
        )
    finally:
        for handle in handles:
            handle.remove()
    ds = layerscope.open_run(out)
    sim = ds["similarity"].values  # step, layer, keyword, frame, y, x
    for layer in LAYERS:
        bias = pipe.transformer.blocks[layer].attn2.to_v.bias.detach()
        for step in range(2):
            x = captured[layer][2 * step]  # cond then uncond per step: the probe records cond
            expected = (x @ bias / (x.norm(dim=-1) * bias.norm())).reshape(sim.shape[3:]).numpy()
            for keyword in range(3):
                np.testing.assert_allclose(sim[step, layer, keyword], expected, atol=2e-5)
    # an unplanted block's keywords have maps of their own
    assert np.abs(sim[0, 3, 0] - sim[0, 3, 1]).max() > 1e-2


def test_readout_ratio_is_esda_moran():
    from esda.moran import Moran
    from libpysal.weights import lat2W

    from layerscope_testbed.shapes.plant import lagged_moments

    rng = np.random.default_rng(0)
    height = width = 6
    field = rng.normal(size=(1, 8, height, width))
    smooth = field + np.roll(field, 1, axis=2) + np.roll(field, 1, axis=3)  # some autocorrelation
    x = torch.from_numpy(smooth.reshape(8, -1).T.copy())  # N tokens x D
    a, b = lagged_moments(x, (1, height, width))
    a, b = a[0], b[0]
    direction = rng.normal(size=8)
    xn = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    m = xn @ direction
    w = lat2W(height, width, rook=False)
    moran = Moran(m, w, transformation="b", permutations=0)
    ratio = direction @ a @ direction / (direction @ b @ direction)
    assert ratio * len(m) / w.s0 == pytest.approx(moran.I, abs=1e-9)


def test_white_readout_finds_the_unstructured_direction():
    from layerscope_testbed.shapes.plant import lagged_moments, white_readout

    rng = np.random.default_rng(1)
    height = width = 16
    smooth = rng.normal(size=(height + 4, width + 4))
    kernel = np.ones((5, 5)) / 25
    smooth = np.array(
        [[(smooth[i : i + 5, j : j + 5] * kernel).sum() for j in range(width)] for i in range(height)]
    )  # spatially smooth
    noise = rng.normal(size=(height, width)) * smooth.std()
    # features: channel 0 smooth, channel 1 white noise, channel 2 a constant offset (keeps norms > 0)
    x = np.stack([smooth.ravel(), noise.ravel(), np.full(height * width, 5.0)], axis=1)
    a, b = lagged_moments(torch.from_numpy(x), (1, height, width))
    direction, ratio = white_readout(a, b, components=2)
    assert abs(ratio) < 0.05 * 8  # Moran ratio of white noise is ~0 (times S0/N ~ 8 for a queen lattice)
    assert abs(direction[1]) > 0.9  # the noise channel


def test_retarget_keeps_the_block_function(planted_pipe):
    import copy

    from layerscope_testbed.shapes.plant import retarget_text_value

    attn = copy.deepcopy(planted_pipe.transformer.blocks[LAYERS[0]].attn2)
    generator = torch.Generator().manual_seed(2)
    dim = attn.to_v.bias.shape[0]
    hidden = torch.randn(1, 32, dim, generator=generator)
    context = torch.randn(1, 257 + 16, dim, generator=generator)
    with torch.no_grad():
        before = attn(hidden, encoder_hidden_states=context)
    retarget_text_value(attn, torch.randn(dim, generator=generator))
    with torch.no_grad():
        after = attn(hidden, encoder_hidden_states=context)
    np.testing.assert_allclose(after.numpy(), before.numpy(), atol=1e-5)


@pytest.mark.parametrize("layers", ["0-3", "4-11", "x"])
def test_bad_layers_are_one_line(layers, tmp_path, capsys):
    from layerscope.cli import main

    out = tmp_path / "planted"
    assert main(["testbed", "plant", "--layers", layers, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_planted_value_bias_is_the_parents_bit_for_bit(planted):
    # only the cause is planted: nothing of the blind blocks was chosen by looking at maps
    import json

    from layerscope_testbed import shipped_model_dir

    parent, child = _tensors(shipped_model_dir()), _tensors(planted)
    for layer in LAYERS:
        name = f"blocks.{layer}.attn2.to_v.bias"
        assert torch.equal(child[name], parent[name]), name
    info = json.loads((planted / "layerscope_model.json").read_text())
    assert info["readout"] == {} and info["plant_config"]["tune_readout"] is False
    assert "Only the cause is planted" in (planted / "MODEL_CARD.md").read_text()
