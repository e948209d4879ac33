"""LTX-Video I2V (cross-attention DiT, T5, batched CFG) on the tiny offline pipeline.

Every expectation is computed here independently of the adapter: keyword rows from a
hand-written tokenisation of the tiny T5 vocabulary, maps from tensors captured by the
test's own hooks on ``attn2``, the CFG branch from the batch row the test reads itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from family_checks import capture_attn2, cosine_maps, record_with_hooks

#: one worker builds this module's tiny pipelines once (make test runs xdist with --dist loadgroup)
pytestmark = pytest.mark.xdist_group("ltx")


PROMPT = "the red circle moves to the left."
SIZE = dict(height=160, width=160, num_frames=9, num_inference_steps=2)
GRID = (2, 5, 5)  # 9 frames -> 2 latent frames; 160 / 32 -> 5


@pytest.fixture(scope="module")
def ltx(tmp_path_factory):
    from layerscope.loading import load_pipeline
    from layerscope_testbed.ltx import save_tiny_pipeline

    folder = save_tiny_pipeline(tmp_path_factory.mktemp("ltx") / "tiny")
    pipe, _ = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    return folder, pipe


def _image():
    rng = np.random.default_rng(0)
    return (rng.random((160, 160, 3)) * 255).astype(np.uint8)


def test_ltx_keyword_rows_match_a_hand_tokenisation(ltx):
    """Rows are token indices of the prompt as the pipeline tokenizes it (as given, padded to 128)."""
    from layerscope.adapters.registry import resolve_adapter
    from layerscope.keywords import KeywordError

    _, pipe = ltx
    adapter = resolve_adapter(pipe)
    assert type(adapter).__name__ == "LTXVideoAdapter"
    # by hand: ▁the ▁red ▁circle ▁moves ▁to ▁the ▁left . </s>
    mapped = adapter.map_keywords(PROMPT, ["red", "circle", "left"])
    assert [item.token_indices for item in mapped] == [(1,), (2,), (6,)]
    # the pipeline's own tokenisation: those rows hold those pieces, then </s>, then padding to 128
    inputs = pipe.tokenizer(PROMPT, padding="max_length", max_length=128, truncation=True, add_special_tokens=True)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert len(ids) == adapter.text_sequence_length() == 128 and sum(mask) == 9
    assert [pipe.tokenizer.convert_ids_to_tokens(ids[i]) for i in (1, 2, 6, 8)] == ["▁red", "▁circle", "▁left", "</s>"]
    # not cleaned (Wan cleans, LTX does not): "&amp;" stays 6 pieces, so "circle" is row 8, not 4
    raw = "a  red &amp; circle"
    assert adapter.map_keywords(raw, ["circle"])[0].token_indices == (8,)
    assert pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(raw)["input_ids"])[8] == "▁circle"
    # the reference rows (contrastive) are the other words, same tokenisation
    assert adapter.reference_tokens(PROMPT, mapped) == [0, 3, 4, 5, 7]
    # truncation keeps 127 prompt tokens; a keyword beyond them is refused in one line
    long_prompt = " ".join(["the"] * 130 + ["red"])
    with pytest.raises(KeywordError, match="beyond the text encoder's 127 prompt tokens"):
        adapter.map_keywords(long_prompt, ["red"])


def test_ltx_geometry_and_description(ltx):
    from layerscope.adapters.registry import resolve_adapter
    from layerscope.recording import RecordError, validate_geometry

    _, pipe = ltx
    adapter = resolve_adapter(pipe)
    assert (pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio) == (32, 8)
    assert validate_geometry(adapter, 160, 160, 9) == GRID
    assert adapter.token_grid(161, 512, 704) == (21, 16, 22)  # the pipeline's published default size
    with pytest.raises(RecordError, match="8\\*n\\+1"):
        validate_geometry(adapter, 160, 160, 12)
    with pytest.raises(RecordError, match="multiples of 32"):
        validate_geometry(adapter, 144, 160, 9)
    info = adapter.describe()
    assert info["patch_size"] == [1, 1, 1] and info["vae_compression"] == [8, 32, 32] and info["num_layers"] == 4
    assert adapter.hook_points() == [f"transformer_blocks.{i}.attn2" for i in range(4)]


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_ltx_maps_match_an_independent_computation(ltx, tmp_path, guidance):
    """cos(V_k, z) of attn2's input; under CFG the cond map is batch row 1, the uncond map row 0."""
    import layerscope

    _, pipe = ltx
    attn = pipe.transformer.transformer_blocks[1].attn2
    seen, handles = capture_attn2(attn)
    cfg = guidance > 1
    options = dict(image=_image(), prompt=PROMPT, keywords=["red", "circle"], guidance_scale=guidance)
    record_with_hooks(pipe, tmp_path / "run.zarr", handles, branch="both" if cfg else "cond", **options, **SIZE)
    ds = layerscope.open_run(tmp_path / "run.zarr")
    assert ds.attrs["status"] == "complete" and ds.attrs["hook_calls"] == ds.attrs["hook_calls_expected"]
    assert tuple(ds.attrs["grid"]) == GRID
    rows = [k["token_indices"] for k in ds.attrs["keywords"]]
    assert len(seen) == SIZE["num_inference_steps"]  # one call per step, both branches in its batch
    branches = {"similarity": 1, "similarity_uncond": 0} if cfg else {"similarity": 0}
    assert ("similarity_uncond" in ds) == cfg
    for step, call in enumerate(seen):
        assert call["z"].shape[0] == (2 if cfg else 1)
        for variable, row in branches.items():
            expected = cosine_maps(call["z"][row], call["v"][row], rows, GRID)
            got = torch.from_numpy(ds[variable].isel(step=step, layer=1).values)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        if cfg:  # the rows differ (prompt vs empty negative prompt), so reading the wrong one would fail
            other = cosine_maps(call["z"][0], call["v"][0], rows, GRID)
            assert (torch.from_numpy(ds["similarity"].isel(step=step, layer=1).values) - other).abs().max() > 1e-3


