"""SkyReels-V2-I2V on the tiny offline pipeline: keyword rows, maps, Focal Guidance, CLI, bench.

The adapter is the Wan adapter under another name, so these tests check the claim that
made it one: every expectation is computed here from the SkyReels pipeline's own modules
(keyword rows from its UMT5 tokenizer, maps from tensors captured by this file's hooks,
Eq. 8/9 by re-running ``attn2`` with FG removed), never from the adapter.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

#: one worker builds this module's tiny pipelines once (make test runs xdist with --dist loadgroup)
pytestmark = pytest.mark.xdist_group("skyreels")


PROMPT = "the red circle moves to the left"
SIZE = dict(height=128, width=128, num_frames=5, num_inference_steps=2)
SIZE_ARGS = ["--height", "128", "--width", "128", "--frames", "5", "--steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def skyreels_dir(tmp_path_factory):
    """The tiny pipeline, written by ``layerscope testbed build-tiny`` (the user's path)."""
    from layerscope.cli import main

    out = tmp_path_factory.mktemp("skyreels") / "tiny"
    assert main(["testbed", "build-tiny", "--family", "skyreels-v2-i2v", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def skyreels_pipe(skyreels_dir):
    from layerscope.loading import load_pipeline

    pipe, _ = load_pipeline(skyreels_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(size=128):
    rng = np.random.default_rng(0)
    return (rng.random((size, size, 3)) * 255).astype(np.uint8)


def _hand_rows(tokenizer, prompt, word):
    """The UMT5 rows of ``word``: its "▁word" piece in the tokenized prompt, found by hand."""
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(prompt)["input_ids"])
    return [i for i, piece in enumerate(pieces) if piece == f"▁{word}"]


def test_skyreels_is_the_real_pipeline_and_rows_are_umt5_tokens(skyreels_pipe):
    from diffusers import SkyReelsV2ImageToVideoPipeline, SkyReelsV2Transformer3DModel

    from layerscope.adapters.registry import resolve_adapter
    from layerscope.adapters.skyreels_v2 import SkyReelsV2Adapter

    pipe = skyreels_pipe
    assert type(pipe) is SkyReelsV2ImageToVideoPipeline
    assert type(pipe.transformer) is SkyReelsV2Transformer3DModel
    assert type(pipe.image_encoder).__name__ == "CLIPVisionModelWithProjection"
    adapter = resolve_adapter(pipe)
    assert type(adapter) is SkyReelsV2Adapter and adapter.name == "skyreels-v2"
    # VAE stride 8 (3 downsamples), patch 2: 128 px -> 8 tokens; 4x temporal: 5 frames -> 2 latent frames
    assert adapter.token_grid(5, 128, 128) == (2, 8, 8) and adapter.spatial_multiple() == 16
    for item in adapter.map_keywords(PROMPT, ["red", "circle"]):
        assert list(item.token_indices) == _hand_rows(pipe.tokenizer, PROMPT, item.keyword)
    # the pipeline's text embedding really is UMT5's state of those rows (padded to 512)
    with torch.no_grad():
        embeds = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512)[0]
        ids = pipe.tokenizer(PROMPT, return_tensors="pt")
        hidden = pipe.text_encoder(ids.input_ids, ids.attention_mask).last_hidden_state
    assert embeds.shape[1] == 512
    (row,) = _hand_rows(pipe.tokenizer, PROMPT, "circle")
    torch.testing.assert_close(embeds[0, row], hidden[0, row])


def test_skyreels_maps_match_an_independent_computation(skyreels_pipe, tmp_path):
    """cos(mean V_k, z) of attn2 for two blocks and both CFG branches (cond first, then uncond)."""
    import layerscope
    from layerscope.recording import record

    pipe = skyreels_pipe
    blocks = {layer: pipe.transformer.blocks[layer] for layer in (0, 5)}
    seen: dict[int, list] = {layer: [] for layer in blocks}
    handles = []
    for layer, block in blocks.items():
        current: dict = {}

        def pre(module, args, kwargs, current=current):
            current["z"] = (args[0] if args else kwargs["hidden_states"])[0].detach().clone()

        def values(module, args, output, current=current, layer=layer):
            seen[layer].append((current["z"], output[0].detach().clone()))  # to_v sees the 512 text rows only

        handles += [
            block.attn2.register_forward_pre_hook(pre, with_kwargs=True),
            block.attn2.to_v.register_forward_hook(values),
        ]
    try:
        record(
            pipe,
            tmp_path / "run.zarr",
            image=_image(),
            prompt=PROMPT,
            keywords=["red", "circle"],
            dtype="float32",
            progress=False,
            guidance_scale=3.0,
            branch="both",
            **SIZE,
        )
    finally:
        for handle in handles:
            handle.remove()
    ds = layerscope.open_run(tmp_path / "run.zarr")
    assert ds.attrs["status"] == "complete" and ds.attrs["adapter"] == "skyreels-v2"
    assert ds.attrs["transformer_class"] == "SkyReelsV2Transformer3DModel"
    grid = tuple(ds.attrs["grid"])
    assert grid == (2, 8, 8)
    rows = [_hand_rows(pipe.tokenizer, PROMPT, word) for word in ("red", "circle")]
    assert [k["token_indices"] for k in ds.attrs["keywords"]] == rows
    for layer in blocks:
        assert len(seen[layer]) == 2 * SIZE["num_inference_steps"]
        for step in range(SIZE["num_inference_steps"]):
            for offset, variable in enumerate(["similarity", "similarity_uncond"]):
                z, values = seen[layer][2 * step + offset]
                assert values.shape[0] == 512
                keys = torch.stack([values[r].float().mean(0) for r in rows])
                expected = (F.normalize(keys, dim=-1) @ F.normalize(z.float(), dim=-1).T).reshape(-1, *grid)
                got = torch.from_numpy(ds[variable].isel(step=step, layer=layer).values.astype(np.float32))
                # the store keeps float16 maps by default; cosines lie in [-1, 1]
                torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)
    # the branches differ (uncond sees the negative prompt's values), so the test can tell them apart
    assert not np.allclose(ds["similarity"].values, ds["similarity_uncond"].values)


def _guided_call(pipe, example, skyreels_dir, block, **strengths):
    """One cond transformer call under FG on WEAK; capture z, the residual after attn2, to_v before/after FG."""
    from test_focal_guidance import WEAK, _capture_pre, _inputs, _transformer_inputs

    from fg_intervene.config import FocalGuidanceConfig
    from fg_intervene.plugin import FocalGuidance

    config = FocalGuidanceConfig(weak_layers=WEAK, keywords=["red", "circle"], attention_cache=False, **strengths)
    fg = FocalGuidance(config, clip_dir=skyreels_dir / "clip")
    inputs = _transformer_inputs(pipe, example)
    seen: dict = {}

    def keep(name):
        return lambda module, args, output: seen.__setitem__(name, output[0].detach().clone())

    handles = [
        _capture_pre(block.norm2, seen, "z", prepend=True),  # the residual entering the sublayer
        _capture_pre(block.norm3, seen, "after", prepend=True),  # the residual after it
        block.attn2.to_v.register_forward_hook(keep("values"), prepend=True),  # before FG's own hook
    ]
    try:
        handle = fg.apply(_inputs(pipe, example))
        handles.append(block.attn2.to_v.register_forward_hook(keep("fused")))  # after FG's hook
        with torch.no_grad(), pipe.transformer.cache_context("cond"):
            pipe.transformer(**inputs)
        handle.remove()
    finally:
        for h in handles:
            h.remove()
    return fg, inputs, seen


def test_skyreels_focal_guidance_eq8_on_the_text_values(skyreels_pipe, example, skyreels_dir):
    """Eq. 8: attn2.to_v's keyword rows gain lambda_txt * W_v^vis P_v(anchor); no other row moves."""
    from test_focal_guidance import WEAK

    from fg_intervene.plugin import FAMILY_MODULES

    assert FAMILY_MODULES["skyreels-v2"] == "fg_intervene.wan"
    block = skyreels_pipe.transformer.blocks[WEAK[0]]
    fg, _, seen = _guided_call(skyreels_pipe, example, skyreels_dir, block, lambda_txt=0.5, lambda_lat=0.0)
    guidance = fg.guidance
    with torch.no_grad():  # V_k^vis through this SkyReels block's image value projection
        visual = block.attn2.add_v_proj(guidance.projected[0])
    torch.testing.assert_close(guidance.visual_values[(0, WEAK[0])], visual, rtol=0, atol=1e-6)
    expected = seen["values"].clone()
    for k, rows in enumerate(guidance.token_indices):
        expected[rows] += 0.5 * visual[k]
    torch.testing.assert_close(seen["fused"], expected, rtol=0, atol=1e-6)
    changed = (seen["fused"] != seen["values"]).any(-1).nonzero().flatten().tolist()
    assert changed == sorted(r for rows in guidance.token_indices for r in rows)
    assert guidance.token_indices == [
        _hand_rows(skyreels_pipe.tokenizer, example["prompt"], w) for w in guidance.keywords
    ]


def test_skyreels_focal_guidance_eq9_hidden_injection_by_hand(skyreels_pipe, example, skyreels_dir):
    """Eq. 9 (inject_at='hidden'): the block computes (z + d) + attn2(norm2(z + d)), d from the regions.

    The helpers are test_focal_guidance's (Wan): the same hooks work on SkyReels' blocks,
    which is why ``fg_intervene.wan`` is registered for the family unchanged.
    """
    from test_focal_guidance import WEAK, _attn2_context, _eq9_delta

    block = skyreels_pipe.transformer.blocks[WEAK[0]]
    fg, inputs, seen = _guided_call(skyreels_pipe, example, skyreels_dir, block, lambda_txt=0.0, lambda_lat=0.75)
    assert fg.config.inject_at == "hidden"
    (z,), (after,) = seen["z"], seen["after"]
    delta, region = _eq9_delta(fg, 0.75, z.shape[1])
    encoder = _attn2_context(skyreels_pipe, block, inputs)
    with torch.no_grad():
        shifted = z[0] + delta
        expected = shifted + block.attn2(block.norm2(shifted[None].float()), encoder, None, None)[0]
        plain = z[0] + block.attn2(block.norm2(z.float()), encoder, None, None)[0]
    torch.testing.assert_close(after[0], expected, rtol=0, atol=2e-5)
    # locality: only reference-frame tokens inside some R_k move
    first = region.shape[1] * region.shape[2]
    moved = (after[0] - plain).abs().sum(-1)
    inside = region.sum(0).flatten() > 0
    assert moved[first:].max() == 0 and moved[:first][~inside].max() == 0
    assert moved[:first][inside].min() > 0


def test_skyreels_cli_end_to_end(skyreels_dir, tmp_path):
    """build-tiny (fixture) -> record (CFG, both branches) -> rank -> record --intervene -> report --compare."""
    import layerscope
    from layerscope.cli import main

    common = ["--model", str(skyreels_dir), "--prompt", PROMPT, "--keywords", "red,circle", *SIZE_ARGS]
    base, guided = tmp_path / "base.zarr", tmp_path / "fg.zarr"
    assert main(["record", *common, "--guidance", "3", "--branch", "both", "--out", str(base)]) == 0
    ds = layerscope.open_run(base)
    assert ds.attrs["adapter"] == "skyreels-v2" and ds.attrs["pipeline_class"] == "SkyReelsV2ImageToVideoPipeline"
    assert ds.attrs["hook_calls"] == ds.attrs["hook_calls_expected"] == 8 * 2 * 2
    assert [str(b) for b in ds["block"].values] == [f"blocks.{i}" for i in range(8)]
    ranking = tmp_path / "ranking.json"
    assert main(["rank", str(base), "--method", "bottom-k", "--k", "2", "--out", str(ranking)]) == 0
    weak = json.loads(ranking.read_text())["weak_layers"]
    assert len(weak) == 2
    fg = ["--intervene", "focal-guidance", "--ranking", str(ranking)]
    assert main(["record", *common, *fg, "--out", str(guided)]) == 0
    attrs = layerscope.open_run(guided).attrs
    assert attrs["intervention"]["name"] == "focal-guidance" and attrs["guided_layers"] == weak
    assert (
        main(
            [
                "report",
                str(base),
                "--compare",
                str(guided),
                "--steps-shown",
                "1",
                "--out",
                str(tmp_path / "compare.html"),
            ]
        )
        == 0
    )
    assert "blocks.7" in (tmp_path / "compare.html").read_text()


@pytest.mark.slow
def test_skyreels_bench_generates_through_the_adapter(skyreels_dir, tmp_path):
    import imageio.v3 as iio

    from layerscope.cli import main

    assert main(["testbed", "export-bench", "--out", str(tmp_path / "set"), "--scenes", "1"]) == 0
    out = tmp_path / "bench"
    args = ["bench", str(tmp_path / "set" / "prompts.jsonl"), "--model", str(skyreels_dir), "--judge", "shapes"]
    assert main([*args, *SIZE_ARGS, "--no-consistency", "--out", str(out)]) == 0
    (video,) = sorted(out.rglob("*.mp4"))
    assert iio.imread(video).shape[:3] == (5, 128, 128)
    assert json.loads((out / "results.json").read_text())
