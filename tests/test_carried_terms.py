"""Intrinsic maps stay free of Focal Guidance's terms at *every* layer, not only the first weak one.

With ``inject_at="hidden"`` the term FG adds at weak block l rides the residual stream
into every later block.  The recorder's intrinsic map of a later block must be
cos(V_k, norm(z - carried)), with ``carried`` the sum of the terms added before it in
this call.  Everything expected here comes from tensors the test's own hooks capture:
the block's input z, the text values before Eq. 8's fusion, and each weak block's term
read as (output after FG) - (output before FG's residual hook).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fg_intervene.plugin import create
from layerscope.adapters.registry import resolve_adapter
from layerscope.interventions import IntrinsicInputs, RunInputs
from layerscope.probes import ProbeConfig, apply_probes

#: one worker builds this module's tiny pipelines once (make test runs xdist with --dist loadgroup)
pytestmark = pytest.mark.xdist_group("carried")


def _cos_maps(values: torch.Tensor, rows: list[list[int]], visual: torch.Tensor, grid) -> torch.Tensor:
    keys = torch.stack([values[r].float().mean(0) for r in rows])
    return (F.normalize(keys, dim=-1) @ F.normalize(visual.float(), dim=-1).T).reshape(len(rows), *grid)


def _probe(adapter, rows, grid, layers, channel):
    maps: dict[int, torch.Tensor] = {}
    config = ProbeConfig(keyword_tokens=rows, grid=grid, kind="hidden", layers=layers)
    handle = apply_probes(adapter, config, lambda step, layer, branch, m: maps.setdefault(layer, m), intrinsic=channel)
    return handle, maps


def test_wan_carried_terms_are_removed_at_a_second_weak_and_a_downstream_layer(tiny_pipe, example, model_dir):
    weak, probed = [3, 4, 5], [4, 6]
    adapter = resolve_adapter(tiny_pipe)
    blocks = tiny_pipe.transformer.blocks
    image = Image.fromarray(example["image"]).resize((example["width"], example["height"]))
    grid = adapter.token_grid(example["num_frames"], example["height"], example["width"])
    channel = IntrinsicInputs()
    inputs = RunInputs(
        tiny_pipe, adapter, example["prompt"], image, 256, 256, example["num_frames"], grid, intrinsic=channel
    )
    fg = create(
        settings={"weak_layers": weak, "keywords": ["red", "circle"], "lambda_lat": 2.0}, clip=model_dir / "clip"
    )
    seen: dict = {}
    hooks = []
    for layer in probed:
        hooks.append(
            blocks[layer].norm2.register_forward_pre_hook(
                lambda m, a, layer=layer: seen.update({("z", layer): a[0].clone()}), prepend=True
            )
        )
        hooks.append(
            blocks[layer].attn2.to_v.register_forward_hook(
                lambda m, a, o, layer=layer: seen.update({("v", layer): o[0].clone()}), prepend=True
            )
        )
    for layer in weak:
        hooks.append(
            blocks[layer].attn2.register_forward_hook(
                lambda m, a, o, layer=layer: seen.update({("pre", layer): o.clone()}), prepend=True
            )
        )
    handle = fg.apply(inputs)
    for layer in weak:
        hooks.append(
            blocks[layer].attn2.register_forward_hook(
                lambda m, a, o, layer=layer: seen.update({("post", layer): o.clone()})
            )
        )
    rows = [list(k.token_indices) for k in adapter.map_keywords(example["prompt"], ["red", "circle"])]
    probes, maps = _probe(adapter, rows, grid, probed, channel)
    frames = (example["num_frames"] - 1) // 4 + 1
    generator = torch.Generator().manual_seed(0)
    call = {
        "hidden_states": torch.randn(1, 20, frames, 32, 32, generator=generator),
        "timestep": torch.tensor([700.0]),
        "encoder_hidden_states": tiny_pipe.encode_prompt(example["prompt"], do_classifier_free_guidance=False)[0],
        "encoder_hidden_states_image": tiny_pipe.encode_image(image, device=torch.device("cpu")),
        "return_dict": False,
    }
    try:
        with torch.no_grad(), tiny_pipe.transformer.cache_context("cond"):
            tiny_pipe.transformer(**call)
    finally:
        probes.remove()
        handle.remove()
        for hook in hooks:
            hook.remove()
    assert len(channel) == 0, "no offer may outlive its block"
    terms = {layer: seen[("post", layer)] - seen[("pre", layer)] for layer in weak}
    assert all(float(t.abs().max()) > 1e-3 for t in terms.values()), "FG must add a term at every weak layer"
    for layer in probed:
        carried = sum(terms[w] for w in weak if w < layer)
        z = seen[("z", layer)]
        with torch.no_grad():
            expected = _cos_maps(seen[("v", layer)], rows, blocks[layer].norm2(z - carried)[0], grid)
            naive = _cos_maps(seen[("v", layer)], rows, blocks[layer].norm2(z)[0], grid)
        torch.testing.assert_close(maps[layer], expected, rtol=0, atol=1e-5)
        assert float((naive - expected).abs().max()) > 1e-3, "the carried terms must matter on this input"


@pytest.fixture(scope="module", params=["token_replace", "latent_concat"])
def hunyuan(request, tmp_path_factory):
    from layerscope.loading import load_pipeline
    from layerscope_testbed.hunyuan_video import save_tiny_pipeline

    folder = save_tiny_pipeline(tmp_path_factory.mktemp("hunyuan") / request.param, request.param)
    pipe, _ = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    return folder, pipe


def _hunyuan_norm(block, hidden, args):
    """The single block's input normalisation of visual rows (token-replace: frame 0 its own)."""
    if type(block.norm).__name__ == "HunyuanVideoTokenReplaceAdaLayerNormZeroSingle":
        return block.norm(hidden, args[2], args[5], args[6])[0]
    return block.norm(hidden, emb=args[2])[0]


