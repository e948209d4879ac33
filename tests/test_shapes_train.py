"""The training recipe's data helpers: shape masks, shape-centred crops, the collapse guard."""

from __future__ import annotations

import json

import numpy as np
import pytest

from layerscope_testbed.shapes import render_video, sample_scenes
from layerscope_testbed.shapes.train import _shape_crop_origin, reconstruction_check, shape_mask


@pytest.fixture(scope="module")
def videos():
    scenes = sample_scenes(6, split="train", seed=3)
    return np.stack([render_video(s, num_frames=5, height=64, width=64) for s in scenes])


@pytest.fixture(scope="module")
def tiny_parent(tmp_path_factory):
    """One tiny from-scratch model for every continued-training test to start from.

    Why shared: four tests need the same parent (2 scenes, 2 blocks, one step a stage) and
    only read it; training it once saves three trainings of the default suite's time.
    """
    from layerscope_testbed.shapes.train import TrainConfig, train

    steps = {"vae_frames": 1, "vae_clips": 1, "clip": 1, "dit": 1}
    return train(
        TrainConfig(out=str(tmp_path_factory.mktemp("tiny") / "parent"), train_scenes=2, dit_layers=2, steps=steps)
    )


def test_shape_mask_is_exactly_the_palette_pixels(videos):
    mask = shape_mask(videos)
    grey = (videos[..., 0] == videos[..., 1]) & (videos[..., 1] == videos[..., 2])
    # every background pixel (plain or textured) is grey, every shape pixel is not
    np.testing.assert_array_equal(mask, ~grey)
    assert 0 < mask.mean() < 0.5


def test_shape_crops_contain_shapes_and_stay_on_the_grid(videos):
    rng = np.random.default_rng(0)
    masks = shape_mask(videos)
    # place each clip at every corner of a larger, non-square frame, so clamping is exercised
    for mask in masks:
        for top, left in ((0, 0), (136, 256), (0, 256), (136, 0)):
            frame = np.zeros((mask.shape[0], 200, 320), dtype=bool)
            frame[:, top : top + 64, left : left + 64] = mask
            for _ in range(20):
                y, x = _shape_crop_origin(frame, 64, rng)
                assert y % 8 == 0 and x % 8 == 0 and 0 <= y <= 136 and 0 <= x <= 256
                assert frame[:, y : y + 64, x : x + 64].any()


def test_crop_origin_without_shapes_is_random_but_valid():
    empty = np.zeros((3, 256, 256), dtype=bool)
    origins = {_shape_crop_origin(empty, 64, np.random.default_rng(seed)) for seed in range(10)}
    assert len(origins) > 1
    assert all(y % 8 == 0 and x % 8 == 0 and 0 <= y <= 192 and 0 <= x <= 192 for y, x in origins)


class _GreyVae:
    """A collapsed VAE: whatever goes in, mean grey comes out."""

    device = "cpu"  # where a diffusers model's weights are (ModelMixin.device)

    class _Posterior:
        def __init__(self, x):
            self.latent_dist = self
            self.x = x

        def mode(self):
            return self.x

    class _Decoded:
        def __init__(self, x):
            self.sample = x

    def encode(self, x):
        return self._Posterior(x)

    def decode(self, z):
        return self._Decoded(z * 0.0)


class _PerfectVae(_GreyVae):
    def decode(self, z):
        return self._Decoded(z)


def test_reconstruction_check_tells_a_collapsed_vae_from_a_perfect_one(videos):
    grey = reconstruction_check(_GreyVae(), videos)
    perfect = reconstruction_check(_PerfectVae(), videos)
    assert grey["collapsed"] and not perfect["collapsed"]
    # the decoder's grey is 127.5, the reference grey 128: the same error up to half a unit
    assert grey["shape_error"] == pytest.approx(grey["grey_shape_error"], abs=0.5)
    assert perfect["shape_error"] < 0.6 and perfect["psnr"] > 50 and perfect["std_ratio"] == pytest.approx(1, abs=1e-3)
    assert grey["std_ratio"] < 0.05


