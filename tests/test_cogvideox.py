"""CogVideoX-I2V (joint attention over [text; video], CFG batched as [uncond; cond]) on the tiny pipeline.

Every expectation is computed here independently of the adapter: keyword rows from a hand
tokenisation of the raw prompt and the text encoder's own output, maps from tensors the
test's own hooks capture (the full batch, rows chosen here), the attention map from
SDPA over the captured queries and keys with a keyword-indicator value.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

#: one worker builds this module's tiny pipelines once (make test runs xdist with --dist loadgroup)
pytestmark = pytest.mark.xdist_group("cogvideox")


PROMPT = "the red circle moves to the left"
KEYWORDS = ["red", "circle"]
SIZE = dict(height=64, width=64, num_frames=9, num_inference_steps=2)


@pytest.fixture(scope="module")
def cogvideox(tmp_path_factory):
    from layerscope.loading import load_pipeline
    from layerscope_testbed.cogvideox import save_tiny_pipeline

    folder = save_tiny_pipeline(tmp_path_factory.mktemp("cogvideox") / "tiny", "1.0")
    pipe, _ = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    return folder, pipe


def _image(height=64, width=64):
    rng = np.random.default_rng(0)
    return (rng.random((height, width, 3)) * 255).astype(np.uint8)


def _hand_rows(tokenizer, prompt, words):
    """Each word's token index in the raw prompt's T5 tokenisation ("▁word" pieces)."""
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(prompt)["input_ids"])
    return [[pieces.index("▁" + word)] for word in words]


def test_cogvideox_keyword_rows_match_a_hand_tokenisation(cogvideox):
    """Rows are T5 indices of the *raw* prompt (diffusers does not clean it), first in the sequence."""
    from layerscope.adapters.registry import resolve_adapter
    from layerscope.keywords import KeywordError, clean_prompt

    _, pipe = cogvideox
    adapter = resolve_adapter(pipe)
    assert adapter.name == "cogvideox" and adapter.text_sequence_length() == 226
    raw = "the red &amp; circle moves"  # an HTML entity: cleaning would shift "circle"
    tokenizer = pipe.tokenizer
    rows = _hand_rows(tokenizer, raw, ["red", "circle"])
    assert rows != _hand_rows(tokenizer, clean_prompt(raw), ["red", "circle"])
    mapped = adapter.map_keywords(raw, ["red", "circle"])
    assert [list(item.token_indices) for item in mapped] == rows
    ids = tokenizer(raw)["input_ids"]
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(raw, do_classifier_free_guidance=False, max_sequence_length=226, device="cpu")
        padded = ids + [tokenizer.pad_token_id] * (226 - len(ids))
        hidden = pipe.text_encoder(torch.tensor([padded]))[0][0]
    assert embeds.shape[1] == 226
    for (row,) in rows:
        torch.testing.assert_close(embeds[0, row], hidden[row], rtol=0, atol=0)
    # the non-keyword words are the contrastive probe's reference rows
    others = [i for i, p in enumerate(tokenizer.convert_ids_to_tokens(ids)) if p in ("▁the", "▁moves")]
    assert set(others) <= set(adapter.reference_tokens(raw, mapped))
    assert not {r for (r,) in rows} & set(adapter.reference_tokens(raw, mapped))
    # truncation keeps 225 prompt tokens and </s>: a keyword at token 225 is gone
    long = " ".join(["the"] * 225 + ["red"])
    with pytest.raises(KeywordError, match="beyond"):
        adapter.map_keywords(long, ["red"])
    assert adapter.map_keywords(" ".join(["the"] * 224 + ["red"]), ["red"])[0].token_indices == (224,)


def _capture(blocks):
    """Per call: the full-batch visual input of ``attn1`` and ``attn1.to_v``'s output (all rows)."""
    seen: dict[int, list] = {index: [] for index in blocks}
    handles = []
    for index, block in blocks.items():
        current: dict = {}

        def pre(module, args, kwargs, current=current):
            current["z"] = kwargs["hidden_states"].detach().clone()

        def values(module, args, output, current=current, index=index):
            seen[index].append((current["z"], output.detach().clone()))

        handles.append(block.attn1.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.attn1.to_v.register_forward_hook(values))
    return seen, handles


