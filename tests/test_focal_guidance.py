"""Focal Guidance on the tiny real-architecture Wan pipeline: exactness, locality, ablations, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import layerscope
from fg_intervene.config import ConfigError, FocalGuidanceConfig
from fg_intervene.plugin import FocalGuidance
from layerscope.adapters.registry import resolve_adapter
from layerscope.cli import main
from layerscope.interventions import RunInputs, load_intervention
from layerscope.recording import record

WEAK = [3, 4, 5]


def _fg(model_dir, **options):
    config = FocalGuidanceConfig(weak_layers=WEAK, keywords=["red", "circle"], **options)
    return FocalGuidance(config, clip_dir=model_dir / "clip")


def _inputs(pipe, example):
    adapter = resolve_adapter(pipe)
    image = Image.fromarray(example["image"]).resize((example["width"], example["height"]))
    grid = adapter.token_grid(example["num_frames"], example["height"], example["width"])
    return RunInputs(pipe, adapter, example["prompt"], image, 256, 256, example["num_frames"], grid)


def _transformer_inputs(pipe, example, seed=0):
    """Fixed inputs for one direct transformer call of the tiny model."""
    g = torch.Generator().manual_seed(seed)
    frames = (example["num_frames"] - 1) // 4 + 1
    prompt_embeds = pipe.encode_prompt(example["prompt"], do_classifier_free_guidance=False)[0]
    image_embeds = pipe.encode_image(Image.fromarray(example["image"]), device=torch.device("cpu"))
    return {
        "hidden_states": torch.randn(1, 20, frames, 32, 32, generator=g),
        "timestep": torch.tensor([700.0]),
        "encoder_hidden_states": prompt_embeds,
        "encoder_hidden_states_image": image_embeds,
        "return_dict": False,
    }


def _capture(pipe, inputs, modules):
    """Run the transformer once (cond branch) and capture each module's input and output."""
    seen = {}
    handles = []
    for name, module in modules.items():

        def hook(mod, args, kwargs, output, name=name):
            x = args[0] if args else kwargs["hidden_states"]
            seen[name] = (x.detach().clone(), output.detach().clone())

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad(), pipe.transformer.cache_context("cond"):
            out = pipe.transformer(**inputs)[0]
    finally:
        for h in handles:
            h.remove()
    return out, seen


def test_lambda_zero_is_bit_identical_to_baseline(tiny_pipe, example, model_dir, recorded_run, tmp_path):
    path, _ = recorded_run
    fg = _fg(model_dir, lambda_txt=0.0, lambda_lat=0.0, lambda_cache=0.0)
    record(tiny_pipe, tmp_path / "zero.zarr", dtype="float32", progress=False, intervention=fg, **example)
    base, zero = layerscope.open_run(path), layerscope.open_run(tmp_path / "zero.zarr")
    np.testing.assert_array_equal(base.similarity.values, zero.similarity.values)
    np.testing.assert_array_equal(base.video.values, zero.video.values)
    assert zero.attrs["intervention"]["name"] == "focal-guidance"
    assert zero.attrs["intervention"]["weak_layers"] == WEAK


def test_fsg_changes_only_keyword_values_in_weak_layers_and_never_q_or_k(tiny_pipe, example, model_dir):
    blocks = tiny_pipe.transformer.blocks
    modules = {}
    for i, block in enumerate(blocks):
        modules.update({f"v{i}": block.attn2.to_v, f"q{i}": block.attn2.to_q, f"k{i}": block.attn2.to_k})
    inputs = _transformer_inputs(tiny_pipe, example)
    _, base = _capture(tiny_pipe, inputs, modules)
    fg = _fg(model_dir, lambda_lat=0.0, attention_cache=False)
    handle = fg.apply(_inputs(tiny_pipe, example))
    try:
        _, guided = _capture(tiny_pipe, inputs, modules)
    finally:
        handle.remove()
    keyword_rows = sorted(i for rows in fg.guidance.token_indices for i in rows)
    for i in range(len(blocks)):
        v_base, v_fg = base[f"v{i}"][1], guided[f"v{i}"][1]
        if i < WEAK[0]:
            assert torch.equal(base[f"q{i}"][1], guided[f"q{i}"][1]), "blocks before the band are untouched"
        if i in WEAK:
            changed = (v_fg - v_base).abs().sum(-1)[0].nonzero().flatten().tolist()
            assert changed == keyword_rows
            # the text values' input (the text context) is the same: only to_v's output moved
            assert torch.equal(base[f"v{i}"][0], guided[f"v{i}"][0])
            k = fg.guidance.token_indices[0][0]
            expected = v_base[0, k] + 0.5 * fg.guidance.visual_values[(0, i)][0]
            torch.testing.assert_close(v_fg[0, k], expected, rtol=0, atol=1e-6)
        # keys never change (text context is identical in every block); queries only
        # change downstream of a modified block, never inside the first weak block
        assert torch.equal(base[f"k{i}"][1], guided[f"k{i}"][1])
    assert torch.equal(base[f"q{WEAK[0]}"][1], guided[f"q{WEAK[0]}"][1])