def test_stage_clock_calibrates_then_fixes_the_step_count():
    from layerscope_testbed.shapes.train import CALIBRATION_STEPS, StageClock

    now = [0.0]
    clock = StageClock("dit", seconds=100.0, clock=lambda: now[0])
    step = 0
    while clock.running(step):
        now[0] += 0.5  # half a second a step -> 200 steps fit in 100 s
        step += 1
        assert step < 1000
    assert step == clock.total == 200
    # warm-up is linear, the cosine starts after calibration and ends at zero
    assert clock.lr_factor(0, warmup=10) == pytest.approx(0.1)
    assert clock.lr_factor(CALIBRATION_STEPS - 1) == 1.0
    assert clock.lr_factor(110) == pytest.approx(0.5 * (1 + np.cos(np.pi * 90 / 180)))
    assert clock.lr_factor(199) == pytest.approx(0.0, abs=1e-3)
    assert clock.lr_factor(50, decay=False) == 1.0
    # a given count is obeyed whatever the clock says
    fixed = StageClock("dit", seconds=1e-9, total=7, clock=lambda: now[0])
    assert [fixed.running(s) for s in range(9)] == [True] * 7 + [False, False]


@pytest.mark.slow
def test_replayed_training_is_identical_and_writes_a_model_card(tmp_path):
    """Same seed and step counts -> the same weights byte for byte, whatever the clock did."""
    from layerscope_testbed.shapes.train import TrainConfig, replay_config, train

    steps = {"vae_frames": 2, "vae_clips": 1, "clip": 2, "dit": 2}
    first = train(TrainConfig(out=str(tmp_path / "a"), train_scenes=2, dit_layers=2, steps=steps))
    info = json.loads((first / "layerscope_model.json").read_text())
    assert info["steps"] == steps and info["weights"] == "trained" and "out" not in info["train_config"]
    second = train(replay_config(first / "layerscope_model.json", str(tmp_path / "b")))
    weights = sorted(p.relative_to(first) for p in first.rglob("*.safetensors"))
    assert len(weights) == 5  # transformer, vae, text encoder, image encoder, clip
    for relative in weights:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
    card = (first / "MODEL_CARD.md").read_text()
    assert card.startswith("# layerscope-shapes-wan-i2v")
    assert "| DiT, rectified flow, batch 4, 10% prompt dropout | 2 |" in card
    assert "2 blocks, width 96" in card
    assert "trained from scratch on" in card and "--init" not in card


@pytest.mark.slow
def test_push_scenes_from_scratch_keep_the_vae_check_on_the_base_clips(tmp_path, monkeypatch):
    """Push scenes follow the base set: the VAE check still sees the base set's last clips
    (all three events), and the card's command reproduces the run."""
    from layerscope_testbed.shapes import train as train_module

    seen = []
    real_check = train_module.reconstruction_check
    monkeypatch.setattr(train_module, "reconstruction_check", lambda vae, v: seen.append(v) or real_check(vae, v))
    steps = {"vae_frames": 1, "vae_clips": 1, "clip": 1, "dit": 1}
    config = train_module.TrainConfig(out=str(tmp_path / "m"), train_scenes=3, push_scenes=2, dit_layers=2, steps=steps)
    out = train_module.train(config)
    base, push = train_module.training_scene_sets(config)
    assert [s.dimension for s in push] == ["interaction", "interaction"]
    assert len(seen) == 1 and np.array_equal(seen[0], train_module._videos(base))
    card = (out / "MODEL_CARD.md").read_text()
    assert "--minutes 60 --seed 0 --push-scenes 2`" in card
    assert "5 training scenes sampled with seed 0 (3 balanced" in card


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "needs --out"),
        (["--replay", "missing.json"], "--replay"),
        (["--out", "."], "not an empty directory"),
        (["--out", "something"], "not an empty directory"),
        (["--init", "something"], "--init something: not a trained shapes-world model"),
        (["--init", "."], "--init .: not a trained shapes-world model"),
        (["--cache", "something/below"], "--cache"),
        (["--grow-layers", "2"], "--grow-layers deepens a trained model's DiT; give that model with --init DIR"),
        (["--replay", "missing.json", "--grow-layers", "2"], "drop them"),
    ],
)
def test_train_usage_errors_exit_2_before_training(argv, message, tmp_path, monkeypatch, capsys):
    from layerscope.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "something").write_text("x")
    if "--out" not in argv and argv:
        argv = [*argv, "--out", "new"]
    assert main(["testbed", "train", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--minutes", "0"],
        ["--minutes", "-5"],
        ["--seed", "-1"],
        ["--scenes", "0"],
        ["--scenes", "7"],
        ["--focus-weight", "-1"],
        ["--ema", "1"],
        ["--ema", "x"],
        ["--lr-dit", "0"],
        ["--push-scenes", "-1"],
        ["--push-scenes", "many"],
        ["--grow-layers", "-1"],
        ["--lr-text", "-1"],
        ["--text-role-heads", "-2"],
        ["--text-role-heads", "two"],
    ],
)
def test_train_rejects_impossible_numbers(argv, tmp_path):
    from layerscope.cli import main

    try:
        code = main(["testbed", "train", "--out", str(tmp_path / "x"), *argv])
    except SystemExit as exit_info:  # argparse's own refusal
        code = exit_info.code
    assert code == 2 and not (tmp_path / "x").exists()