def _cos_maps(z, values, rows, grid):
    """cos(mean of the keyword's text rows of to_v, z): text rows are the first S - N."""
    text = values[: values.shape[0] - z.shape[0]]
    keys = torch.stack([text[r].float().mean(0) for r in rows])
    return (F.normalize(keys, dim=-1) @ F.normalize(z.float(), dim=-1).T).reshape(-1, *grid)


@pytest.mark.parametrize("guidance", [1.0, 6.0])
def test_cogvideox_hidden_maps_match_captured_tensors_per_batch_row(cogvideox, tmp_path, guidance):
    """cond = batch row 1 and uncond = row 0 of the one CFG call per step; without CFG, row 0 is cond."""
    import layerscope
    from layerscope.recording import record

    _, pipe = cogvideox
    blocks = {1: pipe.transformer.transformer_blocks[1], 3: pipe.transformer.transformer_blocks[3]}
    seen, handles = _capture(blocks)
    branch = "both" if guidance > 1 else "cond"
    try:
        record(pipe, tmp_path / "run.zarr", image=_image(), prompt=PROMPT, keywords=KEYWORDS, dtype="float32",
               progress=False, guidance_scale=guidance, branch=branch, **SIZE)  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    ds = layerscope.open_run(tmp_path / "run.zarr")
    assert ds.attrs["status"] == "complete"
    assert ds.attrs["hook_calls"] == ds.attrs["hook_calls_expected"] == 4 * 2 * (2 if guidance > 1 else 1)
    rows = _hand_rows(pipe.tokenizer, PROMPT, KEYWORDS)
    assert [k["token_indices"] for k in ds.attrs["keywords"]] == rows
    grid = tuple(ds.attrs["grid"])
    assert grid == (3, 4, 4)  # (9 - 1) / 4 + 1 latent frames; 64 / 8 / 2
    batch = 2 if guidance > 1 else 1
    for layer in blocks:
        assert len(seen[layer]) == SIZE["num_inference_steps"]  # one call per step, both branches batched
        for step, (z, values) in enumerate(seen[layer]):
            assert z.shape[0] == values.shape[0] == batch
            assert values.shape[1] == 226 + z.shape[1]
            got = torch.from_numpy(ds["similarity"].isel(step=step, layer=layer).values)
            cond = _cos_maps(z[batch - 1], values[batch - 1], rows, grid)
            torch.testing.assert_close(got, cond, rtol=0, atol=1e-5)
            if guidance > 1:
                uncond = _cos_maps(z[0], values[0], rows, grid)
                got_uncond = torch.from_numpy(ds["similarity_uncond"].isel(step=step, layer=layer).values)
                torch.testing.assert_close(got_uncond, uncond, rtol=0, atol=1e-5)
                assert (cond - uncond).abs().max() > 1e-3  # the rows differ, so the check above can fail
    assert ds.sizes["frame_px"] == 9


def test_cogvideox_attention_probe_is_the_models_joint_softmax(cogvideox, tmp_path):
    """SDPA of the cond row's visual queries (RoPE) over [text; visual (RoPE)] keys, indicator values."""
    from diffusers.models.embeddings import apply_rotary_emb

    import layerscope
    from layerscope.recording import record

    _, pipe = cogvideox
    attn = pipe.transformer.transformer_blocks[2].attn1
    store: dict = {}

    def pre(module, args, kwargs):
        if "q" not in store:
            store.update(n=kwargs["hidden_states"].shape[1], rope=kwargs["image_rotary_emb"])

    def keep(key):
        def hook(module, args, output):  # returns None: a returned tensor would replace the output
            store.setdefault(key, output.detach().clone())

        return hook

    handles = [
        attn.register_forward_pre_hook(pre, with_kwargs=True),
        attn.norm_q.register_forward_hook(keep("q")),
        attn.norm_k.register_forward_hook(keep("k")),
    ]
    try:
        record(pipe, tmp_path / "att.zarr", image=_image(), prompt=PROMPT, keywords=KEYWORDS, probe="attention",
               dtype="float32", progress=False, guidance_scale=6.0, layers=[2], **SIZE)  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    ds = layerscope.open_run(tmp_path / "att.zarr")
    rows = _hand_rows(pipe.tokenizer, PROMPT, KEYWORDS)
    grid = tuple(ds.attrs["grid"])
    n, q, k = store["n"], store["q"][1:2], store["k"][1:2]  # (1, H, S, d): batch row 1 is cond
    text = q.shape[2] - n
    query = apply_rotary_emb(q[:, :, text:], store["rope"])
    keys = torch.cat([k[:, :, :text], apply_rotary_emb(k[:, :, text:], store["rope"])], dim=2)
    indicator = torch.zeros(1, 1, keys.shape[2], len(rows))
    for column, tokens in enumerate(rows):
        indicator[0, 0, tokens, column] = 1.0
    mass = F.scaled_dot_product_attention(query, keys, indicator.expand(1, q.shape[1], -1, -1))  # (1, H, N, K)
    expected = mass[0].mean(0).T.reshape(len(rows), *grid)
    got = torch.from_numpy(ds["similarity"].isel(step=0, layer=0).values)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert float(got.sum()) > 0


