"""Cosmos-Predict2 Video2World (cross-attention DiT, T5, CFG as two calls per step) on the tiny offline pipeline.

Every expectation is computed here independently of the adapter: keyword rows from a
hand-written tokenisation of the tiny T5 vocabulary, the text rows from the test's own
T5 call (mask, then padding zeroed, as the pipeline does), maps from tensors captured by
the test's own hooks on ``norm2``/``attn2``, and each call's branch from which text rows
(prompt or negative prompt) it was given.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from family_checks import cosine_maps, record_with_hooks

#: one worker builds this module's tiny pipelines once (make test runs xdist with --dist loadgroup)
pytestmark = pytest.mark.xdist_group("cosmos")


PROMPT = "the red circle moves to the left."
SIZE = dict(height=64, width=80, num_frames=9, num_inference_steps=2)
GRID = (3, 4, 5)  # 9 frames -> 3 latent frames; 64 / 16 -> 4, 80 / 16 -> 5
PUBLISHED = Path(__file__).parent / "data" / "published_configs.json"
ENTRY = "Cosmos-Predict2-2B-Video2World"


@pytest.fixture(scope="module")
def cosmos(tmp_path_factory):
    """The tiny pipeline, built once through the CLI (``testbed build-tiny``) and loaded as ``record`` does."""
    from layerscope.cli import main
    from layerscope.loading import load_pipeline

    folder = tmp_path_factory.mktemp("cosmos") / "tiny"
    assert main(["testbed", "build-tiny", "--family", "cosmos-predict2-video2world", "--out", str(folder)]) == 0
    pipe, _ = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    return folder, pipe


def _image():
    rng = np.random.default_rng(0)
    return (rng.random((64, 80, 3)) * 255).astype(np.uint8)


def _t5_rows(pipe, text: str) -> torch.Tensor:
    """The pipeline's text rows, by hand: T5 with the mask, padded to 512, padding rows set to zero."""
    inputs = pipe.tokenizer(text, padding="max_length", max_length=512, truncation=True, return_tensors="pt")
    with torch.no_grad():
        rows = pipe.text_encoder(inputs.input_ids, attention_mask=inputs.attention_mask).last_hidden_state
    return rows * inputs.attention_mask[..., None]


def test_cosmos_keyword_rows_match_a_hand_tokenisation(cosmos):
    """Rows are token indices of the prompt as given; the pipeline pads to 512 and zeroes the padding rows."""
    from layerscope.adapters.registry import resolve_adapter
    from layerscope.keywords import KeywordError

    folder, pipe = cosmos
    adapter = resolve_adapter(pipe)
    assert type(adapter).__name__ == "CosmosPredict2Adapter" and adapter.name == "cosmos-predict2"
    # by hand: ▁the ▁red ▁circle ▁moves ▁to ▁the ▁left . </s>
    mapped = adapter.map_keywords(PROMPT, ["red", "circle", "left"])
    assert [item.token_indices for item in mapped] == [(1,), (2,), (6,)]
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=512, truncation=True)["input_ids"]
    assert len(ids) == adapter.text_sequence_length() == 512
    assert [pipe.tokenizer.convert_ids_to_tokens(ids[i]) for i in (1, 2, 6, 8)] == ["▁red", "▁circle", "▁left", "</s>"]
    # the pipeline's own encoding equals the hand-made rows: 9 real rows, 503 zero rows
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512)
    expected = _t5_rows(pipe, PROMPT)
    torch.testing.assert_close(embeds, expected)
    assert embeds[0, :9].abs().sum(-1).min() > 0 and embeds[0, 9:].abs().max() == 0
    # not cleaned (Wan cleans, Cosmos does not): "&amp;" stays 6 pieces, so "circle" is row 8
    raw = "a  red &amp; circle"
    assert adapter.map_keywords(raw, ["circle"])[0].token_indices == (8,)
    assert pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(raw)["input_ids"])[8] == "▁circle"
    assert adapter.reference_tokens(PROMPT, mapped) == [0, 3, 4, 5, 7]
    # truncation keeps 511 prompt tokens; a keyword beyond them is refused in one line
    with pytest.raises(KeywordError, match="beyond the text encoder's 511 prompt tokens"):
        adapter.map_keywords(" ".join(["the"] * 512 + ["red"]), ["red"])
    # the offline toy's safety checker is the testbed's pass-through stand-in, loaded by diffusers
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "Cosmos2VideoToWorldPipeline"
    assert index["safety_checker"] == ["layerscope_testbed.cosmos", "PassThroughSafetyChecker"]
    assert type(pipe.safety_checker).__name__ == "PassThroughSafetyChecker"