def test_replay_refuses_a_json_without_steps(tmp_path):
    from layerscope_testbed.shapes.train import replay_config

    path = tmp_path / "layerscope_model.json"
    path.write_text(json.dumps({"name": "x", "train_config": {"seed": 0}}))
    with pytest.raises(ValueError, match="no train_config/steps"):
        replay_config(path, str(tmp_path / "out"))
    # a run time-boxed before step counts were recorded (the v2 model's) cannot be replayed
    path.write_text(json.dumps({"name": "x", "train_config": {"seed": 0}, "steps_logged": {"dit": 2550}}))
    with pytest.raises(ValueError, match="cannot be replayed exactly"):
        replay_config(path, str(tmp_path / "out"))


def test_the_shipped_model_replays_only_from_its_recorded_parent(tmp_path):
    """v7 continued v6: its recipe names v6 by weight hashes, and a replay asks for that parent."""
    from layerscope_testbed import SHIPPED_MODEL_DIR
    from layerscope_testbed.shapes.train import replay_config

    info = json.loads((SHIPPED_MODEL_DIR / "layerscope_model.json").read_text())
    assert info["version"] == 7 and info["init_model"]["version"] == 6 and info["steps"]["dit"] > 0
    assert info["train_config"]["push_scenes"] == 240 and info["train_config"]["text_role_heads"] == 4
    # the parent's VAE, CLIP and encoders are the shipped ones, byte for byte
    import hashlib

    for relative in ("vae/diffusion_pytorch_model.safetensors", "clip/open_clip_model.safetensors"):
        digest = hashlib.sha256((SHIPPED_MODEL_DIR / relative).read_bytes()).hexdigest()
        assert info["init_model"]["sha256"][relative] == digest
    with pytest.raises(ValueError, match="continued layerscope-shapes-wan-i2v v6"):
        replay_config(SHIPPED_MODEL_DIR / "layerscope_model.json", str(tmp_path / "out"))
    with pytest.raises(ValueError, match="transformer/diffusion_pytorch_model.safetensors"):
        replay_config(SHIPPED_MODEL_DIR / "layerscope_model.json", str(tmp_path / "out"), init=str(SHIPPED_MODEL_DIR))


def test_focus_mask_marks_changed_and_shape_positions_per_latent_frame():
    """Latent frame 0 <- pixel frame 0, latent frame k <- pixel frames 4(k-1)+1 .. 4k (Wan's causal VAE)."""
    from layerscope_testbed.shapes.train import focus_mask

    video = np.full((1, 9, 16, 24, 3), 128, dtype=np.uint8)
    video[0, :, 1, 1] = (220, 40, 40)  # a shape pixel in every frame: block (0, 0), all latent frames
    video[0, 3, 9, 20] = (130, 130, 130)  # a grey change in frame 3 only: block (1, 2), latent frame 1
    video[0, 8, 15, 9] = (40, 80, 225)  # a shape appears in frame 8: block (1, 1), latent frame 2
    mask = focus_mask(video, latent_frames=3)
    expected = np.zeros((1, 1, 3, 2, 3), dtype=np.float32)
    expected[0, 0, :, 0, 0] = 1
    expected[0, 0, 1, 1, 2] = 1
    expected[0, 0, 2, 1, 1] = 1
    np.testing.assert_array_equal(mask, expected)