def _capture_pre(module, seen, name, prepend):
    def hook(mod, args, kwargs):
        seen.setdefault(name, []).append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    return module.register_forward_pre_hook(hook, with_kwargs=True, prepend=prepend)


def _eq9_delta(fg, lambda_lat, tokens):
    """Eq. 9 by hand: lambda_lat * sum_k w_k(u, v) V_k^vis on the reference frame's H'W' tokens, 0 elsewhere."""
    region = fg.guidance.region  # (K, 16, 16)
    per_token = lambda_lat * region.reshape(region.shape[0], -1).T @ fg.guidance.visual_values[(0, WEAK[0])]
    delta = torch.zeros(tokens, per_token.shape[1])
    delta[: per_token.shape[0]] = per_token
    return delta, region


def test_latent_injection_into_the_hidden_state_by_hand(tiny_pipe, example, model_dir):
    """inject_at='hidden' (default): the block computes (z + d) + attn2(norm2(z + d)), d from Eq. 9."""
    block = tiny_pipe.transformer.blocks[WEAK[0]]
    inputs = _transformer_inputs(tiny_pipe, example)
    seen: dict = {}
    fg = _fg(model_dir, lambda_txt=0.0, attention_cache=False, lambda_lat=0.75)
    assert fg.config.inject_at == "hidden"
    handles = [
        _capture_pre(block.norm2, seen, "z", prepend=True),  # the residual entering the sublayer
        _capture_pre(block.attn2, seen, "context", prepend=True),
        _capture_pre(block.norm3, seen, "after", prepend=True),  # the residual after the sublayer
        _capture_pre(tiny_pipe.transformer.blocks[WEAK[0] + 1], seen, "next", prepend=True),
    ]
    try:
        handle = fg.apply(_inputs(tiny_pipe, example))
        with torch.no_grad(), tiny_pipe.transformer.cache_context("cond"):
            tiny_pipe.transformer(**inputs)
        handle.remove()
    finally:
        for h in handles:
            h.remove()
    # norm2's hooks fire once: FG computes norm2(z + delta) through norm2.forward, out of every hook's sight
    (z,), (after,) = seen["z"], seen["after"]
    delta, region = _eq9_delta(fg, 0.75, z.shape[1])
    # by hand, with FG's hooks gone: the cross-attention sublayer run on z + delta
    encoder = _attn2_context(tiny_pipe, block, inputs)
    with torch.no_grad():
        shifted = z[0] + delta
        expected = shifted + block.attn2(block.norm2(shifted[None].float()), encoder, None, None)[0]
    torch.testing.assert_close(after[0], expected, rtol=0, atol=2e-5)
    # locality: cross-attention is per query token, so only reference-frame tokens in some R_k move
    with torch.no_grad():
        plain = z[0] + block.attn2(block.norm2(z.float()), encoder, None, None)[0]
    moved = (after[0] - plain).abs().sum(-1)
    inside = region.sum(0).flatten() > 0
    assert moved[256:].max() == 0 and moved[:256][~inside].max() == 0
    assert moved[:256][inside].min() > 0
    # the residual carries the anchor into the next block
    assert seen["next"][0].shape == after.shape


def _attn2_context(pipe, block, inputs):
    """The encoder states block.attn2 receives in a plain call (image context + text)."""
    seen = {}

    def hook(mod, args, kwargs):
        seen["encoder"] = args[1] if len(args) > 1 else kwargs["encoder_hidden_states"]

    h = block.attn2.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad(), pipe.transformer.cache_context("cond"):
            pipe.transformer(**inputs)
    finally:
        h.remove()
    return seen["encoder"]


