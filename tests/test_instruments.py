"""Instruments beside Eq. 10: the contrastive map, causal influence and the RMS statistic.

Each is checked against a computation that does not use the probe's code path: maps of
text-blind blocks (text keys and value weights zeroed, value bias kept) are zero, and a
normal block's maps equal a hand computation from the block's own inputs, captured with
a hook of the test's own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

BLIND = (4, 5)
HAND_LAYER = 2


@pytest.fixture(scope="module")
def blind_pipe(model_dir):
    """The shipped model with blocks 4-5 text-blind, as `testbed plant` makes them (no fine-tune)."""
    from layerscope.loading import load_pipeline
    from layerscope_testbed.shapes.plant import blind_text

    pipe, _ = load_pipeline(model_dir)
    pipe.set_progress_bar_config(disable=True)
    blind_text(pipe.transformer, BLIND)
    return pipe


def _record(pipe, path, example, probe, capture=None):
    from layerscope.recording import record

    settings = {**example, "num_inference_steps": 2}
    handle = None
    if capture is not None:
        attn = pipe.transformer.blocks[HAND_LAYER].attn2

        def keep(module, args, kwargs):
            if "args" not in capture:  # the first call: step 0, cond branch
                capture["args"] = tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args)
            return None

        handle = attn.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        record(pipe, path, dtype="float32", progress=False, probe=probe, **settings)
    finally:
        if handle is not None:
            handle.remove()
    import layerscope

    return layerscope.open_run(path)


def _keyword_rows(pipe, example):
    from layerscope.adapters.registry import resolve_adapter

    adapter = resolve_adapter(pipe)
    keywords = adapter.map_keywords(example["prompt"], example["keywords"])
    return adapter, keywords


def test_contrastive_map_is_zero_in_text_blind_layers_and_equals_a_hand_computation(blind_pipe, example, tmp_path):
    capture: dict = {}
    ds = _record(blind_pipe, tmp_path / "c.zarr", example, "contrastive", capture)
    maps = ds["similarity"].values  # (step, layer, keyword, frame, y, x)
    for layer in range(maps.shape[1]):
        peak = float(np.abs(maps[:, layer]).max())
        if layer in BLIND:
            assert peak < 1e-6, (layer, peak)
        else:
            assert peak > 1e-3, (layer, peak)
    # by hand at layer 2, step 0: cos(V_k, z) - cos(mean of the other words' values, z)
    adapter, keywords = _keyword_rows(blind_pipe, example)
    reference = adapter.reference_tokens(example["prompt"], keywords)
    assert reference and not set(reference) & {i for k in keywords for i in k.token_indices}
    z, context = capture["args"][0][0].float(), capture["args"][1][0]
    attn = blind_pipe.transformer.blocks[HAND_LAYER].attn2
    with torch.no_grad():
        values = attn.to_v(context[-512:]).float()
    grid = tuple(ds.attrs["grid"])
    zn = torch.nn.functional.normalize(z, dim=-1)
    ref = torch.nn.functional.normalize(values[reference].mean(0), dim=-1)
    for k, item in enumerate(keywords):
        vk = torch.nn.functional.normalize(values[list(item.token_indices)].mean(0), dim=-1)
        expected = ((zn @ vk) - (zn @ ref)).reshape(grid).numpy()
        np.testing.assert_allclose(maps[0, HAND_LAYER, k], expected, atol=2e-5)


def test_influence_is_zero_in_text_blind_layers_and_equals_two_forwards_by_hand(blind_pipe, example, tmp_path):
    capture: dict = {}
    ds = _record(blind_pipe, tmp_path / "i.zarr", example, "influence", capture)
    maps = ds["similarity"].values
    assert (maps >= 0).all()
    for layer in range(maps.shape[1]):
        peak = float(maps[:, layer].max())
        assert (peak == 0.0) if layer in BLIND else (peak > 1e-4), (layer, peak)
    # by hand: the block's cross-attention on its captured inputs, with and without the keyword
    _, keywords = _keyword_rows(blind_pipe, example)
    hidden, context = capture["args"][0], capture["args"][1]
    attn = blind_pipe.transformer.blocks[HAND_LAYER].attn2
    start, neutral = context.shape[1] - 512, 511
    grid = tuple(ds.attrs["grid"])
    with torch.no_grad():
        output = attn(hidden, context)[0].float()
        for k, item in enumerate(keywords):
            changed = context.clone()
            for row in item.token_indices:
                changed[:, start + row] = context[:, start + neutral]
            other = attn(hidden, changed)[0].float()
            expected = ((output - other).norm(dim=-1) / output.norm(dim=-1).mean()).reshape(grid).numpy()
            np.testing.assert_allclose(maps[0, HAND_LAYER, k], expected, rtol=1e-4, atol=1e-6)
    assert ds.attrs["probe"]["neutral_token"] == neutral


def test_rms_ranks_the_blind_layers_as_a_band(blind_pipe, example, tmp_path):
    from layerscope.ranking import rank_stores

    ds_path = tmp_path / "c.zarr"
    _record(blind_pipe, ds_path, example, "contrastive")
    ranking = rank_stores([ds_path], metric="rms", min_runs=4)
    rms = [row["rms"] for row in ranking.layers]
    assert max(rms[i] for i in BLIND) < 1e-6 < min(rms[i] for i in range(len(rms)) if i not in BLIND)
    assert "rms" in ranking.table().splitlines()[0] and ranking.verdict.startswith("too few runs")


def test_rms_statistic_by_hand():
    from layerscope.metrics import rms_map

    maps = np.array([[[3.0, 4.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    assert rms_map(maps).tolist() == pytest.approx([np.sqrt(25 / 4), 1.0])


def test_contrastive_needs_non_keyword_words(tiny_pipe, example, tmp_path, capsys):
    from layerscope.cli import main

    out = tmp_path / "x.zarr"
    size = ["--steps", "1", "--frames", "5", "--height", "128", "--width", "128"]
    code = main(["record", "--out", str(out), "--prompt", "red circle", "--keywords", "red,circle",
                 "--probe", "contrastive", *size])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "prompt's other words" in err[0] and not out.exists()


def test_auroc_by_hand_with_ties():
    from layerscope_testbed.shapes.localisation import auroc

    maps = np.array([[[1.0, 2.0], [2.0, 3.0]]])  # one frame
    mask = np.array([[[False, True], [False, True]]])
    # object tokens {2, 3} vs background {1, 2}: pairs 1, 0.5 (tie), 1, 1 -> 3.5 / 4
    assert auroc(maps, mask).tolist() == [0.875]
    assert auroc(np.full((1, 2, 2), 0.3), mask).tolist() == [0.5]  # a constant map is chance
    assert auroc(-maps, mask).tolist() == [0.125]  # a map of the background
    assert np.isnan(auroc(maps, np.ones((1, 2, 2), dtype=bool))).all()  # no background: undefined


def test_token_masks_match_the_rendered_first_frame():
    from dataclasses import replace

    from layerscope_testbed.shapes.localisation import token_masks
    from layerscope_testbed.shapes.render import COLOURS, reference_image
    from layerscope_testbed.shapes.world import Event, sample_scenes

    for scene in sample_scenes(6, split="heldout", seed=4):
        masks = token_masks(scene, (3, 16, 16), 9)
        subject = scene.subject
        # the renderer's own first-frame pixels of the subject alone (no other shape painted over it)
        still = Event(dimension="dynamic_attribute", subject=0, target_colour=subject.colour)
        alone = replace(scene, shapes=[subject], event=still)
        image = reference_image(alone)
        painted = (image == np.array(COLOURS[subject.colour], dtype=np.uint8)).all(axis=-1)
        share = painted.reshape(16, 16, 16, 16).mean(axis=(1, 3))  # per 16x16-pixel token cell
        np.testing.assert_array_equal(masks[0], share >= 0.5)
        if scene.dimension == "motion":
            assert masks[-1].sum() > 0 and not np.array_equal(masks[-1], masks[0])


@pytest.mark.slow
def test_auroc_is_written_into_a_sweep_and_ranked(tmp_path, capsys):
    from layerscope.cli import main
    from layerscope.ranking import rank_stores

    prompts, sweep = tmp_path / "prompts", tmp_path / "sweep"
    assert main(["testbed", "prompts", "--out", str(prompts), "--scenes", "2"]) == 0
    size = ["--steps", "2", "--frames", "9", "--quiet"]
    assert main(["sweep", str(prompts / "prompts.jsonl"), "--out-dir", str(sweep), "--seeds", "0", *size]) == 0
    assert main(["testbed", "auroc", "--stores", str(sweep)]) == 0
    assert capsys.readouterr().out.count("AUROC mean") == 2
    import layerscope

    store = sorted(sweep.glob("*.zarr"))[0]
    ds = layerscope.open_run(store)
    assert ds["auroc"].dims == ("step", "layer", "keyword", "frame") and ds.attrs["prompt_meta"]["scene"]
    values = ds["auroc"].values
    assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()
    ranking = rank_stores(sorted(sweep.glob("*.zarr")), metric="auroc")
    assert ranking.metric == "auroc" and all(0 <= row["auroc"] <= 1 for row in ranking.layers)
    # a store without a scene: one line naming the fix
    assert main(["rank", str(store), "--metric", "auroc"]) == 0  # has it
    other = tmp_path / "plain.zarr"
    assert main(["record", "--out", str(other), "--steps", "1", "--frames", "5", "--quiet"]) == 0
    assert main(["testbed", "auroc", "--stores", str(other)]) == 2
    assert "no shapes-world scene" in capsys.readouterr().err
    assert main(["rank", str(other), "--metric", "auroc"]) == 2
    assert "write it with `layerscope testbed auroc" in capsys.readouterr().err