def test_weighted_mse_against_hand_values():
    import torch

    from layerscope_testbed.shapes.train import weighted_mse

    prediction = torch.zeros(1, 2, 1, 1, 2)
    target = torch.tensor([[[[[1.0, 2.0]]], [[[3.0, 0.0]]]]])  # squared errors: c0 (1, 4), c1 (9, 0)
    assert float(weighted_mse(prediction, target)) == pytest.approx(14 / 4)
    weight = torch.tensor([[[[[1.0, 9.0]]]]])  # position 1 weighs 9x
    assert float(weighted_mse(prediction, target, weight)) == pytest.approx((1 + 9 + 9 * (4 + 0)) / (10 * 2))
    assert float(weighted_mse(prediction, target, torch.full_like(weight, 3.0))) == pytest.approx(14 / 4)


def test_ema_weights_are_the_moving_average_of_the_trained_ones():
    """One step with decay d saves d * start + (1 - d) * (weights after the step)."""
    import torch

    from layerscope_testbed.shapes.train import TrainConfig, train_dit

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.proj = torch.nn.Conv3d(4, 2, 1)

        def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image, return_dict):
            return (self.proj(hidden_states),)

    generator = torch.Generator().manual_seed(1)
    data = {
        "x0": torch.randn(3, 2, 2, 2, 2, generator=generator),
        "condition": torch.randn(3, 2, 2, 2, 2, generator=generator),
        "prompt": torch.randn(3, 4, 3, generator=generator),
        "image": torch.randn(3, 5, 3, generator=generator),
        "negative": torch.zeros(4, 3),
    }
    logs = []

    def run(decay):
        model = Tiny()
        config = TrainConfig(out="", dit_batch=2, ema_decay=decay, steps={"dit": 1}, dit_warmup=0)
        train_dit(model, data, config, 1.0, lambda *a, **k: logs.append(k))
        return model.proj.weight.detach().clone()

    start, stepped, averaged = Tiny().proj.weight.detach().clone(), run(0.0), run(0.75)
    assert not torch.equal(start, stepped)
    torch.testing.assert_close(averaged, 0.75 * start + 0.25 * stepped)


def _assert_replays_byte_for_byte(child, parent, out):
    """A continued run's recipe, replayed from ``parent`` into ``out``, gives ``child``'s weight files exactly."""
    from layerscope_testbed.shapes.train import replay_config, train

    again = train(replay_config(child / "layerscope_model.json", str(out), init=str(parent)))
    for path in child.rglob("*.safetensors"):
        assert path.read_bytes() == (again / path.relative_to(child)).read_bytes(), path


