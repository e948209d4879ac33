"""Focal Guidance on HunyuanVideo-1.5 I2V's double-stream blocks (tiny offline pipeline).

Every expectation is computed here from tensors this file's own hooks capture, never from
FG's internals: the ``add_v_proj`` rows before and after Eq. 8's hook, the block's input
before FG's pre-hook, Eq. 9's and Eq. 13's residual by re-running the block on ``z + d``
with FG removed, the anchor weights and R_k from the CLIP by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

#: one worker builds this module's tiny pipelines once (make test runs xdist with --dist loadgroup)
pytestmark = pytest.mark.xdist_group("hunyuan15-fg")


PROMPT = "the red circle moves to the left"
KEYWORDS = ["red", "circle"]
SIZE = dict(height=128, width=128, num_frames=5)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def hy15(tmp_path_factory):
    from layerscope.loading import load_pipeline
    from layerscope_testbed.hunyuan_video15 import build

    folder = build(tmp_path_factory.mktemp("hy15fg") / "tiny", 0, None)
    pipe, _ = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    return folder, pipe


def _image(height=128, width=128):
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def _fg(folder, **settings):
    from fg_intervene.plugin import create

    return create(settings={"weak_layers": [2], "keywords": KEYWORDS, **settings}, clip=folder / "clip")


def _inputs(hy15, image=None, intrinsic=None):
    from layerscope.adapters.registry import resolve_adapter
    from layerscope.interventions import RunInputs

    folder, pipe = hy15
    adapter = resolve_adapter(pipe)
    image = image or _image()
    height, width = image.height, image.width
    grid = adapter.token_grid(5, height, width)
    return RunInputs(pipe, adapter, PROMPT, image, height, width, 5, grid, model_dir=folder, intrinsic=intrinsic)


def _clone(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _run(hy15, install, layers=(0, 1, 2, 3), steps=1, guidance=1.0):
    """Run one generation; ``install()`` puts FG on between this file's "before" and "after" hooks.

    Per block and call: ``args`` (the block's input, read before FG's pre-hook), ``z``
    (``attn``'s visual input as the attention receives it), ``values``/``fused`` (the
    ``add_v_proj`` output before/after Eq. 8's hook), ``out`` (the block's outputs).
    """
    folder, pipe = hy15
    blocks = pipe.transformer.transformer_blocks
    seen = {layer: [] for layer in layers}
    hooks = []
    for layer in layers:
        block = blocks[layer]

        def before(module, args, kwargs, layer=layer):
            seen[layer].append({"args": tuple(_clone(a) for a in args)})

        def values(module, args, output, layer=layer):
            seen[layer][-1]["values"] = output[0].detach().clone()

        hooks += [
            block.register_forward_pre_hook(before, with_kwargs=True),
            block.attn.add_v_proj.register_forward_hook(values),
        ]
    handle = install()
    for layer in layers:
        block = blocks[layer]

        def z(module, args, kwargs, layer=layer):
            seen[layer][-1]["z"] = kwargs["hidden_states"][0].detach().clone()

        def fused(module, args, output, layer=layer):
            seen[layer][-1]["fused"] = output[0].detach().clone()

        def out(module, args, output, layer=layer):
            seen[layer][-1]["out"] = tuple(o.detach().clone() for o in output)

        hooks += [
            block.attn.register_forward_pre_hook(z, with_kwargs=True),
            block.attn.add_v_proj.register_forward_hook(fused),
            block.register_forward_hook(out),
        ]
    inputs = _inputs(hy15)
    settings = type("C", (), {"guidance_scale": guidance, "negative_prompt": None})()
    try:
        with torch.no_grad():
            inputs.adapter.generate(
                image=inputs.image,
                prompt=PROMPT,
                output_type="latent",
                generator=torch.Generator().manual_seed(0),
                num_inference_steps=steps,
                **SIZE,
                **inputs.adapter.call_kwargs(settings),
            )
    finally:
        if handle is not None:
            handle.remove()
        for hook in hooks:
            hook.remove()
    return inputs.adapter, seen


def _keyword_rows(pipe, word):
    """Context row of ``word``: 16 SigLIP rows, no glyph rows, then the prompt after the template head."""
    messages = [{"role": "system", "content": pipe.system_message}, {"role": "user", "content": PROMPT}]
    ids = pipe.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    pieces = pipe.tokenizer.convert_ids_to_tokens(ids["input_ids"])
    (token,) = [i for i, piece in enumerate(pieces) if piece.replace("Ġ", "") == word]
    n_image = (pipe.image_encoder.config.image_size // pipe.image_encoder.config.patch_size) ** 2
    return [n_image + token - pipe.prompt_template_encode_start_idx]


def _hand_similarity(folder, pipe, image, word):
    """S_k = -cos(CLIP word tokens, CLIP patches) for the pixels SigLIP sees, mean over the word's tokens."""
    from layerscope.clip import image_patch_features, load_clip, text_token_features

    clip = load_clip(folder / "clip")
    pixels = pipe.feature_extractor(images=image, return_tensors="pt")["pixel_values"]
    raw = F.interpolate(pixels * 0.5 + 0.5, size=(112, 112), mode="bicubic", align_corners=False).clamp(0, 1)
    normed = (raw - torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    _, patches = image_patch_features(clip, normed)
    text, pieces = text_token_features(clip, PROMPT)
    rows = [i for i, piece in enumerate(pieces) if piece == f"{word}</w>"]
    return -(F.normalize(text[rows], dim=-1) @ F.normalize(patches, dim=-1).T).mean(0)  # (64,) on 8x8


def test_hunyuan15_fg_anchor_weights_and_region_by_hand(hy15):
    """Eq. 6-7's weights over the 4x4 SigLIP rows and Eq. 9's R_k over the whole (non-square) frame 0."""
    from fg_intervene.hunyuan_video15 import prepare_guidance

    folder, pipe = hy15
    inputs = _inputs(hy15)
    height, width = inputs.adapter.bucket(64, 128)  # a wide reference: a non-square token grid
    inputs = _inputs(hy15, image=_image(height, width))
    _, rows, columns = inputs.grid
    assert rows != columns
    fg = _fg(folder, tau_region=0.3)
    guidance = prepare_guidance(pipe, inputs.adapter, fg.config, inputs, fg._clip(folder))
    assert guidance.token_indices == [_keyword_rows(pipe, w) for w in KEYWORDS]
    for k, word in enumerate(KEYWORDS):
        s_k = _hand_similarity(folder, pipe, inputs.image, word).reshape(1, 1, 8, 8)
        on_siglip = F.interpolate(s_k, size=(4, 4), mode="bilinear", align_corners=False).reshape(-1).clamp(min=0)
        torch.testing.assert_close(guidance.image_row_weights[k], on_siglip / on_siglip.sum(), rtol=1e-4, atol=1e-6)
        frame = F.interpolate(s_k, size=(rows, columns), mode="bilinear", align_corners=False)[0, 0]
        frame = (frame - frame.min()) / (frame.max() - frame.min())
        expected = torch.where(frame > 0.3, frame, torch.zeros_like(frame))
        torch.testing.assert_close(guidance.region[k], expected, rtol=1e-4, atol=1e-5)
        assert 0 < int((expected > 0).sum()) < rows * columns


def test_hunyuan15_fg_text_values_by_hand(hy15):
    """Eq. 8: at weak block 2 the keyword rows of ``add_v_proj`` gain lambda_txt * V_k^vis, no other row
    moves; V_k^vis is the anchor-weighted sum of the block's own SigLIP value rows; other blocks untouched."""
    folder, pipe = hy15
    fg = _fg(folder, lambda_txt=1.5, lambda_lat=0.0, attention_cache=False)
    _, seen = _run(hy15, lambda: fg.apply(_inputs(hy15)))
    (call,) = seen[2]
    before, after = call["values"], call["fused"]
    weights = fg.guidance.image_row_weights
    expected = before.clone()
    for k, word in enumerate(KEYWORDS):
        (row,) = _keyword_rows(pipe, word)
        v_vis = weights[k] @ before[:16].float()
        expected[row] += 1.5 * v_vis
        assert float(v_vis.norm()) > 0.1
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-6)
    changed = (after != before).any(-1).nonzero().reshape(-1).tolist()
    assert changed == sorted(r for w in KEYWORDS for r in _keyword_rows(pipe, w))
    for layer in (0, 1, 3):  # not weak: values unchanged, and no visual term (lambda_lat = 0, no cache)
        assert torch.equal(seen[layer][0]["values"], seen[layer][0]["fused"])
    args = seen[2][0]["args"]  # no visual term: the attention sees norm1(z) of the block's own input
    with torch.no_grad():
        plain = pipe.transformer.transformer_blocks[2].norm1(args[0], emb=args[2])[0][0]
    torch.testing.assert_close(seen[2][0]["z"], plain, rtol=0, atol=0)


