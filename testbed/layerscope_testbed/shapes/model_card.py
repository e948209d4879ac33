"""Write ``MODEL_CARD.md`` for a trained shapes-world model from what its run recorded.

The card is generated, not hand-written, so that its sizes, steps and losses are the
ones in the directory next to it: component sizes from the safetensors files, the
recipe and step counts from ``layerscope_model.json``, loss curves from
``train_log.jsonl``.  Evaluation results are appended by whoever measured them
(``layerscope eval`` / ``layerscope sweep`` + ``layerscope rank``), under "Measured behaviour".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from layerscope_testbed.shapes.world import PUSH_SEED_OFFSET

_COMPONENTS = (
    ("transformer", "WanTransformer3DModel", "rectified flow"),
    ("vae", "AutoencoderKLWan", "reconstruction"),
    ("image_encoder", "CLIPVisionModel (converted from the CLIP below)", "via CLIP"),
    ("clip", "open_clip CLIP, custom config", "contrastive"),
    ("text_encoder", "UMT5EncoderModel", "no (seeded random init)"),
)


def _megabytes(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors")) / 2**20


def _loss_summary(records: list[dict[str, Any]], stage: str, **match: Any) -> str:
    losses = [r["loss"] for r in records if r["stage"] == stage and all(r.get(k) == v for k, v in match.items())]
    if not losses:
        return "-"
    head, tail = losses[:5], losses[-10:]
    return f"{sum(head) / len(head):.4f} -> {sum(tail) / len(tail):.4f}"


def _replay_line(info: dict[str, Any]) -> str:
    if info.get("steps"):
        again = " --init PARENT" if info.get("init_model") else ""
        return f"Replay step for step: `layerscope testbed train --replay DIR/layerscope_model.json --out NEW{again}`."
    return (
        "This run was time-boxed by wall clock, before runs recorded their step counts, so it cannot be "
        "replayed step for step; runs made since record them and `--replay` repeats them exactly."
    )


def render_model_card(model_dir: str | Path) -> str:
    """The card's Markdown for a finished run in ``model_dir``."""
    model_dir = Path(model_dir)
    info = json.loads((model_dir / "layerscope_model.json").read_text())
    records = [json.loads(line) for line in (model_dir / "train_log.jsonl").read_text().splitlines() if line]
    config = info["train_config"]
    # A run made before step counts were recorded has only its last logged steps (every 10th).
    steps = info.get("steps") or {k: f">= {v}" for k, v in info.get("steps_logged", {}).items()}
    check = info.get("vae_check", {})
    transformer = json.loads((model_dir / "transformer" / "config.json").read_text())
    vae = json.loads((model_dir / "vae" / "config.json").read_text())
    data = next((r for r in records if r["stage"] == "data"), {})

    roles = config.get("text_role_heads", 0)  # recipes from before --text-role-heads have none
    directional = f"{roles} heads per layer directional, hand-set position bias" if roles else ""
    trained_how = {}
    if config.get("lr_text"):
        trained_how["text_encoder"] = f"with the DiT (peak lr {config['lr_text']:g})" + (
            f"; {directional}" if roles else ""
        )
    elif roles:
        trained_how["text_encoder"] = f"no (seeded random init; {directional})"
    rows = "\n".join(
        f"| {name} | {cls} | {_megabytes(model_dir / name):.1f} MB | {trained_how.get(name, how)} |"
        for name, cls, how in _COMPONENTS
    )
    total = sum(_megabytes(model_dir / name) for name, _, _ in _COMPONENTS)
    width = transformer["num_attention_heads"] * transformer["attention_head_dim"]
    stages = (
        (f"VAE, single 64x64 frames, batch {2 * config['vae_batch']}", "vae_frames", ("vae", {"frames": 1})),
        (f"VAE, 9-frame 64x64 clips, batch {config['vae_batch']}", "vae_clips", ("vae", {"frames": 9})),
        (f"CLIP, image/prompt InfoNCE, batch {config['clip_batch']}", "clip", ("clip", {})),
        (
            f"DiT, rectified flow, batch {config['dit_batch']}, {config['prompt_dropout']:.0%} prompt dropout",
            "dit",
            ("dit", {}),
        ),
    )
    parent = info.get("init_model")
    if parent:  # a continued run trains the DiT only; the rest is the parent's, byte for byte
        label, key, log_match = stages[-1]
        options = (
            f"focus weight {config.get('dit_focus_weight', 0):g}, EMA {config.get('ema_decay', 0):g}, "
            f"peak lr {config['lr_dit']:g}"
        )
        if config.get("lr_text"):
            options += f", text encoder trained with it (peak lr {config['lr_text']:g})"
        if roles:
            options += f", {roles} directional text-encoder heads per layer"
        if config.get("grow_layers"):
            depth = transformer["num_layers"]
            grown = f"grown from {depth - config['grow_layers']} to {depth} blocks"
            options += f", {grown} (new ones start as the identity)"
        stages = ((f"{label}, {options}", key, log_match),)
    stage_rows = "\n".join(
        f"| {label} | {steps.get(key, '?')} | {_loss_summary(records, log_stage, **match)} |"
        for label, key, (log_stage, match) in stages
    )
    options = f" --push-scenes {config['push_scenes']}" if config.get("push_scenes") else ""
    if config.get("push_swaps"):
        options += " --push-swaps"
    if config.get("lr_text"):
        options += f" --lr-text {config['lr_text']:g}"
    if roles:
        options += f" --text-role-heads {roles}"
    device = config.get("device", "cpu")  # recipes from before --device trained on the CPU
    if device != "cpu":
        options += f" --device {device}"
    if config.get("dit_batch", 4) != 4:
        options += f" --dit-batch {config['dit_batch']}"
    if config.get("grow_layers"):
        options += f" --grow-layers {config['grow_layers']}"
    hardware = f"{config.get('threads', '?')} CPU threads" if device == "cpu" else f"the GPU ({device})"
    where = "2 CPU cores" if device == "cpu" else "a GPU"
    command = f"layerscope testbed train --out DIR --minutes {config['minutes']:g} --seed {config['seed']}{options}"
    lineage, origin = "", "trained from scratch on"
    if parent:
        rest = f"the rest is v{parent['version']}'s"
        if config.get("lr_text"):
            rest = f"its text encoder too; {rest}"
        elif roles:
            rest += ", but for the text encoder's position bias"
        origin = f"its DiT trained on from v{parent['version']}'s ({rest}) on"
        command = (
            f"layerscope testbed train --init PARENT --out DIR --minutes {config['minutes']:g} "
            f"--seed {config['seed']} --lr-dit {config['lr_dit']:g} "
            f"--focus-weight {config.get('dit_focus_weight', 0):g} --ema {config.get('ema_decay', 0):g}"
            f"{options} [--cache DIR]"
        )
        lineage = (
            f"\n\nContinued from **{parent['name']} v{parent['version']}** (PARENT; the sha256 of each of its "
            "weight files is in `layerscope_model.json`, and a replay refuses any other parent): "
            + (
                "the VAE, CLIP and image encoder are the parent's, byte for byte, and the DiT and the text "
                "encoder trained on from the parent's weights. "
                if config.get("lr_text")
                else "the VAE, CLIP and image encoder are the parent's, byte for byte, the text encoder too but "
                "for the position bias below, and the DiT trained on from the parent's weights. "
                if roles
                else "the VAE, CLIP, image and text encoders are the parent's, byte for byte, and the DiT trained "
                "on from the parent's weights. "
            )
            + (
                f"Before training, {roles} heads per layer of the text encoder were made directional "
                "(`--text-role-heads`: a hand-set position bias, half of them attending only to the words "
                "before each word, half only to those after it). "
                if roles
                else ""
            )
            + "The parent's own training (VAE, CLIP, the first DiT steps) is described in its card."
        )
    push = ""
    if config.get("push_scenes"):
        push = (
            f" ({config['train_scenes']} balanced over the three events, plus {config['push_scenes']} "
            f"interaction-only scenes drawn with seed {config['seed'] + PUSH_SEED_OFFSET})"
        )
    if config.get("push_swaps"):
        push += ", and the role-swapped twin of each interaction scene that has one in the training split"
    return f"""# {info["name"]} (v{info["version"]})

A small image-to-video model with the **Wan2.1-I2V architecture**, {origin}
{where} on LayerScope's procedural shapes world (`layerscope_testbed.shapes`). It exists so that
LayerScope and Focal Guidance can be run and measured where no model hub and no GPU are
available. It is not a general video model.

## Components (real diffusers / transformers / open_clip classes, safetensors only)

| component | class | size | trained |
| --- | --- | --- | --- |
{rows}

Total weights: {total:.1f} MB. Transformer: {transformer["num_layers"]} blocks, width {width} \
({transformer["num_attention_heads"]} heads x {transformer["attention_head_dim"]}), patch \
{tuple(transformer["patch_size"])}, image-context branch. VAE: z_dim {vae["z_dim"]}, base_dim \
{vae["base_dim"]}, x8 spatial and x4 temporal compression. Frames are 256x256, 9 per clip: \
latents 3 x 32 x 32, so 3 x 16 x 16 tokens per clip.

## Data

{data.get("scenes", config["train_scenes"])} training scenes sampled with seed {config["seed"]}{push}: \
1-3 shapes (circle, square, triangle; red, green, blue, yellow, purple) on a plain or
textured grey background, one event each along the paper's three dimensions (colour
change, motion, push). 9 of the 45 (subject kind, colour, event) combinations are held
out of training and make up the evaluation set.

## Training

Command: `{command}`;
{info.get("train_minutes", "?")} minutes wall clock on {hardware}. \
{_replay_line(info)}{lineage}

| stage | steps | loss (mean of first 5 logs -> last 10 logs) |
| --- | --- | --- |
{stage_rows}

VAE check on 8 whole training clips: PSNR {check.get("psnr", float("nan")):.1f} dB, mean RGB \
error on shape pixels {check.get("shape_error", float("nan")):.1f} (a flat grey reconstruction: \
{check.get("grey_shape_error", float("nan")):.1f}), reconstruction/input pixel std \
{check.get("std_ratio", float("nan")):.2f}.

## Measured behaviour
"""


def write_model_card(model_dir: str | Path) -> Path:
    path = Path(model_dir) / "MODEL_CARD.md"
    path.write_text(render_model_card(model_dir))
    return path