def test_latent_injection_attn_input_variant(tiny_pipe, example, model_dir):
    """inject_at='attn-input': delta lands in norm2(z) only, and the residual does not carry it."""
    block = tiny_pipe.transformer.blocks[WEAK[0]]
    inputs = _transformer_inputs(tiny_pipe, example)
    seen: dict = {}
    fg = _fg(model_dir, lambda_txt=0.0, attention_cache=False, lambda_lat=0.75, inject_at="attn-input")
    handles = [_capture_pre(block.attn2, seen, "raw", prepend=True), _capture_pre(block.norm3, seen, "after", True)]
    try:
        handle = fg.apply(_inputs(tiny_pipe, example))
        handles.append(_capture_pre(block.attn2, seen, "injected", prepend=False))
        with torch.no_grad(), tiny_pipe.transformer.cache_context("cond"):
            tiny_pipe.transformer(**inputs)
        handle.remove()
    finally:
        for h in handles:
            h.remove()
    raw, injected = seen["raw"][0][0], seen["injected"][0][0]
    delta, region = _eq9_delta(fg, 0.75, raw.shape[0])
    torch.testing.assert_close(injected - raw, delta, rtol=0, atol=1e-5)
    outside = (region.sum(0).flatten() == 0).nonzero().flatten()
    assert len(outside) > 0 and (injected - raw)[outside].abs().max() == 0


def test_attention_cache_term_by_hand(tiny_pipe, example, model_dir):
    """Eq. 11-13 at the first weak layer of one call: the strong layers before it, averaged, thresholded."""
    from layerscope.probes import cosine_maps

    blocks = tiny_pipe.transformer.blocks
    inputs = _transformer_inputs(tiny_pipe, example)
    seen: dict = {}
    values: dict = {}
    fg = _fg(model_dir, fsg=False, lambda_cache=0.4, tau_cache=0.05, inject_at="attn-input")
    handles = []
    for layer in range(WEAK[0] + 1):
        handles.append(_capture_pre(blocks[layer].attn2, seen, layer, prepend=True))

        def keep(mod, args, output, layer=layer):
            values[layer] = output[0].detach().clone()

        handles.append(blocks[layer].attn2.to_v.register_forward_hook(keep, prepend=True))
    try:
        handle = fg.apply(_inputs(tiny_pipe, example))
        handles.append(_capture_pre(blocks[WEAK[0]].attn2, seen, "injected", prepend=False))
        with torch.no_grad(), tiny_pipe.transformer.cache_context("cond"):
            tiny_pipe.transformer(**inputs)
        handle.remove()
    finally:
        for h in handles:
            h.remove()
    grid = fg.guidance.grid
    maps = []
    for layer in range(WEAK[0]):  # strong layers that ran before the first weak one (alpha = 1/3 each)
        keyword_values = torch.stack([values[layer][rows].mean(0) for rows in fg.guidance.token_indices])
        maps.append(cosine_maps(seen[layer][0][0], keyword_values, grid))
    cache = torch.stack(maps).mean(0)
    cache = torch.where(cache > 0.05, cache, torch.zeros_like(cache))
    expected = 0.4 * cache.reshape(cache.shape[0], -1).T @ fg.guidance.visual_values[(0, WEAK[0])]
    observed = seen["injected"][0][0] - seen[WEAK[0]][0][0]
    torch.testing.assert_close(observed, expected, rtol=0, atol=1e-5)
    assert (cache == 0).any() and (cache > 0).any(), "the threshold must bite on this input"


def test_models_are_unchanged_after_a_run(tiny_pipe, example, model_dir, tmp_path):
    state = {k: v.clone() for k, v in tiny_pipe.transformer.state_dict().items()}
    inputs = _transformer_inputs(tiny_pipe, example)
    before, _ = _capture(tiny_pipe, inputs, {})
    record(tiny_pipe, tmp_path / "fg.zarr", progress=False, intervention=_fg(model_dir), **example)
    after, _ = _capture(tiny_pipe, inputs, {})
    assert torch.equal(before, after)
    for key, value in tiny_pipe.transformer.state_dict().items():
        assert torch.equal(value, state[key]), key
    for block in tiny_pipe.transformer.blocks:
        assert not block.attn2._forward_pre_hooks and not block.attn2.to_v._forward_hooks
    assert not tiny_pipe.transformer._diffusers_hook.hooks


