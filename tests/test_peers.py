"""LayerScope beside attention-map-diffusers and nnsight (issue #41).

LayerScope's ``attention`` probe and attention-map-diffusers' ``video->text`` maps must be
the same numbers for the same token, layer and step (fp32: within 1e-5), and a hand
computation from the block's own inputs, with the softmax written out and checked against
``F.scaled_dot_product_attention`` and the block's output, decides that both are right.

The definitional points, each checked here:

* Wan's cross-attention passes no mask: the softmax runs over all 512 text keys, the
  padding rows included (their keys are not zero: ``to_k`` has a bias, then ``norm_k``),
  and both tools take it over exactly those keys;
* the I2V image context is a *separate* softmax (``add_k_proj``/``add_v_proj``) summed
  after attention: neither map contains it, and a joint softmax over [image; text] keys
  would give other numbers;
* heads are averaged, a multi-token keyword sums its tokens' columns;
* attention-map-diffusers keeps every denoiser call (cond and uncond, one record each,
  ``denoiser_call_index`` 0 and 1); LayerScope records the cond branch by default, so the
  comparison takes the first call of each step.

The attention-map-diffusers tests need the peers extra (``pip install -e ".[peers]"``)
and are skipped without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers.py"
TEXT_TOKENS = 512
TOLERANCE = 1e-5


def test_peers_benchmark_help_runs():
    result = subprocess.run([sys.executable, str(PEERS), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "attention-map-diffusers" in result.stdout and "--quick" in result.stdout


def _settings(example: dict) -> dict:
    """The shared example at 128x128 and 2 steps (8x8 tokens per latent frame): the fixture stays near 5 s."""
    return {"prompt": example["prompt"], "height": 128, "width": 128, "num_frames": example["num_frames"],
            "num_inference_steps": 2}  # fmt: skip


def _call(pipe, example: dict):
    """The pipeline call ``record`` makes (CFG 5, seed 0), so every run sees the same latents."""
    import torch
    from PIL import Image

    image = Image.fromarray(np.asarray(example["image"])).convert("RGB")
    settings = _settings(example)
    image = image.resize((settings["width"], settings["height"]), Image.Resampling.BICUBIC)
    return pipe(
        image=image,
        generator=torch.Generator(device="cpu").manual_seed(0),
        output_type="np",
        guidance_scale=5.0,
        negative_prompt=None,
        **settings,
    )


def _hand(attn, visual, context, tokens):
    """Per head: q, k, v as diffusers' ``WanAttnProcessor`` forms them; the text softmax written out."""
    import torch

    text = context[:, -TEXT_TOKENS:]
    heads = attn.heads
    q = attn.norm_q(attn.to_q(visual)).unflatten(2, (heads, -1)).transpose(1, 2)  # B, H, N, d
    k = attn.norm_k(attn.to_k(text)).unflatten(2, (heads, -1)).transpose(1, 2)
    v = attn.to_v(text).unflatten(2, (heads, -1)).transpose(1, 2)
    logits = q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5
    probs = torch.softmax(logits, dim=-1)  # B, H, N, 512
    maps = torch.stack([probs[0][:, :, list(t)].sum(-1).mean(0) for t in tokens])  # K, N
    return q, k, v, logits, probs, maps


@pytest.fixture(scope="module")
def three_ways(tiny_pipe, example, tmp_path_factory):
    """The same generation three times: LayerScope ``attention`` (with the blocks' inputs and
    outputs captured by plain hooks), attention-map-diffusers ``video->text``, and nothing."""
    pytest.importorskip("attention_map_diffusers")
    from attention_map_diffusers import AttentionCapture

    from layerscope.recording import trace
    from layerscope.store import open_run

    store = tmp_path_factory.mktemp("peers") / "attention.zarr"
    seen: dict[int, list] = {}
    handles = []
    for index, block in enumerate(tiny_pipe.transformer.blocks):

        def keep(module, args, output, index=index):
            seen.setdefault(index, []).append((args[0].detach(), args[1].detach(), output.detach()))

        handles.append(block.attn2.register_forward_hook(keep))
    try:
        with trace(tiny_pipe, store, probe="attention", dtype="float32", keywords=example["keywords"],
                   **_settings(example)) as rec:  # fmt: skip
            ours_video = _call(tiny_pipe, example).frames
    finally:
        for handle in handles:
            handle.remove()
    tokens = [list(k.token_indices) for k in rec.keywords]
    ours = open_run(store)["similarity"].transpose("step", "layer", "keyword", "frame", "y", "x").values

    with AttentionCapture(tiny_pipe, relations="video->text", layers="all", timesteps="all") as capture:
        amd_video = _call(tiny_pipe, example).frames
    records = capture.compute().records
    plain_video = _call(tiny_pipe, example).frames
    prompt_rows = len(tiny_pipe.tokenizer(example["prompt"]).input_ids)  # the rest of the 512 rows are padding
    return {
        "ours": ours,
        "records": records,
        "seen": seen,
        "tokens": tokens,
        "prompt_rows": prompt_rows,
        "videos": (plain_video, ours_video, amd_video),
        "grid": ours.shape[-3:],
    }


def _amd_map(record, tokens, grid):
    data = record.data[0, 0].float().numpy()  # (N, 512): head mean over the 512 text keys
    return np.stack([data[:, t].sum(-1).reshape(grid) for t in tokens])


