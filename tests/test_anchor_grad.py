"""Post-training with anchors that learn: gradients reach W_v^vis through Eq. 8, 9 and 13.

The check is against the loss itself, not against FG's code: the autograd derivative of a
guided forward's loss along a direction in a weak layer's ``attn2.add_v_proj`` weight must
equal the central finite difference of that loss (the guided forward computes V_k^vis from
the current weights either way).  With ``anchor_gradients=False`` (``--freeze-anchors``)
the anchor path is cut, so autograd misses part of the true derivative.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from fg_intervene.plugin import create
from layerscope.adapters.registry import resolve_adapter
from layerscope.interventions import RunInputs

WEAK = [3, 4]


@pytest.fixture(scope="module")
def fresh_pipe(model_dir):
    from layerscope.loading import load_pipeline

    pipe, _ = load_pipeline(model_dir)
    return pipe


def _guided_loss(pipe, example, model_dir, **settings):
    """A function loss() of one guided, cond-branch forward of the tiny Wan transformer."""
    adapter = resolve_adapter(pipe)
    image = Image.fromarray(example["image"]).resize((example["width"], example["height"]))
    grid = adapter.token_grid(example["num_frames"], example["height"], example["width"])
    inputs = RunInputs(pipe, adapter, example["prompt"], image, 256, 256, example["num_frames"], grid)
    fg = create(
        settings={"weak_layers": WEAK, "keywords": ["red", "circle"], "lambda_txt": 2.0, "lambda_lat": 2.0, **settings},
        clip=model_dir / "clip",
    )
    generator = torch.Generator().manual_seed(0)
    frames = (example["num_frames"] - 1) // 4 + 1
    with torch.no_grad():
        call = {
            "hidden_states": torch.randn(1, 20, frames, 32, 32, generator=generator),
            "timestep": torch.tensor([600.0]),
            "encoder_hidden_states": pipe.encode_prompt(example["prompt"], do_classifier_free_guidance=False)[0],
            "encoder_hidden_states_image": pipe.encode_image(image, device=torch.device("cpu")),
            "return_dict": False,
        }
    target = torch.randn(1, pipe.transformer.config.out_channels, frames, 32, 32, generator=generator)

    def loss() -> torch.Tensor:
        handle = fg.apply(inputs)
        try:
            with pipe.transformer.cache_context("cond"):
                return (pipe.transformer(**call)[0] - target).pow(2).mean()
        finally:
            handle.remove()

    return loss


@pytest.mark.parametrize("learn", [True, False])
def test_anchor_grad_matches_the_finite_difference_only_when_anchors_learn(fresh_pipe, example, model_dir, learn):
    pipe = fresh_pipe
    loss = _guided_loss(pipe, example, model_dir, anchor_gradients=learn)
    weight = pipe.transformer.blocks[WEAK[1]].attn2.add_v_proj.weight
    weight.requires_grad_(True)
    try:
        pipe.transformer.zero_grad(set_to_none=True)
        loss().backward()
        direction = torch.randn(weight.shape, generator=torch.Generator().manual_seed(1))
        direction *= weight.detach().norm() / direction.norm()
        analytic = float((weight.grad * direction).sum())
        eps = 1e-2
        original = weight.detach().clone()
        values = []
        with torch.no_grad():
            for sign in (1, -1):
                weight.copy_(original + sign * eps * direction)
                values.append(float(loss()))
            weight.copy_(original)
        numeric = (values[0] - values[1]) / (2 * eps)
    finally:
        weight.requires_grad_(False)
        weight.grad = None
    print(f"learn={learn} analytic={analytic:.6g} numeric={numeric:.6g}")
    if learn:
        assert analytic == pytest.approx(numeric, rel=0.02)
    else:
        assert abs(analytic - numeric) > 0.1 * abs(numeric)


def test_freeze_anchors_reaches_the_intervention_and_needs_fg(tmp_path, capsys):
    from layerscope.cli import main

    small = ["--model", "default", "--frames", "5", "--height", "128", "--width", "128", "--quiet", "--steps", "1"]
    out = tmp_path / "frozen"
    assert main(["finetune", "--data", "shapes:1", "--out", str(out), "--layers", "2", *small, "--freeze-anchors"]) == 0
    import json

    record = json.loads((out / "layerscope_finetune.json").read_text())
    assert record["intervention"]["anchor_gradients"] is False
    argv = ["finetune", "--data", "shapes:1", "--out", str(tmp_path / "x"), "--layers", "2", *small]
    assert main([*argv, "--no-fg", "--freeze-anchors"]) == 2
    assert "--freeze-anchors" in capsys.readouterr().err
