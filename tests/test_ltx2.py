"""LTX-2 I2V (audio-video DiT, Gemma 3 + text connectors, batched CFG) on the tiny offline pipeline.

Every expectation is computed here independently of the adapter: keyword rows from a
hand-written tokenisation of the tiny Gemma vocabulary and from the connector's input
captured by the test's own hooks (Gemma row ``1024 - n + j`` must arrive at connector row
``j``, registers after), maps from tensors captured by the test's own hooks on ``attn2``
(hooks that return None, so they never replace a module's output), the CFG branch from the
batch row the test reads itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from family_checks import capture_attn2, cosine_maps, record_with_hooks

#: one worker builds this module's tiny pipelines once (make test runs xdist with --dist loadgroup)
pytestmark = pytest.mark.xdist_group("ltx2")


PROMPT = "the red circle moves to the left."
#: by hand: <bos> the ▁red ▁circle ▁moves ▁to ▁the ▁left .
PIECES = ["<bos>", "the", "▁red", "▁circle", "▁moves", "▁to", "▁the", "▁left", "."]
SIZE = dict(height=160, width=160, num_frames=9, num_inference_steps=2)
GRID = (2, 5, 5)  # 9 frames -> 2 latent frames; 160 / 32 -> 5
ROWS = 1024


@pytest.fixture(scope="module")
def ltx2(tmp_path_factory):
    """The tiny pipeline, built once through the CLI (``testbed build-tiny``) and loaded as ``record`` does."""
    from layerscope.cli import main
    from layerscope.loading import load_pipeline

    folder = tmp_path_factory.mktemp("ltx2") / "tiny"
    assert main(["testbed", "build-tiny", "--family", "ltx-2-i2v", "--out", str(folder)]) == 0
    pipe, _ = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    return folder, pipe


def _image():
    rng = np.random.default_rng(0)
    return (rng.random((160, 160, 3)) * 255).astype(np.uint8)


def test_ltx2_keyword_rows_match_a_hand_computation(ltx2):
    """Gemma row 1024 - n + j (left padding) reaches connector row j; a keyword's rows are its token indices."""
    from layerscope.adapters.ltx2 import connector_rows
    from layerscope.adapters.registry import REFUSED_PIPELINES, resolve_adapter
    from layerscope.keywords import KeywordError

    _, pipe = ltx2
    assert "LTX2ImageToVideoPipeline" not in REFUSED_PIPELINES
    adapter = resolve_adapter(pipe)
    assert type(adapter).__name__ == "LTX2Adapter" and adapter.name == "ltx-2"
    # the pipeline's tokenisation, by hand: left padding to 1024, <bos> first
    inputs = pipe.tokenizer(PROMPT, padding="max_length", max_length=ROWS, truncation=True, return_tensors="pt")
    ids, mask = inputs.input_ids[0], inputs.attention_mask[0]
    n = len(PIECES)
    assert pipe.tokenizer.padding_side == "left" and int(mask.sum()) == n and int(mask[-n:].sum()) == n
    assert pipe.tokenizer.convert_ids_to_tokens(ids[-n:].tolist()) == PIECES

    # the connector, watched by our hooks: its projected Gemma rows, and what its first block receives
    seen: dict = {}
    connector = pipe.connectors.video_connector
    hooks = [
        pipe.connectors.text_proj_in.register_forward_hook(lambda m, a, out: seen.update(gemma=out.detach().clone())),
        connector.transformer_blocks[0].register_forward_pre_hook(
            lambda m, args: seen.update(rows=args[0].detach().clone())
        ),
    ]
    try:
        with torch.no_grad():
            embeds, prompt_mask = pipe._get_gemma_prompt_embeds(PROMPT, max_sequence_length=ROWS, device="cpu")
            pipe.connectors(embeds, prompt_mask, padding_side="left")
    finally:
        for hook in hooks:
            hook.remove()
    gemma, rows = seen["gemma"][0], seen["rows"][0]
    for j in range(n):  # token j: Gemma row 1024 - n + j -> connector row j
        torch.testing.assert_close(rows[j], gemma[ROWS - n + j], rtol=0, atol=0)
    registers = connector.learnable_registers.detach()
    tail = torch.arange(n, ROWS) % registers.shape[0]
    torch.testing.assert_close(rows[n:], registers[tail], rtol=0, atol=0)  # registers by absolute position

    # so the keyword rows are the token indices: red 2, circle 3, left 7
    mapped = adapter.map_keywords(PROMPT, ["red", "circle", "left"])
    assert [item.token_indices for item in mapped] == [(2,), (3,), (7,)]
    assert [PIECES[item.token_indices[0]] for item in mapped] == ["▁red", "▁circle", "▁left"]
    # the pipeline strips the prompt; the rows do not move
    assert [i.token_indices for i in adapter.map_keywords(f"  {PROMPT}\n", ["red", "left"])] == [(2,), (7,)]
    # the reference rows (contrastive): the other words' rows, <bos> left out
    assert adapter.reference_tokens(PROMPT, mapped[:2]) == [1, 4, 5, 6, 7, 8]
    # without registers the rows would keep their left-padded places
    assert connector_rows([2, 3], n, registers=True) == [2, 3]
    assert connector_rows([2, 3], n, registers=False) == [ROWS - n + 2, ROWS - n + 3]
    # truncation keeps the first 1024 tokens (<bos> + 1023): a keyword beyond them is refused in one line
    long_prompt = " ".join(["the"] * 1030 + ["red"])
    with pytest.raises(KeywordError, match="beyond the text encoder's 1024 tokens"):
        adapter.map_keywords(long_prompt, ["red"])


