"""HunyuanVideo-I2V (MMDiT) on the tiny offline pipeline: keyword rows, maps, branches, FG.

Every expectation is computed here independently of the adapter: keyword rows from a
hand-expanded LLaVA call, maps from tensors captured by the test's own hooks, Eq. 9's
residual by re-running the block on ``z + d`` with FG removed.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

#: one worker builds this module's tiny pipelines once (make test runs xdist with --dist loadgroup)
pytestmark = pytest.mark.xdist_group("hunyuan")


PROMPT = "the red circle moves to the left"
SIZE = dict(height=64, width=64, num_frames=9, num_inference_steps=2)


@pytest.fixture(scope="module", params=["token_replace", "latent_concat"])
def hunyuan(request, tmp_path_factory):
    from layerscope.loading import load_pipeline
    from layerscope_testbed.hunyuan_video import save_tiny_pipeline

    folder = save_tiny_pipeline(tmp_path_factory.mktemp("hunyuan") / request.param, request.param)
    pipe, _ = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    return folder, pipe


def _image():
    rng = np.random.default_rng(0)
    return (rng.random((64, 64, 3)) * 255).astype(np.uint8)


def test_hunyuan_keyword_rows_match_the_text_encoder(hunyuan):
    """Row n_img + (i - crop_start) of the pipeline's prompt embeds is LLaVA's state of token i."""
    from PIL import Image

    from layerscope.adapters.registry import resolve_adapter

    _, pipe = hunyuan
    adapter = resolve_adapter(pipe)
    template = adapter.prompt_template()
    tokenizer = pipe.tokenizer
    ids = tokenizer(template["template"].format(PROMPT))["input_ids"]
    assert ids[template["image_emb_start"]] == pipe.text_encoder.config.image_token_index
    assert tokenizer.convert_ids_to_tokens(ids[template["crop_start"]]).replace("Ġ", "") == "the"
    # Llama-3-shaped: diffusers' crop drops exactly <|eot_id|><|start_header_id|>assistant<|end_header_id|>
    pieces = tokenizer.convert_ids_to_tokens(ids)
    end = max(i for i, p in enumerate(pieces) if p == "<|end_header_id|>")
    assert pieces[end - 3 : end + 1] == ["<|eot_id|>", "<|start_header_id|>", "assistant", "<|end_header_id|>"]
    mapped = adapter.map_keywords(PROMPT, ["red", "circle"])
    image = Image.fromarray(_image())
    interleave = adapter.image_embed_interleave()
    with torch.no_grad():
        embeds, _, _ = pipe.encode_prompt(
            image=image,
            prompt=PROMPT,
            prompt_template=template,
            image_embed_interleave=interleave,
            device="cpu",
            max_sequence_length=256,
        )
        # the same call expanded by hand: <image> -> image_emb_len copies
        n = template["image_emb_len"]
        at = template["image_emb_start"]
        expanded = ids[:at] + [ids[at]] * n + ids[at + 1 :]
        pixels = pipe.image_processor(image, return_tensors="pt").pixel_values
        hidden = pipe.text_encoder(
            input_ids=torch.tensor([expanded]), pixel_values=pixels, output_hidden_states=True
        ).hidden_states[-3][0]
    for item, word in zip(mapped, ["red", "circle"]):
        (row,) = item.token_indices
        token = next(i for i, t in enumerate(tokenizer.convert_ids_to_tokens(ids)) if t.replace("Ġ", "") == word)
        assert row == adapter.image_rows() + token - template["crop_start"]
        torch.testing.assert_close(embeds[0, row], hidden[token + n - 1], rtol=1e-5, atol=1e-5)


def test_hunyuan_template_mismatch_is_one_line(hunyuan):
    from layerscope.adapters.hunyuan_video import HunyuanVideoAdapter
    from layerscope.errors import LayerScopeError

    _, pipe = hunyuan
    config = pipe.text_encoder.config
    saved = config.image_token_index
    config.image_token_index = saved + 1
    try:
        with pytest.raises(LayerScopeError, match="image_token_index"):
            HunyuanVideoAdapter(pipe).prompt_template()
    finally:
        config.image_token_index = saved


def _capture(pipe, layers_blocks):
    """Record (visual input, text values) of the given attention modules per call, by our own hooks."""
    seen: dict[str, list] = {name: [] for name, _ in layers_blocks}
    handles = []
    for name, block in layers_blocks:
        attn = block.attn
        value_module = attn.add_v_proj if name.startswith("transformer_blocks") else attn.to_v
        current: dict = {}

        def pre(module, args, kwargs, current=current):
            current["z"] = kwargs["hidden_states"][0].detach().clone()

        def values(module, args, output, current=current, name=name):
            rows = output[0].detach().clone()
            if not name.startswith("transformer_blocks"):
                rows = rows[current["z"].shape[0] :]
            seen[name].append((current["z"], rows))

        handles.append(attn.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(value_module.register_forward_hook(values))
    return seen, handles


@pytest.mark.parametrize("true_cfg", [1.0, 3.0])
def test_hunyuan_maps_match_an_independent_computation(hunyuan, tmp_path, true_cfg):
    """cos(V_k, z) for a double and a single block, both branches under true CFG (cond first)."""
    import layerscope
    from layerscope.adapters.registry import resolve_adapter
    from layerscope.recording import record

    _, pipe = hunyuan
    adapter = resolve_adapter(pipe)
    transformer = pipe.transformer
    pairs = [
        ("transformer_blocks.1", transformer.transformer_blocks[1]),
        ("single_transformer_blocks.2", transformer.single_transformer_blocks[2]),
    ]
    seen, handles = _capture(pipe, pairs)
    branch = "both" if true_cfg > 1 else "cond"
    try:
        record(
            pipe,
            tmp_path / "run.zarr",
            image=_image(),
            prompt=PROMPT,
            keywords=["red", "circle"],
            dtype="float32",
            progress=False,
            true_cfg_scale=true_cfg,
            branch=branch,
            **SIZE,
        )
    finally:
        for handle in handles:
            handle.remove()
    ds = layerscope.open_run(tmp_path / "run.zarr")
    assert ds.attrs["status"] == "complete"
    assert list(ds["stream"].values[:2]) == ["double", "double"]
    rows = [k["token_indices"] for k in ds.attrs["keywords"]]
    grid = tuple(ds.attrs["grid"])
    calls_per_step = 2 if true_cfg > 1 else 1
    for name, _ in pairs:
        layer = [str(b) for b in ds["block"].values].index(name)
        assert len(seen[name]) == SIZE["num_inference_steps"] * calls_per_step
        for step in range(SIZE["num_inference_steps"]):
            for offset, variable in enumerate(["similarity", "similarity_uncond"][:calls_per_step]):
                z, values = seen[name][step * calls_per_step + offset]
                keys = torch.stack([values[r].float().mean(0) for r in rows])
                expected = (F.normalize(keys, dim=-1) @ F.normalize(z.float(), dim=-1).T).reshape(-1, *grid)
                got = torch.from_numpy(ds[variable].isel(step=step, layer=layer).values)
                torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert adapter.video_frames(9) == ds.sizes["frame_px"]


def _fg(folder, **settings):
    from fg_intervene.plugin import create

    return create(settings={"weak_layers": [3], "keywords": ["red"], **settings}, clip=folder / "clip")


def _run_weak_block(hunyuan, intervention, strong=()):
    """One denoising step with ``intervention``; capture the weak block (layer 3 = single block 1).

    Returns its input args, its visual output, the ``to_v`` rows of the image tokens (read by a
    hook that runs before FG's), and (z, text values) of the ``strong`` blocks.
    """
    from PIL import Image

    from layerscope.adapters.registry import resolve_adapter
    from layerscope.interventions import RunInputs

    folder, pipe = hunyuan
    adapter = resolve_adapter(pipe)
    grid = adapter.token_grid(9, 64, 64)
    image = Image.fromarray(_image())
    inputs = RunInputs(
        pipe=pipe,
        adapter=adapter,
        prompt=PROMPT,
        image=image,
        height=64,
        width=64,
        num_frames=9,
        grid=grid,
        model_dir=folder,
    )
    block = pipe.transformer.single_transformer_blocks[1]
    captured = {}

    def keep(module, args, kwargs):
        captured["args"] = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)

    def keep_out(module, args, output):
        captured["out"] = output[0].clone()

    def keep_values(module, args, output):
        n = captured["args"][0].shape[1]
        captured["image_values"] = output[0, n : n + adapter.image_rows()].clone()

    seen, hooks = _capture(pipe, list(strong))
    hooks += [
        block.register_forward_pre_hook(keep, with_kwargs=True),
        block.attn.to_v.register_forward_hook(keep_values),
    ]
    handle = intervention.apply(inputs)
    hooks.append(block.register_forward_hook(keep_out))
    settings = type("C", (), {"guidance_scale": 6.0, "negative_prompt": None})()
    try:
        with torch.no_grad():
            pipe(
                image=image,
                prompt=PROMPT,
                output_type="latent",
                generator=torch.Generator().manual_seed(0),
                height=64,
                width=64,
                num_frames=9,
                num_inference_steps=1,
                **adapter.call_kwargs(settings),
            )
    finally:
        handle.remove()
        for hook in hooks:
            hook.remove()
    return adapter, block, grid, captured, seen


def test_hunyuan_fg_latent_injection_by_hand(hunyuan):
    """Eq. 9 on z_ref: the weak block computes (z + d) + update(z + d), d only on frame-0 rows in R_k."""
    from fg_intervene import fsg

    intervention = _fg(hunyuan[0], lambda_txt=0.0, lambda_cache=0.0, lambda_lat=2.0, attention_cache=False)
    adapter, block, grid, captured, _ = _run_weak_block(hunyuan, intervention)
    args = captured["args"]
    guidance = intervention.guidance
    with torch.no_grad():
        # V_k^vis from the to_v rows the block itself computed for the image tokens
        values = guidance.image_row_weights @ captured["image_values"].float()
        delta = fsg.inject_reference_frame(torch.zeros_like(args[0]), guidance.region, values, 2.0)
        moved = delta.abs().sum(-1)[0] > 0
        first = grid[1] * grid[2]
        assert moved[:first].any() and not moved[first:].any()
        inside = (guidance.region.sum(0) > 0).reshape(-1)
        assert torch.equal(moved[:first], inside)
        expected = block(args[0] + delta, *args[1:])[0]  # FG removed: plain block on z + d
    torch.testing.assert_close(captured["out"], expected, rtol=1e-5, atol=1e-5)


def test_hunyuan_attention_cache_by_hand(hunyuan):
    """Eq. 11-13: the mean of strong layers 0-2's maps, thresholded, times V_k^vis, on every visual row."""
    intervention = _fg(hunyuan[0], fsg=False, lambda_cache=0.7, tau_cache=0.05)
    transformer = hunyuan[1].transformer
    strong = [
        ("transformer_blocks.0", transformer.transformer_blocks[0]),
        ("transformer_blocks.1", transformer.transformer_blocks[1]),
        ("single_transformer_blocks.0", transformer.single_transformer_blocks[0]),
    ]
    adapter, block, grid, captured, seen = _run_weak_block(hunyuan, intervention, strong)
    guidance = intervention.guidance
    rows = guidance.token_indices
    maps = []
    for name, _ in strong:
        ((z, text),) = seen[name]
        keys = torch.stack([text[r].float().mean(0) for r in rows])
        maps.append((F.normalize(keys, dim=-1) @ F.normalize(z.float(), dim=-1).T).reshape(-1, *grid))
    cache = sum(maps) / 3
    kept = torch.where(cache > 0.05, cache, torch.zeros_like(cache))
    assert 0 < int((kept > 0).sum()) < kept.numel()  # the threshold bites
    values = guidance.image_row_weights @ captured["image_values"].float()
    delta = 0.7 * (kept.reshape(len(rows), -1).T @ values)[None]
    args = captured["args"]
    with torch.no_grad():
        expected = block(args[0] + delta, *args[1:])[0]
    torch.testing.assert_close(captured["out"], expected, rtol=1e-5, atol=1e-5)


def test_hunyuan_fg_with_zero_strengths_equals_baseline(hunyuan, tmp_path):
    from layerscope.recording import record

    folder, pipe = hunyuan
    common = dict(image=_image(), prompt=PROMPT, keywords=["red", "circle"], dtype="float32", progress=False, **SIZE)
    base = record(pipe, tmp_path / "base.zarr", **common)
    zero = _fg(folder, lambda_txt=0.0, lambda_lat=0.0, lambda_cache=0.0)
    guided = record(pipe, tmp_path / "zero.zarr", intervention=zero, **common)
    assert np.array_equal(base.video, guided.video)
    strong = record(pipe, tmp_path / "fg.zarr", intervention=_fg(folder, lambda_lat=5.0, lambda_txt=5.0), **common)
    import layerscope

    a, b = layerscope.open_run(tmp_path / "base.zarr"), layerscope.open_run(tmp_path / "fg.zarr")
    # intrinsic maps of layers before the weak block are untouched at step 0 (no self-credit)
    np.testing.assert_array_equal(
        a.similarity.isel(step=0, layer=slice(0, 3)), b.similarity.isel(step=0, layer=slice(0, 3))
    )
    assert np.isnan(b.similarity_injected.isel(layer=0)).all()
    assert not np.array_equal(base.video, strong.video)


@pytest.mark.parametrize(
    "guidance, condition",
    [
        ("true-cfg", "token_replace"),
        ("embedded", "latent_concat"),
        # the other two pairings add no code path (condition and guidance are independent)
        pytest.param("embedded", "token_replace", marks=pytest.mark.slow),
        pytest.param("true-cfg", "latent_concat", marks=pytest.mark.slow),
    ],
)
def test_hunyuan_cli_end_to_end(tmp_path, capsys, condition, guidance):
    """build-tiny -> record -> rank --stream single -> record --intervene -> report --compare."""
    import json

    import layerscope
    from layerscope.cli import main

    model = tmp_path / condition
    build = ["testbed", "build-tiny", "--family", "hunyuan-video-i2v", "--condition-type", condition]
    assert main([*build, "--out", str(model)]) == 0
    mode = ["--guidance", "6"] if guidance == "embedded" else ["--true-cfg", "3", "--branch", "both"]
    size = ["--height", "64", "--width", "64", "--frames", "9", "--steps", "2", "--quiet"]
    common = ["--model", str(model), "--prompt", PROMPT, "--keywords", "red,circle", *size, *mode]
    base, guided = tmp_path / "base.zarr", tmp_path / "fg.zarr"
    assert main(["record", *common, "--out", str(base)]) == 0
    ds = layerscope.open_run(base)
    calls = 2 if guidance == "true-cfg" else 1
    assert ds.attrs["hook_calls"] == ds.attrs["hook_calls_expected"] == 6 * 2 * calls
    assert ("similarity_uncond" in ds) == (guidance == "true-cfg")
    ranking = tmp_path / "ranking.json"
    rank = ["rank", str(base), "--stream", "single", "--splits", "10", "--bootstrap", "100"]
    assert main([*rank, "--out", str(ranking)]) == 0
    data = json.loads(ranking.read_text())
    assert [row["block"] for row in data["layers"]] == [f"single_transformer_blocks.{i}" for i in range(4)]
    assert data["params"]["stream"] == "single"
    fg = ["--intervene", "focal-guidance", "--fg-set", "weak_layers=[3,4]"]
    assert main(["record", *common, *fg, "--out", str(guided)]) == 0
    assert main(["report", str(base), "--compare", str(guided), "--out", str(tmp_path / "compare.html")]) == 0
    page = (tmp_path / "compare.html").read_text()
    assert "single_transformer_blocks.3" in page
    # the role table names the guided layers 3-4 as touched and layers 0-2 as upstream
    text = re.sub(r"<[^>]+>", " ", page)
    assert re.search(r"touched by the intervention\s+3,\s*4\b", text)
    assert re.search(r"upstream \(before the first touched layer\)\s+0,\s*1,\s*2\b", text)
    capsys.readouterr()
    bad = ["--intervene", "focal-guidance", "--fg-set", "weak_layers=[1]"]
    assert main(["record", *common, *bad, "--out", str(tmp_path / "bad.zarr")]) == 2
    assert "not a single-stream block" in capsys.readouterr().err
    assert not (tmp_path / "bad.zarr").exists()


def _save_transformers_clip(directory, image_size=112, patch=14):
    """A tiny transformers CLIPModel with a hand-written BPE vocabulary (every word one piece)."""
    import json

    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    words = sorted(set(PROMPT.split()) | {"moves"})
    vocab, merges = {}, []
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    for word in words:
        piece = word[0]
        for i, ch in enumerate(word[1:], start=1):
            nxt = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append(f"{piece} {nxt}")
            piece += nxt
            vocab.setdefault(piece, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    directory.mkdir(parents=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def test_hunyuan_fg_with_a_transformers_clip(hunyuan, tmp_path):
    """--clip may be a transformers CLIPModel folder: its own grid (7x7 here) is resampled onto the rows."""
    import layerscope
    from fg_intervene.plugin import create
    from layerscope.clip import TransformersClip, image_patch_features, load_clip, text_token_features
    from layerscope.recording import record

    folder, pipe = hunyuan
    clip_dir = _save_transformers_clip(tmp_path / "hf-clip", image_size=98, patch=14)
    clip = load_clip(clip_dir)
    assert isinstance(clip, TransformersClip)
    features, pieces = text_token_features(clip, PROMPT)
    assert pieces == [w + "</w>" for w in PROMPT.split()] and features.shape == (len(pieces), 16)
    tokens, joint = image_patch_features(clip, torch.zeros(1, 3, 98, 98))
    assert tokens.shape == (49, 32) and joint.shape == (49, 16)
    fg = create(settings={"weak_layers": [4], "keywords": ["circle"]}, clip=clip_dir)
    record(
        pipe,
        tmp_path / "fg.zarr",
        image=_image(),
        prompt=PROMPT,
        keywords=["red", "circle"],
        dtype="float32",
        progress=False,
        intervention=fg,
        **SIZE,
    )
    attrs = layerscope.open_run(tmp_path / "fg.zarr").attrs
    assert attrs["intervention"]["selected_keywords"] == ["circle"]
    assert attrs["intervention"]["clip"] == str(clip_dir)
    assert fg.guidance.keyword_sims.shape == (1, 49)
    assert fg.guidance.image_row_weights.shape == (1, fg.guidance.image_row_weights.shape[1])
    torch.testing.assert_close(fg.guidance.image_row_weights.sum(-1), torch.ones(1))


def test_hunyuan_tiny_model_declares_small_record_defaults(tmp_path):
    """A bare `record --model DIR` on the tiny pipeline uses its declared CPU-sized defaults."""
    import layerscope
    from layerscope.cli import main

    model = tmp_path / "tiny"
    assert main(["testbed", "build-tiny", "--family", "hunyuan-video-i2v", "--out", str(model)]) == 0
    assert main(["record", "--model", str(model), "--out", str(tmp_path / "run.zarr"), "--quiet"]) == 0
    attrs = layerscope.open_run(tmp_path / "run.zarr").attrs
    assert (attrs["num_inference_steps"], attrs["num_frames"], attrs["height"], attrs["width"]) == (4, 9, 64, 64)
    assert attrs["weights"] == "random" and attrs["pipeline_class"] == "HunyuanVideoImageToVideoPipeline"


def test_hunyuan_attention_probe_is_the_models_joint_softmax(hunyuan, tmp_path):
    """The attention map equals SDPA over [visual (RoPE); text] keys with a keyword-indicator value."""
    from diffusers.models.embeddings import apply_rotary_emb

    import layerscope
    from layerscope.recording import record

    _, pipe = hunyuan
    transformer = pipe.transformer
    blocks = {
        "transformer_blocks.0": transformer.transformer_blocks[0],
        "single_transformer_blocks.1": transformer.single_transformer_blocks[1],
    }
    seen: dict[str, dict] = {name: {} for name in blocks}
    handles = []
    for name, block in blocks.items():
        attn, store = block.attn, seen[name]

        def pre(module, args, kwargs, store=store):
            if "q" not in store:  # first call = step 0, cond
                store.update(
                    n=kwargs["hidden_states"].shape[1],
                    rope=kwargs["image_rotary_emb"],
                    mask=kwargs["attention_mask"].reshape(-1),
                )

        def keep(key, store=store):
            return lambda module, args, output: store.setdefault(key, output.detach().clone())

        handles += [
            attn.register_forward_pre_hook(pre, with_kwargs=True),
            attn.norm_q.register_forward_hook(keep("q")),
            attn.norm_k.register_forward_hook(keep("k")),
        ]
        if attn.norm_added_k is not None:
            handles.append(attn.norm_added_k.register_forward_hook(keep("text_k")))
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
            **SIZE,
        )
    finally:
        for handle in handles:
            handle.remove()
    ds = layerscope.open_run(tmp_path / "att.zarr")
    rows = [k["token_indices"] for k in ds.attrs["keywords"]]
    grid = tuple(ds.attrs["grid"])
    for name, store in seen.items():
        n = store["n"]
        q, k = store["q"], store["k"]  # (1, S, H, d)
        if "text_k" in store:
            visual_q, visual_k, text_k = q, k, store["text_k"]
        else:
            visual_q, visual_k, text_k = q[:, :n], k[:, :n], k[:, n:]
        visual_q = apply_rotary_emb(visual_q, store["rope"], sequence_dim=1)
        visual_k = apply_rotary_emb(visual_k, store["rope"], sequence_dim=1)
        keys = torch.cat([visual_k, text_k], dim=1)
        indicator = torch.zeros(1, keys.shape[1], 1, len(rows))
        for column, tokens in enumerate(rows):
            indicator[0, [n + t for t in tokens], 0, column] = 1.0
        heads = q.shape[2]
        mass = F.scaled_dot_product_attention(
            visual_q.transpose(1, 2),
            keys.transpose(1, 2),
            indicator.expand(1, keys.shape[1], heads, -1).transpose(1, 2),
            attn_mask=store["mask"][None, None, None, :],
        )  # (1, H, N, K)
        expected = mass[0].mean(0).T.reshape(len(rows), *grid)
        layer = [str(b) for b in ds["block"].values].index(name)
        got = torch.from_numpy(ds["similarity"].isel(step=0, layer=layer).values)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        assert float(got.sum()) > 0


def test_hunyuan_bench_generates_through_the_adapter(tmp_path):
    """`layerscope bench` on a HunyuanVideo pipeline: the family's templated prompt and guidance reach it."""
    import imageio.v3 as iio

    from layerscope.cli import main

    model = tmp_path / "tiny"
    assert main(["testbed", "build-tiny", "--family", "hunyuan-video-i2v", "--out", str(model)]) == 0
    assert main(["testbed", "export-bench", "--out", str(tmp_path / "set"), "--scenes", "2"]) == 0
    size = ["--height", "64", "--width", "64", "--frames", "9", "--steps", "2", "--quiet", "--no-consistency"]
    out = tmp_path / "bench"
    args = ["bench", str(tmp_path / "set" / "prompts.jsonl"), "--model", str(model), "--judge", "shapes", *size]
    assert main([*args, "--true-cfg", "2", "--out", str(out)]) == 0
    videos = sorted(out.rglob("*.mp4"))
    assert len(videos) == 2
    assert iio.imread(videos[0]).shape[:3] == (9, 64, 64)


def test_hunyuan_contrastive_probe_uses_the_templated_rows_and_influence_is_refused(hunyuan, tmp_path):
    import layerscope
    from layerscope.adapters.registry import resolve_adapter
    from layerscope.recording import RecordError, record

    _, pipe = hunyuan
    adapter = resolve_adapter(pipe)
    keywords = adapter.map_keywords(PROMPT, ["red", "circle"])
    reference = adapter.reference_tokens(PROMPT, keywords)
    keyword_rows = {i for k in keywords for i in k.token_indices}
    # the prompt's other words ("the", "moves", "to", "left"), shifted like the keywords
    assert len(reference) >= 4 and not set(reference) & keyword_rows
    assert min(reference) >= adapter.image_rows() and max(reference) < adapter.text_sequence_length()
    common = dict(image=_image(), prompt=PROMPT, keywords=["red", "circle"], dtype="float32", progress=False, **SIZE)
    record(pipe, tmp_path / "c.zarr", probe="contrastive", **common)
    maps = layerscope.open_run(tmp_path / "c.zarr")["similarity"].values
    assert np.isfinite(maps).all() and np.abs(maps).max() > 1e-4
    with pytest.raises(RecordError, match="cannot rebuild"):
        record(pipe, tmp_path / "i.zarr", probe="influence", **common)
    assert not (tmp_path / "i.zarr").exists()