def test_hunyuan_carried_terms_are_removed_at_a_second_weak_and_a_downstream_layer(hunyuan):
    folder, pipe = hunyuan
    weak, probed = [3, 4], [4, 5]  # single blocks 1, 2; block 3 is downstream
    adapter = resolve_adapter(pipe)
    offset = len(pipe.transformer.transformer_blocks)
    singles = pipe.transformer.single_transformer_blocks
    grid = adapter.token_grid(9, 64, 64)
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    prompt = "the red circle moves to the left"
    channel = IntrinsicInputs()
    inputs = RunInputs(pipe, adapter, prompt, image, 64, 64, 9, grid, model_dir=folder, intrinsic=channel)
    fg = create(settings={"weak_layers": weak, "keywords": ["red"], "lambda_lat": 2.0}, clip=folder / "clip")
    seen: dict = {}
    hooks = []

    def keep_args(layer):
        return lambda m, a: seen.update({("args", layer): tuple(x.clone() if torch.is_tensor(x) else x for x in a)})

    for layer in probed:
        block = singles[layer - offset]
        hooks.append(block.register_forward_pre_hook(keep_args(layer), prepend=True))
        hooks.append(
            block.attn.to_v.register_forward_hook(
                lambda m, a, o, layer=layer: seen.update({("v", layer): o[0].clone()}), prepend=True
            )
        )
    for layer in weak:
        hooks.append(
            singles[layer - offset].register_forward_hook(
                lambda m, a, o, layer=layer: seen.update({("pre", layer): o[0].clone()}), prepend=True
            )
        )
    handle = fg.apply(inputs)
    for layer in weak:
        hooks.append(
            singles[layer - offset].register_forward_hook(
                lambda m, a, o, layer=layer: seen.update({("post", layer): o[0].clone()})
            )
        )
    rows = [list(k.token_indices) for k in adapter.map_keywords(prompt, ["red", "circle"])]
    probes, maps = _probe(adapter, rows, grid, probed, channel)
    settings = type("Settings", (), {"guidance_scale": 6.0, "negative_prompt": None})()
    try:
        with torch.no_grad():
            pipe(
                image=image,
                prompt=prompt,
                output_type="latent",
                generator=torch.Generator().manual_seed(0),
                height=64,
                width=64,
                num_frames=9,
                num_inference_steps=1,
                **adapter.call_kwargs(settings),
            )
    finally:
        probes.remove()
        handle.remove()
        for hook in hooks:
            hook.remove()
    assert len(channel) == 0
    terms = {layer: seen[("post", layer)] - seen[("pre", layer)] for layer in weak}
    assert all(float(t.abs().max()) > 1e-3 for t in terms.values())
    for layer in probed:
        args = seen[("args", layer)]
        carried = sum(terms[w] for w in weak if w < layer)
        n_visual = args[0].shape[1]
        values = seen[("v", layer)][n_visual:]  # the text rows follow the visual ones
        block = singles[layer - offset]
        with torch.no_grad():
            expected = _cos_maps(values, rows, _hunyuan_norm(block, args[0] - carried, args)[0], grid)
            naive = _cos_maps(values, rows, _hunyuan_norm(block, args[0], args)[0], grid)
        torch.testing.assert_close(maps[layer], expected, rtol=0, atol=1e-5)
        assert float((naive - expected).abs().max()) > 1e-3