def test_cosmos_geometry_description_and_plan_geometry(cosmos):
    """Strides and patching from the pipeline, and the same arithmetic from configs alone (``plan``)."""
    from layerscope.adapters.cosmos import CosmosPredict2Adapter
    from layerscope.adapters.registry import resolve_adapter
    from layerscope.recording import RecordError, validate_geometry

    folder, pipe = cosmos
    adapter = resolve_adapter(pipe)
    assert (pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal) == (8, 4)
    assert validate_geometry(adapter, 64, 80, 9) == GRID
    assert adapter.token_grid(93, 704, 1280) == (24, 44, 80)  # the pipeline's default size
    with pytest.raises(RecordError, match="4\\*n\\+1"):
        validate_geometry(adapter, 64, 80, 8)
    with pytest.raises(RecordError, match="multiples of 16"):
        validate_geometry(adapter, 72, 80, 9)
    info = adapter.describe()
    assert info["patch_size"] == [1, 2, 2] and info["vae_compression"] == [4, 8, 8] and info["num_layers"] == 4
    assert adapter.branch_source == "call_order"
    assert adapter.hook_points() == [f"transformer_blocks.{i}.attn2" for i in range(4)]
    configs = {part: json.loads((folder / part / "config.json").read_text()) for part in ("transformer", "vae")}
    geometry = CosmosPredict2Adapter.geometry_from_configs({"pipeline": {}, **configs}, 9, 64, 80)
    assert geometry.grid == GRID and geometry.text_tokens == 512 and geometry.spatial_multiple == 16
    assert (geometry.frame_multiple, geometry.heads, geometry.width, geometry.num_layers) == (4, 2, 32, 4)
    published = json.loads(PUBLISHED.read_text())["entries"][ENTRY]
    big = CosmosPredict2Adapter.geometry_from_configs(published, 93, 704, 1280)
    assert big.grid == (24, 44, 80) and (big.heads, big.width, big.num_layers) == (16, 2048, 28)


def _capture(block):
    """(z, norm2 output, to_v output, text rows) of every ``attn2`` call of ``block``, by our own hooks."""
    seen: list[dict] = []

    def norm(module, args, output):
        seen.append({"norm2": output[0].detach().clone()})

    def pre(module, args, kwargs):
        seen[-1]["z"] = args[0].detach().clone()
        seen[-1]["text"] = kwargs["encoder_hidden_states"].detach().clone()
        seen[-1]["mask"] = kwargs.get("attention_mask")

    def values(module, args, output):
        seen[-1]["v"] = output.detach().clone()

    handles = [
        block.norm2.register_forward_hook(norm),
        block.attn2.register_forward_pre_hook(pre, with_kwargs=True),
        block.attn2.to_v.register_forward_hook(values),
    ]
    return seen, handles


def _branch(pipe, call, negative: str) -> str:
    """Which branch a call was: the prompt's rows (cond) or the negative prompt's (uncond)."""
    if torch.equal(call["text"], _t5_rows(pipe, PROMPT)):
        return "cond"
    assert torch.equal(call["text"], _t5_rows(pipe, negative)), "a call with neither prompt's rows"
    return "uncond"


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_cosmos_maps_match_an_independent_computation(cosmos, tmp_path, guidance):
    """cos(V_k, z) with z = norm2's output entering attn2; under CFG cond is the 1st call of a step, uncond the 2nd."""
    import layerscope

    _, pipe = cosmos
    seen, handles = _capture(pipe.transformer.transformer_blocks[1])
    cfg = guidance > 1
    negative = "a blue square"
    options = dict(image=_image(), prompt=PROMPT, keywords=["red", "circle"], guidance_scale=guidance)
    options.update(negative_prompt=negative, branch="both" if cfg else "cond")
    record_with_hooks(pipe, tmp_path / "run.zarr", handles, **options, **SIZE)
    ds = layerscope.open_run(tmp_path / "run.zarr")
    assert ds.attrs["status"] == "complete" and ds.attrs["hook_calls"] == ds.attrs["hook_calls_expected"]
    assert tuple(ds.attrs["grid"]) == GRID and ds.attrs["negative_prompt"] == negative
    rows = [k["token_indices"] for k in ds.attrs["keywords"]]
    calls_per_step = 2 if cfg else 1
    assert len(seen) == SIZE["num_inference_steps"] * calls_per_step
    branches = [_branch(pipe, call, negative) for call in seen]
    assert branches == ["cond", "uncond"] * 2 if cfg else ["cond"] * 2
    assert ("similarity_uncond" in ds) == cfg
    for index, call in enumerate(seen):
        torch.testing.assert_close(call["z"], call["norm2"], rtol=0, atol=0)  # z is norm2's output
        assert call["mask"] is None and call["z"].shape[0] == 1
        step = index // calls_per_step
        variable = "similarity" if branches[index] == "cond" else "similarity_uncond"
        expected = cosine_maps(call["z"][0], call["v"][0], rows, GRID)
        got = torch.from_numpy(ds[variable].isel(step=step, layer=1).values)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    if cfg:  # the branches differ, so swapping them would fail
        swapped = cosine_maps(seen[1]["z"][0], seen[1]["v"][0], rows, GRID)
        assert (torch.from_numpy(ds["similarity"].isel(step=0, layer=1).values) - swapped).abs().max() > 1e-3