def test_ltx2_geometry_call_arguments_and_description(ltx2):
    from layerscope.adapters.registry import resolve_adapter
    from layerscope.recording import RecordConfig, RecordError, validate_geometry

    _, pipe = ltx2
    adapter = resolve_adapter(pipe)
    assert (pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio) == (32, 8)
    assert validate_geometry(adapter, 160, 160, 9) == GRID
    assert adapter.token_grid(121, 512, 768) == (16, 16, 24)  # the pipeline's default size (121 frames)
    with pytest.raises(RecordError, match="8\\*n\\+1"):
        validate_geometry(adapter, 160, 160, 12)
    with pytest.raises(RecordError, match="multiples of 32"):
        validate_geometry(adapter, 144, 160, 9)
    info = adapter.describe()
    assert info["patch_size"] == [1, 1, 1] and info["vae_compression"] == [8, 32, 32] and info["num_layers"] == 4
    assert info["text_tokens"] == ROWS and "not recorded" in info["audio_stream"]
    assert adapter.hook_points() == [f"transformer_blocks.{i}.attn2" for i in range(4)]
    # `layerscope plan` reads the same geometry from the folder's configs alone
    folder, _ = ltx2
    configs = {part: json.loads((folder / part / "config.json").read_text()) for part in ("transformer", "vae")}
    geometry = type(adapter).geometry_from_configs(configs, 9, 160, 160)
    assert geometry.grid == GRID and geometry.text_tokens == ROWS and geometry.num_layers == 4
    assert (geometry.spatial_multiple, geometry.frame_multiple, geometry.width) == (32, 8, 32)
    # one transformer call per step: STG and modality guidance off; audio CFG follows --guidance
    guided = adapter.call_kwargs(RecordConfig(PROMPT, ["red"], 160, 160, 9, 2, guidance_scale=3.0))
    assert guided["stg_scale"] == guided["audio_stg_scale"] == 0.0
    assert guided["modality_scale"] == guided["audio_modality_scale"] == 1.0
    assert guided["max_sequence_length"] == ROWS and "audio_guidance_scale" not in guided
    plain = adapter.call_kwargs(RecordConfig(PROMPT, ["red"], 160, 160, 9, 2, guidance_scale=1.0))
    assert plain["audio_guidance_scale"] == 1.0


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_ltx2_maps_match_an_independent_computation(ltx2, tmp_path, guidance):
    """cos(V_k, z) of attn2's input; under CFG the cond map is batch row 1, the uncond map row 0."""
    import layerscope

    _, pipe = ltx2
    attn = pipe.transformer.transformer_blocks[1].attn2
    seen, handles = capture_attn2(attn)
    cfg = guidance > 1
    options = dict(image=_image(), prompt=PROMPT, keywords=["red", "circle"], guidance_scale=guidance)
    record_with_hooks(pipe, tmp_path / "run.zarr", handles, branch="both" if cfg else "cond", **options, **SIZE)
    ds = layerscope.open_run(tmp_path / "run.zarr")
    assert ds.attrs["status"] == "complete" and ds.attrs["hook_calls"] == ds.attrs["hook_calls_expected"]
    assert tuple(ds.attrs["grid"]) == GRID and ds.attrs["adapter"] == "ltx-2"
    rows = [k["token_indices"] for k in ds.attrs["keywords"]]
    assert rows == [[2], [3]]
    assert len(seen) == SIZE["num_inference_steps"]  # one call per step (no STG/modality calls), both branches in it
    branches = {"similarity": 1, "similarity_uncond": 0} if cfg else {"similarity": 0}
    assert ("similarity_uncond" in ds) == cfg
    for step, call in enumerate(seen):
        assert call["z"].shape[0] == (2 if cfg else 1)  # guidance 1: the audio CFG is off too
        assert call["v"].shape[1] == ROWS and float(call["mask"].abs().max()) == 0.0  # all 1024 rows attended
        for variable, row in branches.items():
            expected = cosine_maps(call["z"][row], call["v"][row], rows, GRID)
            got = torch.from_numpy(ds[variable].isel(step=step, layer=1).values)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        if cfg:  # the rows differ (prompt vs empty negative prompt), so reading the wrong one would fail
            other = cosine_maps(call["z"][0], call["v"][0], rows, GRID)
            assert (torch.from_numpy(ds["similarity"].isel(step=step, layer=1).values) - other).abs().max() > 1e-3