def test_hunyuan15_fg_latent_injection_by_hand(hy15):
    """Eq. 9: the weak block's outputs equal the plain block on (z + d), d = lambda_lat * w_k * V_k^vis on
    the frame-0 rows inside R_k only; the attention sees norm1(z + d)."""
    folder, pipe = hy15
    fg = _fg(folder, lambda_txt=0.0, lambda_lat=2.0, attention_cache=False)
    _, seen = _run(hy15, lambda: fg.apply(_inputs(hy15)))
    (call,) = seen[2]
    args = call["args"]
    region = fg.guidance.region  # (K, 8, 8), checked by hand above
    v_vis = fg.guidance.image_row_weights @ call["values"][:16].float()  # the block's own SigLIP values
    delta = torch.zeros_like(args[0])
    delta[0, :64] = 2.0 * region.reshape(len(KEYWORDS), 64).T @ v_vis
    moved = delta[0].abs().sum(-1) > 0
    assert torch.equal(moved[:64], (region.sum(0) > 0).reshape(-1)) and not moved[64:].any()
    assert 0 < int(moved.sum()) < 64
    block = pipe.transformer.transformer_blocks[2]
    with torch.no_grad():  # FG removed: the plain block on z + d
        hidden, context = block(args[0] + delta, *args[1:])
        expected_z = block.norm1(args[0] + delta, emb=args[2])[0][0]
    torch.testing.assert_close(call["out"][0], hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(call["out"][1], context, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(call["z"], expected_z, rtol=1e-5, atol=1e-5)
    # the residual carries d into block 3
    torch.testing.assert_close(seen[3][0]["args"][0], hidden, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert float((block(*args)[0] - hidden).abs().max()) > 0.05  # d is far above the tolerance


def _hand_maps(rows, values, z, grid):
    keys = torch.stack([values[r].float().mean(0) for r in rows])
    return (F.normalize(keys, dim=-1) @ F.normalize(z.float(), dim=-1).T).reshape(len(rows), *grid)


def test_hunyuan15_attention_cache_by_hand(hy15):
    """Eq. 11-13 over two steps with CFG: step 0 averages strong layers 0-1 (layer 3 has not run), step 1
    layers 0-1 of step 1 and layer 3 of step 0 (alpha = 1/(L - m) = 1/3); thresholded at tau_cache, times
    V_k^vis, on every visual row; the uncond calls are not guided."""
    folder, pipe = hy15
    fg = _fg(folder, fsg=False, lambda_cache=0.7, tau_cache=0.05)
    adapter, seen = _run(hy15, lambda: fg.apply(_inputs(hy15)), steps=2, guidance=3.0)
    assert [len(seen[layer]) for layer in range(4)] == [4, 4, 4, 4]  # (cond, uncond) x 2 steps
    rows = [_keyword_rows(pipe, w) for w in KEYWORDS]
    grid = adapter.token_grid(5, 128, 128)
    block = pipe.transformer.transformer_blocks[2]

    def strong_map(layer, call):
        return _hand_maps(rows, seen[layer][call]["values"], seen[layer][call]["z"], grid)

    for call, sources in ((0, [(0, 0), (1, 0)]), (2, [(0, 2), (1, 2), (3, 0)])):
        cache = sum(strong_map(layer, c) for layer, c in sources) / len(sources)
        kept = torch.where(cache > 0.05, cache, torch.zeros_like(cache))
        assert 0 < int((kept > 0).sum()) < kept.numel()  # the threshold bites
        captured = seen[2][call]
        v_vis = fg.guidance.image_row_weights @ captured["values"][:16].float()
        delta = 0.7 * (kept.reshape(len(rows), -1).T @ v_vis)[None]
        args = captured["args"]
        with torch.no_grad():
            expected = block(args[0] + delta, *args[1:])
            assert float((block(*args)[0] - expected[0]).abs().max()) > 0.05  # d is far above the tolerance
        torch.testing.assert_close(captured["out"][0], expected[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(captured["out"][1], expected[1], rtol=1e-5, atol=1e-5)
        assert torch.equal(captured["values"], captured["fused"])  # fsg off: no Eq. 8
    for call in (1, 3):  # uncond: the plain block
        args = seen[2][call]["args"]
        with torch.no_grad():
            torch.testing.assert_close(seen[2][call]["out"][0], block(*args)[0], rtol=0, atol=0)


def test_hunyuan15_fg_projected_anchor(hy15):
    """D3's alternative: V_k^vis = add_v_proj(norm1_context(P_v(sum_n w_kn v_n))) with P_v the image
    embedder plus the image type embedding, v_n the SigLIP features the transformer receives."""
    from fg_intervene.hunyuan_video15 import apply_focal_guidance, prepare_guidance

    folder, pipe = hy15
    fg = _fg(folder, lambda_txt=1.0, lambda_lat=0.0, attention_cache=False)
    inputs = _inputs(hy15)
    guidance = prepare_guidance(pipe, inputs.adapter, fg.config, inputs, fg._clip(folder), anchor_source="projected")
    transformer = pipe.transformer
    with torch.no_grad():
        features = pipe.feature_extractor(images=inputs.image, return_tensors="pt")
        embeds = pipe.image_encoder(**features).last_hidden_state[0]
        anchors = guidance.image_row_weights @ embeds
        projected = transformer.image_embedder(anchors[None])[0] + transformer.cond_type_embed.weight[2]
    torch.testing.assert_close(guidance.projected, projected, rtol=1e-5, atol=1e-6)
    _, seen = _run(hy15, lambda: apply_focal_guidance(inputs.adapter, fg.config, guidance), layers=(2,))
    (call,) = seen[2]
    block = transformer.transformer_blocks[2]
    with torch.no_grad():
        v_vis = block.attn.add_v_proj(block.norm1_context(projected[None], emb=call["args"][2])[0])[0]
    for k, word in enumerate(KEYWORDS):
        (row,) = _keyword_rows(pipe, word)
        torch.testing.assert_close(call["fused"][row] - call["values"][row], v_vis[k], rtol=1e-4, atol=1e-5)


def test_hunyuan15_fg_intrinsic_and_injected_maps(hy15, tmp_path):
    """The store's intrinsic maps exclude FG's terms at the weak layer and downstream (norm1(z - carried));
    the injected view holds them; zero strengths give the baseline video bit for bit."""
    import layerscope
    from layerscope.recording import record

    folder, pipe = hy15
    blocks = pipe.transformer.transformer_blocks
    seen: dict = {}
    hooks = []
    for layer in (2, 3):

        def keep_input(module, args, layer=layer):
            seen.setdefault(("args", layer), tuple(_clone(x) for x in args))

        def keep_values(module, args, output, layer=layer):
            seen.setdefault(("values", layer), output[0].detach().clone())

        hooks.append(blocks[layer].register_forward_pre_hook(keep_input))
        hooks.append(blocks[layer].attn.add_v_proj.register_forward_hook(keep_values))
    common = dict(image=np.asarray(_image()), prompt=PROMPT, keywords=KEYWORDS, dtype="float32", progress=False, **SIZE)
    common.update(num_inference_steps=1, guidance_scale=1.0)
    fg = _fg(folder, lambda_txt=0.0, lambda_lat=3.0, attention_cache=False)
    try:
        record(pipe, tmp_path / "fg.zarr", intervention=fg, **common)
    finally:
        for hook in hooks:
            hook.remove()
    ds = layerscope.open_run(tmp_path / "fg.zarr")
    grid = tuple(ds.sizes[d] for d in ("frame", "y", "x"))
    rows = [_keyword_rows(pipe, w) for w in KEYWORDS]
    z2, temb = seen[("args", 2)][0], seen[("args", 2)][2]
    v_vis = fg.guidance.image_row_weights @ seen[("values", 2)][:16].float()
    delta = torch.zeros_like(z2)
    delta[0, :64] = 3.0 * fg.guidance.region.reshape(len(KEYWORDS), 64).T @ v_vis
    z3 = seen[("args", 3)][0]
    with torch.no_grad():
        expected = {
            ("similarity", 2): _hand_maps(rows, seen[("values", 2)], blocks[2].norm1(z2, emb=temb)[0][0], grid),
            ("similarity_injected", 2): _hand_maps(
                rows, seen[("values", 2)], blocks[2].norm1(z2 + delta, emb=temb)[0][0], grid
            ),
            ("similarity", 3): _hand_maps(rows, seen[("values", 3)], blocks[3].norm1(z3 - delta, emb=temb)[0][0], grid),
            ("similarity_injected", 3): _hand_maps(
                rows, seen[("values", 3)], blocks[3].norm1(z3, emb=temb)[0][0], grid
            ),
        }
    for (variable, layer), maps in expected.items():
        stored = torch.from_numpy(ds[variable].isel(step=0, layer=layer).values.astype(np.float32))
        torch.testing.assert_close(stored, maps, rtol=0, atol=2e-3)
    gap = (expected[("similarity", 3)] - expected[("similarity_injected", 3)]).abs().max()
    assert float(gap) > 0.05  # the carried term is big enough for the check to bite
    assert np.isnan(ds.similarity_injected.isel(layer=[0, 1]).values).all()

    base = record(pipe, tmp_path / "base.zarr", **common)
    zero = record(
        pipe,
        tmp_path / "zero.zarr",
        intervention=_fg(folder, lambda_txt=0.0, lambda_lat=0.0, lambda_cache=0.0),
        **common,
    )
    assert np.array_equal(base.video, zero.video)
    a, b = layerscope.open_run(tmp_path / "base.zarr"), layerscope.open_run(tmp_path / "zero.zarr")
    np.testing.assert_array_equal(a.similarity.values, b.similarity.values)


def test_hunyuan15_fg_cli_end_to_end(hy15, tmp_path, capsys):
    """record -> rank -> record --intervene focal-guidance (automatic keywords) -> report --compare;
    bad FG settings are refused in one line with exit 2 and no store."""
    import re

    import layerscope
    from layerscope.cli import main

    folder, _ = hy15
    size = ["--height", "128", "--width", "128", "--frames", "5", "--steps", "2", "--quiet"]
    common = ["--model", str(folder), "--prompt", PROMPT, "--keywords", "red,circle", *size, "--guidance", "3"]
    base, guided = tmp_path / "base.zarr", tmp_path / "fg.zarr"
    assert main(["record", *common, "--out", str(base)]) == 0
    ranking = tmp_path / "ranking.json"
    assert main(["rank", str(base), "--method", "bottom-k", "--k", "2", "--out", str(ranking)]) == 0
    fg = ["--intervene", "focal-guidance", "--ranking", str(ranking), "--fg-set", "weak_layers=[1,2]"]
    assert main(["record", *common, *fg, "--out", str(guided)]) == 0
    ds = layerscope.open_run(guided)
    assert ds.attrs["status"] == "complete" and ds.attrs["steps_written"] == [0, 1]
    intervention = ds.attrs["intervention"]
    intervention = json.loads(intervention) if isinstance(intervention, str) else intervention
    assert intervention["weak_layers"] == [1, 2] and intervention["mode"] == "fsg+cache"
    assert intervention["selected_keywords"] and intervention["selection_sign_source"] == "Eq. 6 as printed"
    assert np.isfinite(ds.similarity.values).all()
    assert np.isnan(ds.similarity_injected.isel(layer=0).values).all()
    assert np.isfinite(ds.similarity_injected.isel(layer=[1, 2, 3]).values).all()
    assert not np.array_equal(layerscope.open_run(base).video.values, ds.video.values)
    page = tmp_path / "compare.html"
    assert main(["report", str(base), "--compare", str(guided), "--steps-shown", "1", "--out", str(page)]) == 0
    assert re.search(r"touched by the intervention\s+1,\s*2\b", re.sub(r"<[^>]+>", " ", page.read_text()))
    capsys.readouterr()
    for extra, message in (
        (["--fg-set", "weak_layers=[4]"], "weak layer 4 is out of range; this model has layers 0-3"),
        (["--fg-set", "weak_layers=[1]", "--fg-set", 'keywords=["dog"]'], "Focal Guidance keywords"),
        (["--fg-set", "weak_layers=[1]", "--clip", str(tmp_path)], "no CLIP checkpoint"),
    ):
        bad = tmp_path / "bad.zarr"
        assert main(["record", *common, "--intervene", "focal-guidance", *extra, "--out", str(bad)]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "experimental" not in line]
        assert len(err) == 1 and message in err[0], err
        assert not bad.exists()


def test_hunyuan15_fg_attn_input_variant(hy15):
    """``inject_at="attn-input"``: d reaches the attention's visual input norm1(z) + d only; the block's
    residual input is untouched and nothing is carried into block 3."""
    folder, pipe = hy15
    fg = _fg(folder, lambda_txt=0.0, lambda_lat=2.0, attention_cache=False, inject_at="attn-input")
    _, seen = _run(hy15, lambda: fg.apply(_inputs(hy15)))
    (call,) = seen[2]
    args = call["args"]
    v_vis = fg.guidance.image_row_weights @ call["values"][:16].float()
    delta = torch.zeros_like(args[0][0])
    delta[:64] = 2.0 * fg.guidance.region.reshape(len(KEYWORDS), 64).T @ v_vis
    block = pipe.transformer.transformer_blocks[2]
    with torch.no_grad():
        plain = block.norm1(args[0], emb=args[2])[0][0]
    torch.testing.assert_close(call["z"], plain + delta, rtol=1e-5, atol=1e-5)
    assert float(delta.abs().max()) > 0.05
    assert fg.carried_layers(4) == []