def test_ltx_attention_probe_is_attn2_softmax_with_the_padding_bias(ltx, tmp_path):
    """The attention map equals SDPA over attn2's text keys, with the model's additive -10000 padding bias."""
    import layerscope
    from layerscope.recording import record

    _, pipe = ltx
    attn = pipe.transformer.transformer_blocks[2].attn2
    store: dict = {}

    def pre(module, args, kwargs):
        store.setdefault("mask", kwargs["attention_mask"].detach().clone())

    def keep(name):
        def hook(module, args, output):  # returns None: a forward hook's return value would replace the output
            store.setdefault(name, output.detach().clone())

        return hook

    handles = [
        attn.register_forward_pre_hook(pre, with_kwargs=True),
        attn.norm_q.register_forward_hook(keep("q")),
        attn.norm_k.register_forward_hook(keep("k")),
    ]
    try:
        record(
            pipe,
            tmp_path / "att.zarr",
            image=_image(),
            prompt=PROMPT,
            keywords=["red", "circle"],
            probe="attention",
            dtype="float32",
            progress=False,
            guidance_scale=3.0,
            **SIZE,
        )
    finally:
        for handle in handles:
            handle.remove()
    ds = layerscope.open_run(tmp_path / "att.zarr")
    rows = [k["token_indices"] for k in ds.attrs["keywords"]]
    bias = store["mask"][1]  # (1, 128), the cond row of the first call
    assert float(bias.min()) == -10000.0 and int((bias == 0).sum()) == 9
    heads = attn.heads
    q = store["q"][1].unflatten(-1, (heads, -1)).transpose(0, 1)  # (H, N, d)
    k = store["k"][1].unflatten(-1, (heads, -1)).transpose(0, 1)  # (H, M, d)
    indicator = torch.zeros(k.shape[1], len(rows))
    for column, tokens in enumerate(rows):
        indicator[list(tokens), column] = 1.0
    mass = F.scaled_dot_product_attention(q, k, indicator.expand(heads, -1, -1), attn_mask=bias[None])  # (H, N, K)
    expected = mass.mean(0).T.reshape(len(rows), *GRID)
    got = torch.from_numpy(ds["similarity"].isel(step=0, layer=2).values)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert float(got.sum()) > 0