@pytest.mark.parametrize("probe", ["output", "contrastive"])
def test_cogvideox_output_and_contrastive_probes_match_captured_tensors(cogvideox, tmp_path, probe):
    """output: cos(V_k, last N rows of to_out[0]'s input); contrastive: Eq. 10 minus the other words' map."""
    import layerscope
    from layerscope.recording import record

    _, pipe = cogvideox
    block = pipe.transformer.transformer_blocks[0]
    seen, handles = _capture({0: block})
    outputs: list = []
    handles.append(block.attn1.to_out[0].register_forward_pre_hook(lambda m, args: outputs.append(args[0].clone())))
    try:
        record(pipe, tmp_path / "p.zarr", image=_image(), prompt=PROMPT, keywords=KEYWORDS, probe=probe,
               dtype="float32", progress=False, guidance_scale=6.0, layers=[0], **SIZE)  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    ds = layerscope.open_run(tmp_path / "p.zarr")
    rows = _hand_rows(pipe.tokenizer, PROMPT, KEYWORDS)
    pieces = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(PROMPT)["input_ids"])
    others = [i for i, piece in enumerate(pieces) if piece != "</s>" and piece.lstrip("▁") not in KEYWORDS]
    assert len(others) == 5  # the, moves, to, the, left
    grid = tuple(ds.attrs["grid"])
    for step in range(SIZE["num_inference_steps"]):
        z, values = seen[0][step]
        z, text = z[1], values[1][:226]  # the cond row; text rows first
        keys = F.normalize(torch.stack([text[r].float().mean(0) for r in rows]), dim=-1)
        if probe == "output":
            attention = outputs[step][1][-z.shape[0] :]  # to_out[0]'s input is [text; visual]
            expected = (keys @ F.normalize(attention.float(), dim=-1).T).reshape(-1, *grid)
        else:
            reference = F.normalize(text[others].float().mean(0, keepdim=True), dim=-1)
            visual = F.normalize(z.float(), dim=-1)
            expected = (keys @ visual.T - reference @ visual.T).reshape(-1, *grid)
        got = torch.from_numpy(ds["similarity"].isel(step=step, layer=0).values)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_cogvideox15_temporal_patches_and_padding(tmp_path):
    """CogVideoX1.5 (patch_size_t 2): 3 latent frames are padded to 4 -> 2 token frames; free sizes."""
    import layerscope
    from layerscope.adapters.registry import resolve_adapter
    from layerscope.recording import record
    from layerscope_testbed.cogvideox import build_tiny_pipeline

    pipe = build_tiny_pipeline("1.5")
    pipe.set_progress_bar_config(disable=True)
    adapter = resolve_adapter(pipe)
    assert adapter.token_grid(9, 64, 96) == (2, 4, 6) and adapter.token_grid(17, 64, 96) == (3, 4, 6)
    assert adapter.video_frames(13) == 16 and adapter.video_frames(9) == 9
    block = pipe.transformer.transformer_blocks[1]
    seen, handles = _capture({1: block})
    try:
        record(pipe, tmp_path / "r.zarr", image=_image(64, 96), prompt=PROMPT, keywords=KEYWORDS, height=64,
               width=96, num_frames=9, num_inference_steps=1, dtype="float32", progress=False,
               guidance_scale=1.0, layers=[1])  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    ds = layerscope.open_run(tmp_path / "r.zarr")
    assert tuple(ds.attrs["grid"]) == (2, 4, 6) and ds.sizes["frame_px"] == 9
    ((z, values),) = seen[1]
    assert z.shape[1] == 2 * 4 * 6
    expected = _cos_maps(z[0], values[0], _hand_rows(pipe.tokenizer, PROMPT, KEYWORDS), (2, 4, 6))
    torch.testing.assert_close(torch.from_numpy(ds["similarity"].isel(step=0, layer=0).values), expected,
                               rtol=0, atol=1e-5)  # fmt: skip