@pytest.mark.slow
def test_continued_training_keeps_the_parent_and_replays_only_with_it(tmp_path, tiny_parent):
    """--init: VAE, CLIP and encoders byte-identical to the parent's; the parent's hashes are
    recorded; a replay needs the same parent and gives the same weights byte for byte."""
    from layerscope_testbed.shapes.train import (
        TrainConfig,
        replay_config,
        train,
        training_scene_sets,
        weight_hashes,
    )
    from layerscope_testbed.shapes.world import swap_roles

    parent = tiny_parent
    config = TrainConfig(
        out=str(tmp_path / "child"),
        train_scenes=2,
        init=str(parent),
        steps={"dit": 2},
        dit_focus_weight=8.0,
        ema_decay=0.5,
        push_scenes=2,
        push_swaps=True,
        cache=str(tmp_path / "cache"),
    )
    child = train(config)
    info = json.loads((child / "layerscope_model.json").read_text())
    assert info["init_model"]["sha256"] == weight_hashes(parent)
    assert info["steps"] == {"dit": 2} and "init" not in info["train_config"] and "cache" not in info["train_config"]
    kept = ["vae", "clip", "image_encoder", "text_encoder"]
    for name in kept:
        for path in (parent / name).glob("*.safetensors"):
            assert path.read_bytes() == (child / name / path.name).read_bytes(), path
    # the base scenes, the push scenes and their role-swapped twins are encoded and cached
    # separately; the DiT saw all three (the two base scenes are no pushes: no twins)
    assert len(list((tmp_path / "cache").glob("encoded-*.safetensors"))) == 3
    data_log = next(json.loads(line) for line in (child / "train_log.jsonl").open() if '"data"' in line)
    assert data_log["sets"] == [2, 2, 2] and data_log["videos"][0] == 6
    assert info["train_config"]["push_scenes"] == 2 and info["train_config"]["push_swaps"] is True
    _, push, twins = training_scene_sets(config)
    assert twins == [swap_roles(s) for s in push] and len(twins) == 2
    card = (child / "MODEL_CARD.md").read_text()
    assert "its DiT trained on from v2's (the rest is v2's)" in card and "from scratch" not in card
    assert (
        "--init PARENT --out DIR --minutes" in card and "--ema 0.5 --push-scenes 2 --push-swaps [--cache DIR]" in card
    )
    assert "6 training scenes sampled with seed 0 (2 balanced over the three events, plus 2 interaction-only" in card
    assert "and the role-swapped twin of each interaction scene" in card
    # the parent's location on this machine is not recorded in the saved configs
    for path in [child / "model_index.json", *child.glob("*/config.json")]:
        assert "_name_or_path" not in json.loads(path.read_text()), path

    with pytest.raises(ValueError, match="--init DIR"):
        replay_config(child / "layerscope_model.json", str(tmp_path / "r0"))
    with pytest.raises(ValueError, match="transformer/diffusion_pytorch_model.safetensors"):
        replay_config(child / "layerscope_model.json", str(tmp_path / "r1"), init=str(child))
    _assert_replays_byte_for_byte(child, parent, tmp_path / "r2")