def test_ltx_output_contrastive_and_influence_probes(ltx, tmp_path):
    """output: cos(V_k, attention output); contrastive: minus the other words' map; influence: attn2 re-run."""
    import layerscope
    from layerscope.recording import record

    _, pipe = ltx
    attn = pipe.transformer.transformer_blocks[0].attn2
    calls: list[dict] = []

    def pre(module, args, kwargs):
        calls.append({"args": args, "kwargs": kwargs, "z": args[0].detach().clone()})

    def out_pre(module, args):
        calls[-1]["o"] = args[0].detach().clone()

    def values(module, args, output):
        calls[-1]["v"] = output.detach().clone()

    def done(module, args, kwargs, output):
        calls[-1]["out"] = output.detach().clone()

    handles = [
        attn.register_forward_pre_hook(pre, with_kwargs=True),
        attn.to_out[0].register_forward_pre_hook(out_pre),
        attn.to_v.register_forward_hook(values),
        attn.register_forward_hook(done, with_kwargs=True),
    ]
    common = dict(image=_image(), prompt=PROMPT, keywords=["red", "circle"], dtype="float32", progress=False)
    runs = {}
    try:
        for probe in ("output", "contrastive", "influence"):
            calls.clear()
            record(pipe, tmp_path / f"{probe}.zarr", probe=probe, guidance_scale=3.0, **common, **SIZE)
            runs[probe] = (layerscope.open_run(tmp_path / f"{probe}.zarr"), calls[0])
    finally:
        for handle in handles:
            handle.remove()
    rows = [[1], [2]]
    ds, call = runs["output"]
    expected = cosine_maps(call["o"][1], call["v"][1], rows, GRID)
    torch.testing.assert_close(
        torch.from_numpy(ds["similarity"].isel(step=0, layer=0).values), expected, atol=1e-5, rtol=0
    )
    ds, call = runs["contrastive"]
    others = [0, 3, 4, 5, 6, 7]  # the, moves, to, the, left, "."
    assert ds.attrs["probe"]["reference_tokens"] == others
    z, values = call["z"][1], call["v"][1]
    expected = cosine_maps(z, values, rows, GRID) - cosine_maps(z, values, [others], GRID)
    torch.testing.assert_close(
        torch.from_numpy(ds["similarity"].isel(step=0, layer=0).values), expected, atol=1e-5, rtol=0
    )
    ds, call = runs["influence"]
    assert ds.attrs["probe"]["neutral_token"] == 127
    reference = call["out"][1]
    scale = reference.norm(dim=-1).mean()
    maps = []
    with torch.no_grad():
        for tokens in rows:
            context = call["kwargs"]["encoder_hidden_states"].clone()
            context[:, tokens] = context[:, 127:128]
            changed = attn.processor(attn, call["args"][0], context, call["kwargs"]["attention_mask"], None)[1]
            maps.append((reference - changed).norm(dim=-1) / scale)
    expected = torch.stack(maps).reshape(2, *GRID)
    got = torch.from_numpy(ds["similarity"].isel(step=0, layer=0).values)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert float(got.max()) > 1e-4


def test_ltx_cli_end_to_end_and_focal_guidance_refusal(tmp_path, capsys):
    """build-tiny -> record (CFG, both branches) -> rank -> report; FG refused in one line, no store."""
    import layerscope
    from layerscope.cli import main

    model = tmp_path / "tiny"
    assert main(["testbed", "build-tiny", "--family", "ltx-video-i2v", "--out", str(model)]) == 0
    info = json.loads((model / "layerscope_model.json").read_text())
    assert info["generation_defaults"]["record"] == {"steps": 3, "frames": 9, "height": 160, "width": 160}
    assert json.loads((model / "model_index.json").read_text())["_class_name"] == "LTXImageToVideoPipeline"
    common = ["--model", str(model), "--prompt", PROMPT, "--keywords", "red,circle", "--quiet"]
    base = tmp_path / "base.zarr"
    assert main(["record", *common, "--guidance", "3", "--branch", "both", "--out", str(base)]) == 0
    ds = layerscope.open_run(base)
    assert (ds.attrs["num_inference_steps"], ds.attrs["num_frames"], ds.attrs["height"]) == (3, 9, 160)
    assert ds.attrs["adapter"] == "ltx-video" and ds.attrs["weights"] == "random"
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
    guided = tmp_path / "fg.zarr"
    fg = ["--intervene", "focal-guidance", "--ranking", str(ranking), "--fg-set", "weak_layers=[1,2]"]
    assert main(["record", *common, *fg, "--out", str(guided)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no place in ltx-video pipelines" in err[0] and "latent frame 0" in err[0], err
    assert not guided.exists()


@pytest.mark.slow
def test_ltx_bench_generates_through_the_adapter(tmp_path):
    """`layerscope bench` on the LTX-Video pipeline: CFG and the 128-token prompt reach it, videos come back."""
    import imageio.v3 as iio

    from layerscope.cli import main

    model = tmp_path / "tiny"
    assert main(["testbed", "build-tiny", "--family", "ltx-video-i2v", "--out", str(model)]) == 0
    assert main(["testbed", "export-bench", "--out", str(tmp_path / "set"), "--scenes", "2"]) == 0
    size = ["--height", "160", "--width", "160", "--frames", "9", "--steps", "2", "--quiet", "--no-consistency"]
    out = tmp_path / "bench"
    args = ["bench", str(tmp_path / "set" / "prompts.jsonl"), "--model", str(model), "--judge", "shapes", *size]
    assert main([*args, "--guidance", "3", "--out", str(out)]) == 0
    videos = sorted(out.rglob("*.mp4"))
    assert len(videos) == 2
    assert iio.imread(videos[0]).shape[:3] == (9, 160, 160)