def _keep_first(store: dict, name: str):
    """A forward hook keeping a copy of the first output (returning None: the output is left as it is)."""

    def hook(module, args, output):
        if name not in store:
            store[name] = output.detach().clone()

    return hook


def test_cosmos_attention_and_influence_probes(cosmos, tmp_path):
    """attention: SDPA of attn2's (B, H, S, d) normalised q/k over all 512 rows, unmasked; influence: attn2 re-run."""
    import layerscope

    _, pipe = cosmos
    attn = pipe.transformer.transformer_blocks[2].attn2
    runs = {}
    for probe in ("attention", "influence"):
        store: dict = {}

        def pre(module, args, kwargs, store=store):
            store.setdefault("args", (args[0].detach().clone(), kwargs["encoder_hidden_states"].detach().clone()))

        handles = [
            attn.register_forward_pre_hook(pre, with_kwargs=True),
            attn.register_forward_hook(_keep_first(store, "out")),
            attn.norm_q.register_forward_hook(_keep_first(store, "q")),
            attn.norm_k.register_forward_hook(_keep_first(store, "k")),
        ]
        record_with_hooks(
            pipe, tmp_path / f"{probe}.zarr", handles, image=_image(), prompt=PROMPT, keywords=["red", "circle"],
            probe=probe, guidance_scale=1.0, **{**SIZE, "num_inference_steps": 1},
        )  # fmt: skip
        runs[probe] = (layerscope.open_run(tmp_path / f"{probe}.zarr"), store)

    ds, store = runs["attention"]
    rows = [k["token_indices"] for k in ds.attrs["keywords"]]
    q, k = store["q"][0], store["k"][0]  # (H, N, d), (H, 512, d)
    assert k.shape[1] == 512 and q.shape[0] == attn.heads
    indicator = torch.zeros(512, len(rows))
    for column, tokens in enumerate(rows):
        indicator[list(tokens), column] = 1.0
    mass = F.scaled_dot_product_attention(q, k, indicator.expand(attn.heads, -1, -1))  # (H, N, K)
    expected = mass.mean(0).T.reshape(len(rows), *GRID)
    got = torch.from_numpy(ds["similarity"].isel(step=0, layer=2).values)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert float(got.min()) > 0

    ds, store = runs["influence"]
    assert ds.attrs["probe"]["neutral_token"] == 511
    z, text = store["args"]
    assert text[0, 511].abs().max() == 0  # the neutral row is a zeroed padding row
    reference = store["out"][0]
    maps = []
    with torch.no_grad():
        for tokens in rows:
            changed_text = text.clone()
            changed_text[:, list(tokens)] = text[:, 511:512]
            changed = attn.processor(attn, z, changed_text, None, None)[0]
            maps.append((reference - changed).norm(dim=-1) / reference.norm(dim=-1).mean())
    expected = torch.stack(maps).reshape(len(rows), *GRID)
    got = torch.from_numpy(ds["similarity"].isel(step=0, layer=2).values)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert float(got.max()) > 1e-4


