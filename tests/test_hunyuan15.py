"""HunyuanVideo-1.5 I2V (double-stream MMDiT) on the tiny offline pipeline.

Every expectation is computed here independently of the adapter: keyword rows from a
hand-built chat-template call and the transformer's own context reordering (captured by
hooks), maps from tensors captured by this file's hooks on ``attn`` and ``attn.add_v_proj``,
the attention probe from ``F.scaled_dot_product_attention`` with the model's mask.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

#: one worker builds this module's tiny pipelines once (make test runs xdist with --dist loadgroup)
pytestmark = pytest.mark.xdist_group("hunyuan15")


PROMPT = "the red circle moves to the left"
GLYPH_PROMPT = 'the red circle shows the word "hi"'
SIZE = dict(height=128, width=128, num_frames=5, num_inference_steps=2)
SIZE_ARGS = ["--height", "128", "--width", "128", "--frames", "5", "--steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def hy15_dir(tmp_path_factory):
    """The tiny pipeline, written by ``layerscope testbed build-tiny`` (the user's path)."""
    from layerscope.cli import main

    out = tmp_path_factory.mktemp("hunyuan15") / "tiny"
    assert main(["testbed", "build-tiny", "--family", "hunyuan-video-1.5-i2v", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def hy15_pipe(hy15_dir):
    from layerscope.loading import load_pipeline

    pipe, _ = load_pipeline(hy15_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image():
    rng = np.random.default_rng(0)
    return (rng.random((128, 128, 3)) * 255).astype(np.uint8)


def _hand_rows(pipe, prompt, word):
    """(token index in the templated Qwen call, context row) of ``word``, worked out by hand.

    The chat template is expanded here from the pipeline's system message; the context row
    adds the SigLIP rows and the byT5 rows of the prompt's quoted text (computed directly).
    """
    messages = [{"role": "system", "content": pipe.system_message}, {"role": "user", "content": prompt}]
    ids = pipe.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = ids["input_ids"]
    pieces = pipe.tokenizer.convert_ids_to_tokens(ids)
    (token,) = [i for i, piece in enumerate(pieces) if piece.replace("Ġ", "") == word]
    crop = pipe.prompt_template_encode_start_idx
    quoted = prompt.split('"')[1::2]
    glyph = len(pipe.tokenizer_2(". ".join(f'Text "{q}"' for q in quoted) + ". ")["input_ids"]) if quoted else 0
    n_image = (pipe.image_encoder.config.image_size // pipe.image_encoder.config.patch_size) ** 2
    return token, n_image + glyph + token - crop


def test_hunyuan15_is_the_real_pipeline_with_the_released_crop(hy15_pipe):
    from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Transformer3DModel

    from layerscope.adapters.hunyuan_video15 import HunyuanVideo15Adapter
    from layerscope.adapters.registry import resolve_adapter

    pipe = hy15_pipe
    assert type(pipe) is HunyuanVideo15ImageToVideoPipeline
    assert type(pipe.transformer) is HunyuanVideo15Transformer3DModel
    assert [type(pipe.text_encoder).__name__, type(pipe.tokenizer).__name__] == [
        "Qwen2_5_VLTextModel",
        "Qwen2Tokenizer",
    ]
    assert [type(pipe.image_encoder).__name__, type(pipe.tokenizer_2).__name__] == [
        "SiglipVisionModel",
        "ByT5Tokenizer",
    ]
    adapter = resolve_adapter(pipe)
    assert type(adapter) is HunyuanVideo15Adapter and adapter.name == "hunyuan-video-1.5"
    # the pipeline's hardcoded crop is the template head of this tokenizer, as for the released one
    messages = [{"role": "system", "content": pipe.system_message}, {"role": "user", "content": PROMPT}]
    ids = pipe.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = ids["input_ids"]
    crop = pipe.prompt_template_encode_start_idx
    assert crop == 108
    assert pipe.tokenizer.decode(ids[:crop]).endswith("<|im_start|>user\n")
    assert pipe.tokenizer.decode(ids[crop:]).startswith(PROMPT + "<|im_end|>")
    assert adapter.token_grid(5, 128, 128) == (2, 8, 8) and adapter.spatial_multiple() == 16


def test_hunyuan15_keyword_rows_match_a_hand_expanded_template_call(hy15_pipe):
    """Row r of the context block 0 sees is the refined Qwen state of the keyword's token.

    Checked for a prompt without and with quoted (byT5 glyph) text, which shifts the rows.
    """
    from PIL import Image

    from layerscope.adapters.registry import resolve_adapter

    pipe = hy15_pipe
    adapter = resolve_adapter(pipe)
    transformer = pipe.transformer
    for prompt in (PROMPT, GLYPH_PROMPT):
        expected = {word: _hand_rows(pipe, prompt, word) for word in ("red", "circle")}
        mapped = adapter.map_keywords(prompt, ["red", "circle"])
        assert {m.keyword: list(m.token_indices) for m in mapped} == {w: [r] for w, (_, r) in expected.items()}
        # the Qwen hidden state (layer -3) the pipeline keeps is the hand call's, at token - crop
        with torch.no_grad():
            embeds, mask, _, _ = pipe.encode_prompt(prompt, device="cpu")
            messages = [{"role": "system", "content": pipe.system_message}, {"role": "user", "content": prompt}]
            ids = pipe.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )["input_ids"]
            hidden = pipe.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-3]
        crop = pipe.prompt_template_encode_start_idx
        for token, _ in expected.values():
            torch.testing.assert_close(embeds[0, token - crop], hidden[0, token], rtol=1e-5, atol=1e-5)
        # the transformer's reordering: [image; glyph; prompt] -> our row holds the refined prompt row
        seen: dict = {}

        def refined(module, args, output, seen=seen):
            seen.setdefault("refined", output)  # the first call is the cond branch

        def context(module, args, seen=seen):
            seen.setdefault("context", args[1])

        handles = [
            transformer.context_embedder.register_forward_hook(refined),
            transformer.transformer_blocks[0].register_forward_pre_hook(context),
        ]
        try:
            with torch.no_grad():
                pipe(
                    image=Image.fromarray(_image()),
                    prompt=prompt,
                    num_frames=5,
                    num_inference_steps=1,
                    output_type="latent",
                )
        finally:
            for handle in handles:
                handle.remove()
        cond_type = transformer.cond_type_embed.weight[0]
        for token, row in expected.values():
            torch.testing.assert_close(seen["context"][0, row], seen["refined"][0, token - crop] + cond_type)


def test_hunyuan15_template_mismatch_is_one_line(hy15_pipe):
    from layerscope.adapters.hunyuan_video15 import HunyuanVideo15Adapter
    from layerscope.errors import LayerScopeError

    pipe = hy15_pipe
    saved = pipe.prompt_template_encode_start_idx
    pipe.prompt_template_encode_start_idx = saved - 1
    try:
        with pytest.raises(LayerScopeError, match=f"head is {saved} tokens .* crops {saved - 1}"):
            HunyuanVideo15Adapter(pipe).map_keywords(PROMPT, ["red"])
    finally:
        pipe.prompt_template_encode_start_idx = saved


def _capture(pipe, layers):
    """(visual input of attn, add_v_proj rows) of the given blocks per call, by our own hooks."""
    seen: dict[int, list] = {layer: [] for layer in layers}
    handles = []
    for layer in layers:
        attn = pipe.transformer.transformer_blocks[layer].attn
        current: dict = {}

        def pre(module, args, kwargs, current=current):
            current["z"] = kwargs["hidden_states"][0].detach().clone()

        def values(module, args, output, current=current, layer=layer):
            seen[layer].append((current["z"], output[0].detach().clone()))

        handles += [
            attn.register_forward_pre_hook(pre, with_kwargs=True),
            attn.add_v_proj.register_forward_hook(values),
        ]
    return seen, handles


def test_hunyuan15_maps_match_an_independent_computation(hy15_pipe, tmp_path):
    """cos(mean V_k, z) for two blocks and both guider branches (pred_cond first, then pred_uncond)."""
    import layerscope
    from layerscope.recording import record

    pipe = hy15_pipe
    seen, handles = _capture(pipe, (0, 3))
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
    assert ds.attrs["status"] == "complete" and ds.attrs["adapter"] == "hunyuan-video-1.5"
    assert ds.attrs["hook_calls"] == ds.attrs["hook_calls_expected"] == 4 * 2 * 2
    grid = tuple(ds.attrs["grid"])
    assert grid == (2, 8, 8)
    rows = [[_hand_rows(pipe, PROMPT, word)[1]] for word in ("red", "circle")]
    assert [k["token_indices"] for k in ds.attrs["keywords"]] == rows
    for layer in seen:
        assert len(seen[layer]) == 2 * SIZE["num_inference_steps"]
        for step in range(SIZE["num_inference_steps"]):
            for offset, variable in enumerate(["similarity", "similarity_uncond"]):
                z, values = seen[layer][2 * step + offset]
                keys = torch.stack([values[r].float().mean(0) for r in rows])
                expected = (F.normalize(keys, dim=-1) @ F.normalize(z.float(), dim=-1).T).reshape(-1, *grid)
                got = torch.from_numpy(ds[variable].isel(step=step, layer=layer).values)
                torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not np.allclose(ds["similarity"].values, ds["similarity_uncond"].values)


def test_hunyuan15_attention_probe_is_the_models_masked_joint_softmax(hy15_pipe, tmp_path):
    """The attention map equals SDPA over [visual (RoPE); context] keys, padding masked as the model masks it."""
    from diffusers.models.embeddings import apply_rotary_emb

    import layerscope
    from layerscope.recording import record

    pipe = hy15_pipe
    attn = pipe.transformer.transformer_blocks[2].attn
    store: dict = {}

    def pre(module, args, kwargs):
        if "q" not in store:  # the first call: step 0, cond
            store.update(n=kwargs["hidden_states"].shape[1], rope=kwargs["image_rotary_emb"])
            store["mask"] = kwargs["attention_mask"][0].bool()

    def keep(key):
        return lambda module, args, output: store.setdefault(key, output.detach().clone())

    handles = [
        attn.register_forward_pre_hook(pre, with_kwargs=True),
        attn.norm_q.register_forward_hook(keep("q")),
        attn.norm_k.register_forward_hook(keep("k")),
        attn.norm_added_k.register_forward_hook(keep("text_k")),
    ]
    try:
        common = dict(image=_image(), prompt=PROMPT, keywords=["red", "circle"], dtype="float32", progress=False)
        record(pipe, tmp_path / "att.zarr", probe="attention", **common, **SIZE)
    finally:
        for handle in handles:
            handle.remove()
    ds = layerscope.open_run(tmp_path / "att.zarr")
    rows = [k["token_indices"] for k in ds.attrs["keywords"]]
    n = store["n"]
    assert not store["mask"].all(), "the context has padding rows the softmax must leave out"
    query = apply_rotary_emb(store["q"], store["rope"], sequence_dim=1)
    keys = torch.cat([apply_rotary_emb(store["k"], store["rope"], sequence_dim=1), store["text_k"]], dim=1)
    indicator = torch.zeros(1, keys.shape[1], 1, len(rows))
    for column, tokens in enumerate(rows):
        indicator[0, [n + t for t in tokens], 0, column] = 1.0
    heads = query.shape[2]
    mask = torch.cat([torch.ones(n, dtype=torch.bool), store["mask"]])
    mass = F.scaled_dot_product_attention(
        query.transpose(1, 2),
        keys.transpose(1, 2),
        indicator.expand(1, keys.shape[1], heads, -1).transpose(1, 2),
        attn_mask=mask[None, None, None, :],
    )
    expected = mass[0].mean(0).T.reshape(len(rows), *tuple(ds.attrs["grid"]))
    got = torch.from_numpy(ds["similarity"].isel(step=0, layer=2).values)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_hunyuan15_cli_end_to_end(hy15_dir, tmp_path, capsys):
    """build-tiny (fixture) -> record (CFG, both branches) -> rank -> report; a size the pipeline
    would not produce and Focal Guidance are refused in one line, before any store."""
    import json

    import layerscope
    from layerscope.cli import main

    common = ["--model", str(hy15_dir), "--prompt", PROMPT, "--keywords", "red,circle", *SIZE_ARGS]
    base = tmp_path / "base.zarr"
    assert main(["record", *common, "--guidance", "3", "--branch", "both", "--out", str(base)]) == 0
    ds = layerscope.open_run(base)
    assert ds.attrs["pipeline_class"] == "HunyuanVideo15ImageToVideoPipeline"
    assert [str(b) for b in ds["block"].values] == [f"transformer_blocks.{i}" for i in range(4)]
    assert "similarity_uncond" in ds and ds.sizes["frame_px"] == 5
    ranking = tmp_path / "ranking.json"
    assert main(["rank", str(base), "--method", "bottom-k", "--k", "2", "--out", str(ranking)]) == 0
    assert len(json.loads(ranking.read_text())["weak_layers"]) == 2
    assert main(["report", str(base), "--steps-shown", "1", "--out", str(tmp_path / "report.html")]) == 0
    assert "transformer_blocks.3" in (tmp_path / "report.html").read_text()
    capsys.readouterr()
    for extra, message in (
        (["--width", "192"], "gives 96x144; pass --height 96 --width 144"),
        (["--intervene", "focal-guidance", "--fg-set", "weak_layers=[9]"], "weak layer 9 is out of range"),
    ):
        bad = tmp_path / "bad.zarr"
        assert main(["record", *common, *extra, "--out", str(bad)]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "experimental" not in line]
        assert len(err) == 1 and message in err[0], err
        assert not bad.exists()


@pytest.mark.slow
def test_hunyuan15_bench_generates_through_the_adapter(hy15_dir, tmp_path):
    import imageio.v3 as iio

    from layerscope.cli import main

    assert main(["testbed", "export-bench", "--out", str(tmp_path / "set"), "--scenes", "1"]) == 0
    out = tmp_path / "bench"
    args = ["bench", str(tmp_path / "set" / "prompts.jsonl"), "--model", str(hy15_dir), "--judge", "shapes"]
    assert main([*args, *SIZE_ARGS, "--guidance", "3", "--no-consistency", "--out", str(out)]) == 0
    (video,) = sorted(out.rglob("*.mp4"))
    assert iio.imread(video).shape[:3] == (5, 128, 128)