@pytest.mark.slow
def test_lambda_cache_zero_equals_fsg_only_and_no_self_credit(tiny_pipe, example, model_dir, recorded_run, tmp_path):
    base = layerscope.open_run(recorded_run[0])
    runs = {}
    for name, options in {"fsg": {"attention_cache": False}, "fsg_cache0": {"lambda_cache": 0.0}, "both": {}}.items():
        record(
            tiny_pipe,
            tmp_path / f"{name}.zarr",
            dtype="float32",
            progress=False,
            intervention=_fg(model_dir, **options),
            **example,
        )
        runs[name] = layerscope.open_run(tmp_path / f"{name}.zarr")
    np.testing.assert_array_equal(runs["fsg"].similarity.values, runs["fsg_cache0"].similarity.values)
    np.testing.assert_array_equal(runs["fsg"].video.values, runs["fsg_cache0"].video.values)
    both = runs["both"]
    # step 0: every layer up to and including the first weak one is the baseline's, bit for bit:
    # the primary maps are intrinsic, FG's own terms are not in them
    upto = [layer for layer in range(WEAK[0] + 1)]
    np.testing.assert_array_equal(
        both.similarity.isel(step=0).sel(layer=upto).values, base.similarity.isel(step=0).sel(layer=upto).values
    )
    # the injected view exists on the guided layers and the later ones whose input carries FG's
    # terms, and there it does contain them
    assert both.attrs["guided_layers"] == WEAK and both.attrs["carried_layers"] == [6, 7]
    assert both.attrs["injected_layers"] == [3, 4, 5, 6, 7]
    injected = both["similarity_injected"]
    assert np.isnan(injected.sel(layer=[0, 1, 2]).values).all()
    for layer in (WEAK[0], 6):
        view = injected.isel(step=0).sel(layer=layer).values
        assert np.isfinite(view).all()
        gap = np.abs(view - both.similarity.isel(step=0).sel(layer=layer).values).mean()
        assert gap > 1e-3, f"the injected view of layer {layer} must show the injected terms"


def test_cache_ordering_policy(tiny_pipe, example, model_dir):
    """Weak layer l at step t uses strong layers < l from step t and > l from step t-1."""
    fg = _fg(model_dir, fsg=False)
    seen = []
    handle = fg.apply(_inputs(tiny_pipe, example))
    hooks = []
    for layer in WEAK:

        def snapshot(module, args, kwargs, layer=layer):
            if handle.state.branch == "cond":
                seen.append((handle.state.step, layer, handle.cache.sources()))

        hooks.append(tiny_pipe.transformer.blocks[layer].attn2.register_forward_pre_hook(snapshot, with_kwargs=True))
    try:
        tiny_pipe(
            image=Image.fromarray(example["image"]),
            prompt=example["prompt"],
            height=256,
            width=256,
            num_frames=example["num_frames"],
            num_inference_steps=3,
            output_type="latent",
        )
    finally:
        for h in hooks:
            h.remove()
        handle.remove()
    strong_before, strong_after = [0, 1, 2], [6, 7]
    for step, _layer, sources in seen:
        assert {s: sources[s] for s in strong_before} == {s: step for s in strong_before}
        if step == 0:
            assert not any(s in sources for s in strong_after), "first step: earlier strong layers only"
        else:
            assert {s: sources[s] for s in strong_after} == {s: step - 1 for s in strong_after}
        assert not any(w in sources for w in WEAK)
    assert len(seen) == 3 * len(WEAK)


def test_entry_point_loads_with_ranking(tmp_path, model_dir):
    ranking = tmp_path / "ranking.json"
    ranking.write_text(json.dumps({"weak_layers": [2, 3], "model": {"model_id": "x"}}))
    config = tmp_path / "fg.toml"
    config.write_text("[focal_guidance]\nlambda_txt = 0.1\nkeywords = ['circle']\n")
    fg = load_intervention("focal-guidance", ranking=str(ranking), config=str(config), fsg=False)
    assert fg.config.weak_layers == [2, 3] and fg.config.lambda_txt == 0.1 and fg.config.mode == "cache"
    assert fg.config.ranking_source["path"] == str(ranking)