def test_ltx2_cli_end_to_end_focal_guidance_refusal_and_bench(ltx2, tmp_path, capsys):
    """record (CFG, both branches) -> rank -> report; FG and finetune refused in one line, nothing written; bench."""
    import imageio.v3 as iio

    import layerscope
    from layerscope.cli import main

    model, _ = ltx2
    info = json.loads((model / "layerscope_model.json").read_text())
    assert info["generation_defaults"]["record"] == {"steps": 2, "frames": 9, "height": 160, "width": 160}
    assert json.loads((model / "model_index.json").read_text())["_class_name"] == "LTX2ImageToVideoPipeline"
    common = ["--model", str(model), "--prompt", PROMPT, "--keywords", "red,circle", "--quiet"]
    base = tmp_path / "base.zarr"
    assert main(["record", *common, "--guidance", "3", "--branch", "both", "--out", str(base)]) == 0
    ds = layerscope.open_run(base)
    assert (ds.attrs["num_inference_steps"], ds.attrs["num_frames"], ds.attrs["height"]) == (2, 9, 160)
    assert ds.attrs["adapter"] == "ltx-2" and ds.attrs["weights"] == "random"
    assert ds.attrs["hook_calls"] == ds.attrs["hook_calls_expected"] == 4 * 2 * 2
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
    assert len(err) == 1 and "no place in ltx-2 pipelines" in err[0] and "latent frame 0" in err[0], err
    assert not guided.exists()
    # finetune: not supported for this family, refused in one line before anything is written
    ft = tmp_path / "ft"
    argv = ["finetune", "--model", str(model), "--data", "shapes:2", "--layers", "1", "--out", str(ft), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not support ltx-2" in err[0], err
    assert not ft.exists()
    # bench: CFG reaches the pipeline through the adapter, videos come back at the asked size
    assert main(["testbed", "export-bench", "--out", str(tmp_path / "set"), "--scenes", "1"]) == 0
    size = ["--height", "160", "--width", "160", "--frames", "9", "--steps", "2", "--quiet", "--no-consistency"]
    out = tmp_path / "bench"
    args = ["bench", str(tmp_path / "set" / "prompts.jsonl"), "--model", str(model), "--judge", "shapes", *size]
    assert main([*args, "--guidance", "3", "--out", str(out)]) == 0
    videos = sorted(out.rglob("*.mp4"))
    assert len(videos) == 1
    assert iio.imread(videos[0]).shape[:3] == (9, 160, 160)