def test_cogvideox_cli_end_to_end(tmp_path, capsys):
    """build-tiny -> record (CFG, both branches) -> rank -> report; FG, influence and a bad size refused."""
    import json

    import layerscope
    from layerscope.cli import main

    model = tmp_path / "tiny"
    assert main(["testbed", "build-tiny", "--family", "cogvideox-i2v", "--out", str(model)]) == 0
    info = json.loads((model / "layerscope_model.json").read_text())
    assert info["generation_defaults"]["record"] == {"steps": 3, "frames": 9, "height": 64, "width": 64}
    from layerscope.cli.options import pipeline_defaults

    # a real checkpoint without our json: the pipeline's 50 steps and 49 frames, the adapter's 480x720
    assert pipeline_defaults(model) == (50, 49, 480, 720)
    common = ["--model", str(model), "--prompt", PROMPT, "--keywords", "red,circle", "--quiet"]
    run = tmp_path / "run.zarr"
    assert main(["record", *common, "--guidance", "6", "--branch", "both", "--out", str(run)]) == 0
    ds = layerscope.open_run(run)
    assert ds.attrs["pipeline_class"] == "CogVideoXImageToVideoPipeline" and ds.attrs["adapter"] == "cogvideox"
    assert ds.attrs["num_inference_steps"] == 3 and ds.attrs["weights"] == "random"
    assert ds.attrs["hook_calls"] == ds.attrs["hook_calls_expected"] == 4 * 3 * 2
    assert "similarity_uncond" in ds and list(ds["block"].values) == [f"transformer_blocks.{i}" for i in range(4)]
    ranking = tmp_path / "ranking.json"
    assert main(["rank", str(run), "--splits", "10", "--bootstrap", "100", "--out", str(ranking)]) == 0
    data = json.loads(ranking.read_text())
    assert [row["block"] for row in data["layers"]] == [f"transformer_blocks.{i}" for i in range(4)]
    page = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(page)]) == 0
    assert "transformer_blocks.3" in re.sub(r"<[^>]+>", " ", page.read_text())
    capsys.readouterr()
    refused = {
        "fg": (["--intervene", "focal-guidance", "--fg-set", "weak_layers=[1]"], "Focal Guidance has no place"),
        "influence": (["--probe", "influence"], "cannot rebuild"),
        "size": (["--height", "128"], "learned positional embeddings for 64x64"),
    }
    for name, (extra, message) in refused.items():
        assert main(["record", *common, *extra, "--out", str(tmp_path / f"{name}.zarr")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / f"{name}.zarr").exists()


@pytest.mark.slow
def test_cogvideox_bench_generates_through_the_adapter(tmp_path):
    """`layerscope bench` drives the CogVideoX pipeline (batched CFG) and writes its videos."""
    import imageio.v3 as iio

    from layerscope.cli import main

    model = tmp_path / "tiny"
    assert main(["testbed", "build-tiny", "--family", "cogvideox-i2v", "--out", str(model)]) == 0
    assert main(["testbed", "export-bench", "--out", str(tmp_path / "set"), "--scenes", "2"]) == 0
    size = ["--height", "64", "--width", "64", "--frames", "9", "--steps", "2", "--quiet", "--no-consistency"]
    out = tmp_path / "bench"
    args = ["bench", str(tmp_path / "set" / "prompts.jsonl"), "--model", str(model), "--judge", "shapes", *size]
    assert main([*args, "--guidance", "6", "--out", str(out)]) == 0
    videos = sorted(out.rglob("*.mp4"))
    assert len(videos) == 2
    assert iio.imread(videos[0]).shape[:3] == (9, 64, 64)