# ---------------------------------------------------------------- --device and --dit-batch


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize(
    "device, message", [("cuda", "CUDA is not available"), ("gpu", "not a torch device"), ("", "not a torch device")]
)
def test_training_on_a_missing_gpu_is_refused_before_anything_is_written(tmp_path, capsys, device, message):
    from layerscope.cli import main

    out = tmp_path / "m"
    assert main(["testbed", "train", "--out", str(out), "--device", device, "--minutes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "cpu" in err[0]
    assert not out.exists()


def test_a_replay_takes_device_and_batch_from_its_recipe(tmp_path, capsys):
    from layerscope.cli import main
    from layerscope_testbed.shapes.train import replay_config

    recipe = tmp_path / "layerscope_model.json"
    # a recipe from before --device existed: it trained on the CPU, and its replay does too
    recipe.write_text(json.dumps({"train_config": {"seed": 0, "dit_batch": 4}, "steps": {"dit": 3}}))
    assert replay_config(recipe, str(tmp_path / "r")).device == "cpu"
    argv = ["testbed", "train", "--replay", str(recipe), "--out", str(tmp_path / "r")]
    assert main([*argv, "--dit-batch", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recorded --device, --dit-batch, --grow-layers, --lr-text and --text-role-heads" in err[0]
    for option, value in (("--lr-text", "1e-3"), ("--text-role-heads", "2")):
        assert main([*argv, option, value]) == 2
        assert "--text-role-heads; drop them" in capsys.readouterr().err


def test_device_and_batch_are_recorded_and_the_card_names_them(tmp_path, monkeypatch):
    from layerscope.cli import main
    from layerscope_testbed.shapes import train as train_module

    seen = {}

    def fake_train(config):  # the CLI's part: options into the recipe (training itself is tested above)
        seen["config"] = config
        return tmp_path / "m"

    monkeypatch.setattr(train_module, "train", fake_train)
    assert main(["testbed", "train", "--out", str(tmp_path / "m"), "--dit-batch", "16", "--device", "cpu"]) == 0
    assert seen["config"].dit_batch == 16 and seen["config"].device == "cpu"
    recipe = train_module.recipe(seen["config"])
    assert recipe["device"] == "cpu" and recipe["dit_batch"] == 16


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (the device machine)")
def test_training_on_cuda_draws_the_same_batches_as_on_the_cpu(tmp_path):
    """Same recipe on both devices: the first DiT loss (same clips, noise and levels) agrees to
    float tolerance, the weights come back to the CPU, and the recipe and card name the device."""
    from layerscope_testbed.shapes.train import TrainConfig, train

    steps = {"vae_frames": 1, "vae_clips": 1, "clip": 1, "dit": 3}
    runs = {}
    for device in ("cpu", "cuda"):
        out = train(TrainConfig(out=str(tmp_path / device), train_scenes=2, dit_layers=2, steps=steps, device=device))
        lines = [json.loads(line) for line in (out / "train_log.jsonl").open()]
        runs[device] = (out, [r["loss"] for r in lines if r.get("stage") == "dit" and "loss" in r])
    assert runs["cuda"][1][0] == pytest.approx(runs["cpu"][1][0], rel=2e-2)
    info = json.loads((runs["cuda"][0] / "layerscope_model.json").read_text())
    assert info["train_config"]["device"] == "cuda"
    assert "--device cuda" in (runs["cuda"][0] / "MODEL_CARD.md").read_text()


# ---------------------------------------------------------------- --grow-layers


def _tiny_wan(num_layers: int):
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=8,
        out_channels=4,
        text_dim=16,
        freq_dim=16,
        ffn_dim=32,
        num_layers=num_layers,
        cross_attn_norm=True,
        image_dim=12,
        added_kv_proj_dim=16,
        rope_max_seq_len=32,
    )


def _tiny_inputs(batch: int = 2):
    import torch

    g = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(batch, 8, 2, 8, 8, generator=g),
        timestep=torch.tensor([300.0, 800.0][:batch]),
        encoder_hidden_states=torch.randn(batch, 5, 16, generator=g),
        encoder_hidden_states_image=torch.randn(batch, 3, 12, generator=g),
        return_dict=False,
    )


@pytest.mark.parametrize("depth, added, sources", [(3, 2, [1, 2]), (2, 3, [0, 1, 0])])
def test_deepen_computes_exactly_what_the_parent_computes_and_then_learns(depth, added, sources):
    """Step 0: the grown DiT's output equals the parent's bit for bit, the parent's blocks keep
    their indices and weights, each new block is a copy of the named parent block with its
    three residual outputs zeroed.  One optimizer step later those outputs are no longer zero
    (the new blocks receive gradient) and the output differs from the parent's."""
    import torch

    from layerscope_testbed.shapes.grow import RESIDUAL_OUTPUTS, deepen

    parent = _tiny_wan(depth)
    grown = deepen(parent, added)
    assert grown.config.num_layers == depth + added and parent.config.num_layers == depth
    with torch.no_grad():
        assert torch.equal(parent(**_tiny_inputs())[0], grown(**_tiny_inputs())[0])
    old, new = parent.state_dict(), grown.state_dict()
    for name, value in old.items():
        assert torch.equal(new[name], value), name
    zeroed = tuple(f"{path}.{kind}" for path in RESIDUAL_OUTPUTS for kind in ("weight", "bias"))
    for k, source in enumerate(sources):
        for name, value in old.items():
            if not name.startswith(f"blocks.{source}."):
                continue
            suffix = name[len(f"blocks.{source}.") :]
            copied = new[f"blocks.{depth + k}.{suffix}"]
            if suffix in zeroed:
                assert not copied.any(), suffix
            else:
                assert torch.equal(copied, value), suffix

    optimizer = torch.optim.SGD(grown.parameters(), lr=0.1)
    grown(**_tiny_inputs())[0].pow(2).mean().backward()
    optimizer.step()
    for block in grown.blocks[depth:]:
        assert block.get_submodule("ffn.net.2").weight.abs().sum() > 0
    with torch.no_grad():
        assert not torch.equal(parent(**_tiny_inputs())[0], grown(**_tiny_inputs())[0])


def test_deepen_refuses_nothing_to_add():
    from layerscope_testbed.shapes.grow import deepen

    with pytest.raises(ValueError, match="added must be >= 1"):
        deepen(_tiny_wan(2), 0)


@pytest.mark.slow
def test_grown_training_is_recorded_carded_and_replays_byte_for_byte(tmp_path, tiny_parent):
    """--init P --grow-layers 1: the child has one block more, its recipe and card say so, the
    parent's encoders are kept, and a replay from the recipe gives the same bytes."""
    from layerscope_testbed.shapes.train import TrainConfig, train

    parent = tiny_parent
    with pytest.raises(ValueError, match="needs init"):
        train(TrainConfig(out=str(tmp_path / "bad"), train_scenes=2, grow_layers=1, steps={"dit": 1}))
    child = train(
        TrainConfig(out=str(tmp_path / "child"), train_scenes=2, init=str(parent), steps={"dit": 2}, grow_layers=1)
    )
    config = json.loads((child / "transformer" / "config.json").read_text())
    info = json.loads((child / "layerscope_model.json").read_text())
    assert config["num_layers"] == 3 and info["train_config"]["grow_layers"] == 1
    assert {"stage": "grow", "layers": 2, "to": 3} in [
        {k: v for k, v in json.loads(line).items() if k != "t"} for line in (child / "train_log.jsonl").open()
    ]
    card = (child / "MODEL_CARD.md").read_text()
    assert "grown from 2 to 3 blocks (new ones start as the identity)" in card
    assert "--grow-layers 1 [--cache DIR]" in card
    assert "Transformer: 3 blocks" in card
    for path in (parent / "vae").glob("*.safetensors"):
        assert path.read_bytes() == (child / "vae" / path.name).read_bytes()
    _assert_replays_byte_for_byte(child, parent, tmp_path / "again")


# ---------------------------------------------------------------- --lr-text


def test_trainable_text_is_the_pipelines_encoding_and_passes_gradients_to_the_encoder():
    """TrainableText gives what ``encode_prompt`` gives (a dropped row: the empty prompt, as the
    unconditional branch), with gradients reaching exactly the prompt's word embeddings."""
    import torch

    import layerscope_testbed as testbed
    from layerscope_testbed.shapes.train import TrainableText
    from layerscope_testbed.shapes.world import VOCABULARY

    pipe = testbed.build_default_pipeline(0, vocabulary=VOCABULARY)
    prompts = ["the red circle pushes the blue square.", "the blue square pushes the red circle."]
    text = TrainableText(pipe, prompts, "cpu")
    embeds = text(torch.tensor([1, 0]), torch.tensor([False, True]))
    with torch.no_grad():
        expected, _ = pipe.encode_prompt(prompts[1], negative_prompt="", device="cpu", max_sequence_length=512)
        empty, _ = pipe.encode_prompt("", do_classifier_free_guidance=False, device="cpu", max_sequence_length=512)
    assert embeds.shape == (2, 512, pipe.text_encoder.config.d_model)
    torch.testing.assert_close(embeds[0], expected[0])
    torch.testing.assert_close(embeds[1], empty[0])
    assert not pipe.text_encoder.training  # no dropout: the embeddings sampling will see

    text(torch.tensor([0]), torch.tensor([False])).sum().backward()
    grad = pipe.text_encoder.get_input_embeddings().weight.grad
    used = set(pipe.tokenizer(prompts[0]).input_ids)
    touched = set(torch.nonzero(grad.abs().sum(dim=1)).flatten().tolist())
    assert touched == used
    assert len(text.parameters()) == len(list(pipe.text_encoder.parameters()))


@pytest.mark.slow
def test_continued_training_with_lr_text_trains_the_text_encoder_records_and_replays(tmp_path, tiny_parent):
    """--lr-text: the text encoder changes (VAE, CLIP, image encoder stay the parent's), the
    recipe, the card's command and its component table say so, and a replay repeats it byte
    for byte; the default (0) keeps it frozen (see the continued-training test above)."""
    from layerscope_testbed.shapes.train import TrainConfig, train

    parent = tiny_parent
    child = train(
        TrainConfig(
            out=str(tmp_path / "child"), train_scenes=2, init=str(parent), steps={"dit": 3}, lr_text=1e-2, dit_warmup=0
        )
    )
    name = "text_encoder/model.safetensors"
    assert (parent / name).read_bytes() != (child / name).read_bytes()
    for kept in ["vae", "clip", "image_encoder"]:
        for path in (parent / kept).glob("*.safetensors"):
            assert path.read_bytes() == (child / kept / path.name).read_bytes(), path
    info = json.loads((child / "layerscope_model.json").read_text())
    assert info["train_config"]["lr_text"] == 1e-2
    card = (child / "MODEL_CARD.md").read_text()
    assert "--lr-text 0.01 [--cache DIR]" in card
    assert "| text_encoder | UMT5EncoderModel |" in card and "| with the DiT (peak lr 0.01) |" in card
    assert "the DiT and the text encoder trained on from the parent's weights" in card
    assert "text encoder trained with it (peak lr 0.01)" in card
    _assert_replays_byte_for_byte(child, parent, tmp_path / "again")


# ---------------------------------------------------------------- --text-role-heads


@pytest.mark.slow
def test_text_role_heads_change_only_the_position_bias_record_and_replay_despite_a_stale_cache(tmp_path, tiny_parent):
    """--text-role-heads: of the parent's encoders only the text encoder's position-bias
    tables change; recipe and card say so.  The prompt embeddings in a cache filled by the
    unchanged encoder are not used: the run replays byte for byte without the cache."""
    import torch
    from safetensors.torch import load_file

    from layerscope_testbed.shapes.train import TrainConfig, train

    parent = tiny_parent
    cache = str(tmp_path / "cache")
    common = {"train_scenes": 2, "init": str(parent), "steps": {"dit": 2}, "dit_warmup": 0, "cache": cache}
    train(TrainConfig(out=str(tmp_path / "plain"), **common))  # fills the cache with the parent's prompts
    child = train(TrainConfig(out=str(tmp_path / "child"), text_role_heads=4, **common))
    old, new = (load_file(d / "text_encoder" / "model.safetensors") for d in (parent, child))
    assert sorted(k for k in old if not torch.equal(old[k], new[k])) == [
        f"encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight" for i in (0, 1)
    ]
    for kept in ["vae", "clip", "image_encoder"]:
        for path in (parent / kept).glob("*.safetensors"):
            assert path.read_bytes() == (child / kept / path.name).read_bytes(), path
    info = json.loads((child / "layerscope_model.json").read_text())
    assert info["train_config"]["text_role_heads"] == 4
    card = (child / "MODEL_CARD.md").read_text()
    assert "--text-role-heads 4 [--cache DIR]" in card
    assert "| no (seeded random init; 4 heads per layer directional, hand-set position bias) |" in card
    assert "the text encoder too but for the position bias below" in card
    _assert_replays_byte_for_byte(child, parent, tmp_path / "again")  # no cache: prompts encoded afresh


def test_the_cli_refuses_a_head_count_the_text_encoder_cannot_have(tmp_path, capsys):
    from layerscope.cli import main

    for heads, init in (("3", None), ("6", None), ("2", tmp_path / "broken")):
        argv = ["testbed", "train", "--out", str(tmp_path / "x"), "--text-role-heads", heads]
        if init:  # a shapes model whose text encoder config is missing
            init.mkdir()
            (init / "layerscope_model.json").write_text(json.dumps({"name": "layerscope-shapes-wan-i2v"}))
            argv += ["--init", str(init)]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        expected = "cannot read text_encoder/config.json" if init else "give an even number from 0 to 4"
        assert len(err) == 1 and expected in err[0], err
        assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "argv, field, given, default",
    [
        (["--push-scenes", "3", "--push-swaps"], "push_swaps", True, False),
        (["--lr-text", "2e-3"], "lr_text", 2e-3, 0.0),
        (["--text-role-heads", "2"], "text_role_heads", 2, 0),
    ],
)
def test_the_cli_passes_training_options_into_the_recipe(tmp_path, monkeypatch, argv, field, given, default):
    """The option reaches the TrainConfig (and so the recipe); without it the default holds."""
    from layerscope.cli import main
    from layerscope_testbed.shapes import train as train_module

    seen = []
    monkeypatch.setattr(train_module, "train", lambda config: seen.append(config) or config.out)
    assert main(["testbed", "train", "--out", str(tmp_path / "a"), *argv]) == 0
    assert main(["testbed", "train", "--out", str(tmp_path / "b")]) == 0
    assert [getattr(config, field) for config in seen] == [given, default]
    assert train_module.recipe(seen[0])[field] == given


def test_a_set_without_push_scenes_gets_no_twin_set():
    from layerscope_testbed.shapes import train as train_module

    no_pushes = train_module.TrainConfig(out="x", train_scenes=2, push_swaps=True)
    assert [len(group) for group in train_module.training_scene_sets(no_pushes)] == [2]