FAST = ["--model", "random", "--frames", "5", "--steps", "2", "--quiet"]


def test_record_with_focal_guidance_cli(base_ranking, tmp_path, capsys):
    out = tmp_path / "fg.zarr"
    assert (
        main(["record", "--out", str(out), *FAST, "--intervene", "focal-guidance", "--ranking", str(base_ranking)]) == 0
    )
    ds = layerscope.open_run(out)
    data = json.loads(base_ranking.read_text())
    assert ds.attrs["intervention"]["weak_layers"] == data["weak_layers"]
    assert ds.attrs["intervention"]["selected_keywords"]
    assert ds.attrs["status"] == "complete"
    # Eq. 6 as printed by default: the random model's folder declares no sign of its own
    assert ds.attrs["intervention"]["selection_sign"] == -1
    assert ds.attrs["intervention"]["selection_sign_source"] == "Eq. 6 as printed"


def test_selection_sign_follows_the_model_folder_then_the_user(tmp_path):
    from layerscope_testbed import shipped_model_dir

    declared = json.loads((shipped_model_dir() / "layerscope_model.json").read_text())["focal_guidance"]
    assert declared["selection_sign"] == 1  # measured by benchmarks/fsg_localisation.py for its CLIP
    config, source = FocalGuidanceConfig().resolved_for(shipped_model_dir())
    assert config.selection_sign == 1 and source.startswith("model default")
    mine, source = FocalGuidanceConfig(selection_sign=-1).resolved_for(shipped_model_dir())
    assert mine.selection_sign == -1 and source == "config"
    bare, source = FocalGuidanceConfig().resolved_for(tmp_path)  # no layerscope_model.json
    assert bare.selection_sign == -1 and source == "Eq. 6 as printed"


def test_printed_sign_puts_the_region_where_cosine_is_lowest():
    # a CLIP-Surgery-like similarity: the object's patches (top-left 2x2) are the least similar
    from fg_intervene import fsg

    text = torch.tensor([[1.0, 0.0]])
    patches = torch.tensor([[0.0, 1.0] if (i // 4 < 2 and i % 4 < 2) else [1.0, 0.2] for i in range(16)])
    for sign, expected_inside in ((-1, True), (1, False)):
        sims = fsg.similarity_matrix(text, patches, sign)
        region = fsg.region_weights(sims, (4, 4), (4, 4), 0.5)[0] > 0
        assert bool(region[:2, :2].all()) == expected_inside and bool(region[2:, 2:].any()) != expected_inside


def _edit(path, **changes):
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if key == "model_id":
            data["model"]["model_id"] = value
        else:
            data[key] = value
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (lambda r, t: ["--ranking", str(_edit(r, model_id="another-model"))], "computed on model another-model"),
        (lambda r, t: ["--ranking", str(_edit(r, weak_layers=[3, 40]))], "weak layer 40 is out of range"),
        (lambda r, t: ["--ranking", str(r), "--clip", str(t)], "no CLIP checkpoint"),
        (
            lambda r, t: ["--ranking", str(r), "--intervene-config", str(_toml(t, "keywords = ['dragon']"))],
            "keyword 'dragon' is not in the prompt",
        ),
        (
            lambda r, t: ["--ranking", str(r), "--intervene-config", str(_toml(t, "tau_sel = 0.99"))],
            "tau_sel=0.99; the best was",
        ),
        (lambda r, t: ["--ranking", str(r), "--intervene", "nothing"], "unknown intervention 'nothing'"),
    ],
)
def test_focal_guidance_bad_input(base_ranking, tmp_path, capsys, extra, message):
    out = tmp_path / "bad.zarr"
    code = main(["record", "--out", str(out), *FAST, "--intervene", "focal-guidance", *extra(base_ranking, tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def _toml(directory, line):
    path = directory / "fg.toml"
    path.write_text(f"[focal_guidance]\n{line}\n")
    return path


def test_ranking_from_another_grid_is_refused(base_ranking, tmp_path, capsys):
    out = tmp_path / "g.zarr"
    args = ["record", "--out", str(out), *FAST, "--intervene", "focal-guidance", "--ranking", str(base_ranking)]
    assert main([*args, "--height", "128"]) == 2
    assert "token grid" in capsys.readouterr().err


def test_config_error_type(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        FocalGuidanceConfig.from_toml(tmp_path / "missing.toml")