def test_attention_probe_equals_attention_map_diffusers(three_ways, tiny_pipe, example):
    ours, records, tokens = three_ways["ours"], three_ways["records"], three_ways["tokens"]
    steps, layers = _settings(example)["num_inference_steps"], len(tiny_pipe.transformer.blocks)
    # every denoiser call is a record: cond and uncond (CFG 5) of every layer and step
    assert len(records) == steps * layers * 2
    assert {r.metadata["denoiser_call_index"] for r in records} == {0, 1}
    assert all(r.relation == "video->text" and r.k_range == (0, TEXT_TOKENS) for r in records)
    worst = 0.0
    compared = 0
    for record in records:
        if record.metadata["denoiser_call_index"] != 0:
            continue
        layer = int(record.layer_id.split(".")[2])
        grid = (record.q_shape.frames, record.q_shape.height, record.q_shape.width)
        assert grid == three_ways["grid"]
        theirs = _amd_map(record, tokens, grid)
        worst = max(worst, float(np.abs(ours[record.step_index, layer] - theirs).max()))
        compared += 1
    assert compared == steps * layers
    assert worst <= TOLERANCE, f"LayerScope attention vs attention-map-diffusers video->text: {worst:.3e}"
    # neither tool changes the generation
    plain, with_ours, with_theirs = three_ways["videos"]
    assert np.array_equal(plain, with_ours) and np.array_equal(plain, with_theirs)


@pytest.mark.parametrize("layer", [0, 3, 7])
def test_hand_computation_decides(three_ways, tiny_pipe, layer):
    """Both maps equal the softmax written out from the block's inputs, and that softmax is the model's."""
    import torch

    calls = three_ways["seen"][layer]  # cond, uncond per step (the trace records cond only)
    steps = three_ways["ours"].shape[0]
    assert len(calls) == 2 * steps
    attn = tiny_pipe.transformer.blocks[layer].attn2
    with torch.no_grad():
        for step in range(steps):
            _check_call(three_ways, attn, layer, step, *calls[2 * step])


def _check_call(three_ways, attn, layer, step, visual, context, output):
    import torch
    import torch.nn.functional as F

    tokens, grid = three_ways["tokens"], three_ways["grid"]
    q, k, v, logits, probs, maps = _hand(attn, visual, context, tokens)
    # the explicit softmax is what SDPA computes (no hidden mask, scale 1/sqrt(d)): equal in float64 ...
    sdpa64 = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert torch.allclose(probs @ v.double(), sdpa64, rtol=0, atol=1e-12 * float(sdpa64.abs().max()))
    sdpa = F.scaled_dot_product_attention(q, k, v)  # the float32 call the model makes
    # ... and the block's output is that text attention plus the separate image-context attention
    image = context[:, :-TEXT_TOKENS]
    k_img = attn.norm_added_k(attn.add_k_proj(image)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
    v_img = attn.add_v_proj(image).unflatten(2, (attn.heads, -1)).transpose(1, 2)
    attended = sdpa + F.scaled_dot_product_attention(q, k_img, v_img)
    rebuilt = attn.to_out[1](attn.to_out[0](attended.transpose(1, 2).flatten(2)))
    assert torch.allclose(rebuilt, output, atol=1e-5, rtol=1e-5)

    hand = maps.float().reshape(len(tokens), *grid).numpy()
    record = next(
        r
        for r in three_ways["records"]
        if r.layer_id == f"transformer.blocks.{layer}.attn2"
        and r.step_index == step
        and r.metadata["denoiser_call_index"] == 0
    )
    assert np.abs(three_ways["ours"][step, layer] - hand).max() <= TOLERANCE
    assert np.abs(_amd_map(record, tokens, grid) - hand).max() <= TOLERANCE

    # the definitions the three share, and the alternatives they reject:
    # the padding rows take mass (Wan masks nothing), so a map that masked them would differ
    assert float(probs[..., three_ways["prompt_rows"] :].sum(-1).mean()) > 1e-3
    # a joint softmax over [image; text] keys is not what the model computes
    image_logits = q.double() @ k_img.double().transpose(-1, -2) / q.shape[-1] ** 0.5
    joint = torch.softmax(torch.cat([image_logits, logits], dim=-1), dim=-1)[..., image.shape[1] :]
    joint_map = torch.stack([joint[0][:, :, t].sum(-1).mean(0) for t in tokens])
    assert float((joint_map - maps).abs().max()) > 100 * TOLERANCE


@pytest.mark.slow
def test_peers_benchmark_smoke(tmp_path):
    """Every tool at tiny sizes through cases a and c, the agreement written, one RSS child."""
    pytest.importorskip("attention_map_diffusers")
    pytest.importorskip("nnsight")
    out = tmp_path / "peers.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LAYERSCOPE_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, str(PEERS), "--smoke", "--cases", "a,c", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    for case in ("a", "c"):
        agreement = data[case]["agreement"]
        assert agreement["ls_attention_vs_amd"] <= TOLERANCE
        assert agreement["ls_attention_vs_hand"] <= TOLERANCE and agreement["amd_vs_hand"] <= TOLERANCE
        assert agreement["ls_hidden_vs_eq10_from_nnsight"] <= TOLERANCE
        assert agreement["hand_rebuilt_attn2_output_vs_model"] <= TOLERANCE
        assert set(data[case]["ratio"]) == {"ls-attention", "ls-hidden", "amd", "nnsight"}
        assert all(data[case]["same_layer_order"].values())
        check = data[case]["formula_check"]
        assert check["amd_predicted"] == check["amd_measured"]
    assert "| tool | generation | ratio to plain |" in result.stdout
    child = subprocess.run(
        [sys.executable, str(PEERS), "--smoke", "--child", "stack:amd:2"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    run = json.loads(child.stdout.strip().splitlines()[-1])
    assert run["steps"] == 2 and run["peak_growth_to_table_bytes"] >= 0