def test_cosmos_cli_end_to_end_and_focal_guidance_refusal(cosmos, tmp_path, capsys):
    """record (CFG, both branches) -> rank -> report -> plan from the built folder; FG refused in one line."""
    import layerscope
    from layerscope.cli import main

    model, _ = cosmos
    info = json.loads((model / "layerscope_model.json").read_text())
    assert info["generation_defaults"]["record"] == {"steps": 3, "frames": 9, "height": 64, "width": 80}
    common = ["--model", str(model), "--prompt", PROMPT, "--keywords", "red,circle", "--quiet"]
    base = tmp_path / "base.zarr"
    assert main(["record", *common, "--guidance", "3", "--branch", "both", "--out", str(base)]) == 0
    ds = layerscope.open_run(base)
    assert (ds.attrs["num_inference_steps"], ds.attrs["num_frames"], ds.attrs["height"]) == (3, 9, 64)
    assert ds.attrs["adapter"] == "cosmos-predict2" and ds.attrs["weights"] == "random"
    assert ds.attrs["hook_calls"] == ds.attrs["hook_calls_expected"] == 4 * 3 * 2
    assert list(ds["block"].values) == [f"transformer_blocks.{i}" for i in range(4)]
    assert ds.sizes["frame_px"] == 9 and np.isfinite(ds["similarity_uncond"].values).all()
    ranking = tmp_path / "ranking.json"
    assert main(["rank", str(base), "--splits", "10", "--bootstrap", "100", "--out", str(ranking)]) == 0
    data = json.loads(ranking.read_text())
    assert [row["block"] for row in data["layers"]] == [f"transformer_blocks.{i}" for i in range(4)]
    assert main(["report", str(base), "--out", str(tmp_path / "run.html")]) == 0
    assert "transformer_blocks.3" in (tmp_path / "run.html").read_text()
    capsys.readouterr()
    plan = ["plan", "--model", str(model), "--frames", "9", "--height", "64", "--width", "80", "--steps", "3"]
    assert main(plan) == 0
    assert "3 x 4 x 5 = 60 visual tokens" in capsys.readouterr().out
    guided = tmp_path / "fg.zarr"
    fg = ["--intervene", "focal-guidance", "--ranking", str(ranking), "--fg-set", "weak_layers=[1,2]"]
    assert main(["record", *common, *fg, "--out", str(guided)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no place in cosmos-predict2 pipelines" in err[0] and "latent frame 0" in err[0], err
    assert not guided.exists()


@pytest.mark.slow
def test_cosmos_bench_generates_through_the_adapter(cosmos, tmp_path):
    """`layerscope bench` on the Cosmos pipeline: CFG reaches it (two calls per step), videos come back."""
    import imageio.v3 as iio

    from layerscope.cli import main

    model, pipe = cosmos
    calls: list[int] = []
    assert main(["testbed", "export-bench", "--out", str(tmp_path / "set"), "--scenes", "2"]) == 0
    size = ["--height", "64", "--width", "80", "--frames", "9", "--steps", "2", "--quiet", "--no-consistency"]
    out = tmp_path / "bench"
    args = ["bench", str(tmp_path / "set" / "prompts.jsonl"), "--model", str(model), "--judge", "shapes", *size]
    from diffusers import CosmosTransformer3DModel

    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, a, out: calls.append(1) if isinstance(module, CosmosTransformer3DModel) else None
    )
    try:
        assert main([*args, "--guidance", "3", "--out", str(out)]) == 0
    finally:
        handle.remove()
    videos = sorted(out.rglob("*.mp4"))
    assert len(videos) == 2
    assert iio.imread(videos[0]).shape[:3] == (9, 64, 80)
    assert len(calls) == 2 * 2 * 2  # 2 videos x 2 steps x (cond, uncond)


@pytest.mark.slow
def test_cosmos_published_text_encoder_width_feeds_the_published_cross_attention():
    """T5-11B at its published width and vocabulary (1 of 24 layers) gives 512 rows the 2B transformer's attn2 takes.

    The tokenizer is not available offline, so the ids are random in the published vocabulary;
    the padding is zeroed as the pipeline does, and the map is checked on those rows.
    """
    from transformers import T5Config, T5EncoderModel

    from layerscope.adapters.cosmos import CosmosPredict2Adapter

    entry = json.loads(PUBLISHED.read_text())["entries"][ENTRY]
    published = {k: v for k, v in entry["text_encoder"].items() if not k.startswith("_") and k != "source"}
    torch.manual_seed(0)
    encoder = T5EncoderModel(T5Config(**{**published, "num_layers": 1}, feed_forward_proj="relu")).eval()
    ids = torch.randint(2, published["vocab_size"], (1, 512))
    mask = torch.zeros(1, 512, dtype=torch.long)
    mask[:, :20] = 1
    with torch.no_grad():
        rows = encoder(ids, attention_mask=mask).last_hidden_state * mask[..., None]
    assert rows.shape == (1, 512, entry["transformer"]["text_embed_dim"])
    import diffusers

    config = {k: v for k, v in entry["transformer"].items() if not k.startswith("_")}
    model = diffusers.CosmosTransformer3DModel.from_config({**config, "num_layers": 1}).eval()
    site = CosmosPredict2Adapter(None).probe_sites(model)[0]
    z = torch.randn(1, 6, site.heads * 128)
    seen = {}
    handle = site.text_value.register_forward_hook(_keep_first(seen, "v"))
    try:
        with torch.no_grad():
            site.attention(z, encoder_hidden_states=rows)
    finally:
        handle.remove()
    values = seen["v"][0]
    assert values.shape == (512, site.heads * 128) and values[20:].abs().max() == 0  # zero rows, no bias
    assert values[:20].abs().sum(-1).min() > 0
