"""Train the "shapes world" Wan-architecture I2V testbed on 2 CPU cores, reproducibly.

Stages, time-boxed so the whole run fits the budget (default 60 minutes):

1. VAE (``AutoencoderKLWan``): reconstruction of 64x64 crops, single frames first and
   then 9-frame clips, most of them centred on shapes, shape pixels weighted up (see
   :func:`train_vae`).
   Convolutions do not care about the crop size, and full 256x256 clips cost ~10 s a
   step here; the scenes are flat colours and edges, which crops cover.  Whole clips
   are then reconstructed as a check, and the latent mean/std per channel are measured
   and written into the VAE config, as the pipeline normalises latents with them.
2. CLIP (open_clip custom config): contrastive image/caption training on reference
   frames and their prompts, so that keyword selection (Eq. 6) has a joint space.  Its
   vision tower, converted, becomes the pipeline's image encoder.
3. Every training clip is encoded through the pipeline's own code paths, then the
   DiT (``WanTransformer3DModel``) gets the rest of the budget: rectified-flow training exactly as the Wan pipeline
   samples: x_s = (1 - s) x0 + s e, target e - x0, timestep 1000 s with the scheduler's
   shift, conditioned through the pipeline's own ``prepare_latents`` / ``encode_prompt``
   / ``encode_image``; the prompt is dropped 10% of the time so guidance works.

The text encoder (UMT5, word-level SentencePiece-style tokenizer over the shapes-world
vocabulary) stays at its seeded random initialisation by default: a fixed random embedding
of each word is enough for the DiT to learn *which* words a prompt has, and it saves the
budget for the DiT.  It is not enough to learn their *order*: the DiT's cross-attention
has no positions of its own, and the random encoder's output for a word barely depends on
where it stands (the subject's words of "the A pushes the B" against the same words as
the object of "the B pushes the A": cosine 0.998 on average, min 0.992, on v6's encoder
over 20 training push prompts), so the two sentences read alike.  ``lr_text`` (off by
default; ``--lr-text``) trains the text encoder with the DiT (:class:`TrainableText`),
its gradients clipped together with the DiT's.  Measured (README, 2026-12-03): at peak lr
1e-3 from v6 with the role-swapped twins, the encoder moved little (cosine 0.993) and
the model gained nothing over v6 (+0.000, p=1); kept as a recorded, replayable option.
``text_role_heads`` (``--text-role-heads``) instead makes word order visible by
construction: that many heads per encoder layer get a hand-set directional position bias
before training (:mod:`~layerscope_testbed.shapes.roles`); the cached clip encodings are
reused and the prompts encoded afresh.

Continuing a finished model (``--init DIR``): the VAE, CLIP and encoders of ``DIR`` are
kept as they are (stages 1-2 are skipped; the text encoder trains on only with
``lr_text``) and the DiT starts from ``DIR``'s weights, so the whole budget goes to the
DiT.  The parent's weight files are hashed into the recipe and a replay refuses a parent
whose hashes differ.  Three DiT options exist for such runs
(all off by default, so older recipes replay unchanged):

* ``dit_focus_weight``: the loss on latent positions where the clip changes (or a shape
  is) weighs ``1 + dit_focus_weight``.  Why: the condition hands the DiT frame 0, so
  ~93% of the latent is a copy of it and dominates a plain MSE, while the instruction
  lives in the ~7% that moves or changes colour (measured on the 480 training clips; v2
  followed 1 of 12 *training* prompts).
* ``ema_decay``: the saved DiT is an exponential moving average of the trained one, the
  usual remedy for a noisy last iterate when sampling with few steps.
* ``grow_layers``: that many blocks are appended to the parent's DiT, starting as the
  identity, before it trains on (:mod:`layerscope_testbed.shapes.grow` says why).

``push_scenes`` (off by default) adds that many interaction-only scenes to the training
set, drawn from a seed stream of their own (``world.PUSH_SEED_OFFSET``), so the base 480
are the same scenes as before and keep their cached encoding.  Why: the held-out push
rate was 0.00 (v3) and 0.06 (v4, v5) while motion rose from 0.06 to 0.46; the pushed object
moving on after contact is the rarest event in the data (a third of the scenes, and only
their second half), so this is the data lever for it.

``push_swaps`` (off by default) adds, as a third set, the role-swapped twin of every
training interaction scene (base and push sets) that has one in the training split: the
same first frame with "the B pushes the A".  Why: on v6's held-out push prompts the
usual failure was the *object* moving towards the subject (the held-out subjects were
seen in push prompts only as objects), and a first frame never says who moves; pairs
that differ only in the sentence make the word order the only cue.  Measured (README,
2026-12-03): no gain over v6 (+0.000, p=1), and the object moved towards the subject
more often (0.42 -> 0.74, p=0.031); kept as a recorded, replayable experiment.

``device`` (``--device``, default "cpu") is where the clips are encoded and the stages
train; every random draw still comes from a CPU generator, so a GPU run sees the same
batches as a CPU run of its recipe, and the CPU computation is the one it always was.
Why: the DiT is what limits the model, 2 CPU cores give ~6,000 DiT steps an hour and a
half, and a GPU is lent to some sessions.

Losses go to ``train_log.jsonl`` in the output directory, one JSON object per line.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layerscope.recording import uint8_to_vae_input

SHIFT = 3.0  # FlowMatchEulerDiscreteScheduler(shift=3.0), as in the default pipeline
#: The VAE has lost the shapes when its error on shape pixels exceeds this share of what a
#: flat grey reconstruction of the same clips would score (see :func:`reconstruction_check`).
VAE_COLLAPSE_RATIO = 0.6
#: Steps each stage runs before its step time is measured and its step count fixed.
CALIBRATION_STEPS = 20
#: The stages whose step counts a run records and a replay reuses.
STAGES = ("vae_frames", "vae_clips", "clip", "dit")


@dataclass
class TrainConfig:
    out: str
    seed: int = 0
    minutes: float = 60.0
    train_scenes: int = 480
    #: Extra interaction-only training scenes (see the module docstring).
    push_scenes: int = 0
    #: Add the role-swapped twin of every training interaction scene that has one in the
    #: training split (:func:`~layerscope_testbed.shapes.world.swap_roles`); see the module docstring.
    push_swaps: bool = False
    vae_share: float = 0.28
    clip_share: float = 0.06
    # then every clip is encoded with the trained VAE, and the DiT trains until the budget ends
    crop: int = 64
    vae_batch: int = 4
    vae_shape_crops: float = 0.8
    vae_shape_weight: float = 5.0
    vae_image_share: float = 0.35
    clip_batch: int = 64
    dit_batch: int = 4
    dit_layers: int = 12
    dit_heads: int = 4
    dit_head_dim: int = 24
    lr_vae: float = 1e-3
    lr_clip: float = 5e-4
    lr_dit: float = 1e-3
    #: Peak learning rate of the text encoder, trained with the DiT on the same schedule
    #: (:class:`TrainableText`); 0 keeps it frozen and its prompt embeddings cached.
    lr_text: float = 0.0
    #: Heads per text-encoder layer given a hand-set directional position bias
    #: (:mod:`~layerscope_testbed.shapes.roles`); 0 leaves the encoder as it is.
    text_role_heads: int = 0
    dit_warmup: int = 100
    prompt_dropout: float = 0.1
    dit_focus_weight: float = 0.0
    ema_decay: float = 0.0
    #: Continued runs only: blocks appended to the parent's DiT before training, starting
    #: as the identity (see :mod:`layerscope_testbed.shapes.grow`); 0 keeps its depth.
    grow_layers: int = 0
    threads: int = 2
    #: Where the DiT (and, from scratch, the VAE and CLIP) train and the clips are encoded:
    #: "cpu", "cuda" or "cuda:N".  Part of the recipe: a run is replayed on the same kind
    #: of device (floating-point results differ between devices).  Random draws (batches,
    #: noise, noise levels) come from CPU generators on every device, so the data a run
    #: sees does not depend on it.
    device: str = "cpu"
    #: A finished model directory to continue from (see the module docstring); its weight
    #: hashes, not its path, go into the recipe.
    init: str | None = None
    #: Where encoded training clips are cached (safetensors), keyed by the VAE's hash and
    #: the scene set; not part of the recipe, as it changes nothing in the result.
    cache: str | None = None
    #: Step counts per stage (keys of :data:`STAGES`).  Unset stages are calibrated from
    #: the time budget; a replay (``--replay``) sets all of them, and then the run is
    #: the same computation step for step, whatever the machine's speed.
    steps: dict[str, int] | None = None


class StageClock:
    """How long a stage trains: a fixed number of steps, the same for a run and its replay.

    Without a given count the stage runs :data:`CALIBRATION_STEPS`, measures its step
    time and fixes ``total = seconds / step time``.  Learning rates are a function of the
    step and the total only (linear warm-up, then a cosine to zero after the calibration
    steps), so a replay with the recorded totals repeats the run exactly; a wall-clock
    schedule would not, as step times vary with the machine and its load.
    """

    def __init__(self, name: str, seconds: float, total: int | None = None, clock: Any = time.perf_counter):
        self.name, self.seconds, self.total, self.clock = name, seconds, total, clock
        self.started = clock()

    def running(self, step: int) -> bool:
        if self.total is None and step >= CALIBRATION_STEPS:
            per_step = (self.clock() - self.started) / step
            self.total = max(step, int(self.seconds / per_step))
        return self.total is None or step < self.total

    def lr_factor(self, step: int, warmup: int = 0, decay: bool = True) -> float:
        factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if decay and step >= CALIBRATION_STEPS and self.total is not None and self.total > CALIBRATION_STEPS:
            fraction = (step - CALIBRATION_STEPS) / (self.total - CALIBRATION_STEPS)
            factor *= 0.5 * (1 + math.cos(math.pi * min(1.0, fraction)))
        return factor

    def __repr__(self) -> str:
        return f"StageClock({self.name!r}, total={self.total})"


class _Log:
    def __init__(self, path: Path):
        self.path = path
        self.started = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("w")

    def __call__(self, stage: str, **values: Any) -> None:
        record = {"stage": stage, "t": round(time.perf_counter() - self.started, 2), **values}
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        print(json.dumps(record), flush=True)


def _videos(scenes: list[Any]) -> np.ndarray:
    from layerscope_testbed.shapes.render import render_video

    return np.stack([render_video(s, num_frames=9, height=256, width=256) for s in scenes])


def _set_lr(optimizer: Any, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _stage(config: TrainConfig, name: str, seconds: float) -> StageClock:
    return StageClock(name, seconds, (config.steps or {}).get(name))


def shape_mask(videos: np.ndarray) -> np.ndarray:
    """Pixels that belong to a shape: palette colours are saturated, every background is grey.

    (max - min) over RGB is >= 130 for every palette colour and 0 for every background
    pixel (plain or textured), so 50 separates them with a wide margin.
    """
    return (videos.max(axis=-1).astype(np.int16) - videos.min(axis=-1)) > 50


def _shape_crop_origin(mask: np.ndarray, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    """A crop origin (multiples of 8) whose crop contains shape pixels of some frame, or a random one.

    ``mask`` is (T, H, W).  The union over frames is used, so a clip crop always shows
    the shape at some time; a single frame drawn from such a crop may miss a moving
    shape, which the shape weighting then simply does not apply to.
    """
    height, width = mask.shape[-2:]
    ys, xs = np.nonzero(mask.any(axis=0))
    if len(ys) == 0:
        return _random_crop_origin(height, width, crop, rng)
    pick = int(rng.integers(0, len(ys)))
    y = int(np.clip(ys[pick] - rng.integers(8, crop - 8), 0, height - crop)) // 8 * 8
    x = int(np.clip(xs[pick] - rng.integers(8, crop - 8), 0, width - crop)) // 8 * 8
    return y, x


def _random_crop_origin(height: int, width: int, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    y, x = (rng.integers(0, [(height - crop) // 8 + 1, (width - crop) // 8 + 1]) * 8).tolist()
    return y, x


def _vae_batch(
    videos: np.ndarray, masks: np.ndarray, config: TrainConfig, rng: np.random.Generator, size: int, single_frame: bool
) -> tuple[Any, Any]:
    """A batch of crops (B, 3, T, crop, crop) in [-1, 1] and their loss weights (B, 1, T, crop, crop)."""
    import torch

    crops, weights = [], []
    for i in rng.integers(0, len(videos), size).tolist():
        if rng.random() < config.vae_shape_crops:
            y, x = _shape_crop_origin(masks[i], config.crop, rng)
        else:
            y, x = _random_crop_origin(videos.shape[2], videos.shape[3], config.crop, rng)
        frames = slice(f := int(rng.integers(0, videos.shape[1])), f + 1) if single_frame else slice(None)
        crops.append(videos[i, frames, y : y + config.crop, x : x + config.crop])
        weights.append(masks[i, frames, y : y + config.crop, x : x + config.crop])
    weight = 1.0 + (config.vae_shape_weight - 1.0) * torch.from_numpy(np.stack(weights)).float()[:, None]
    return uint8_to_vae_input(np.stack(crops), config.device), weight.to(config.device)


def train_vae(vae: Any, videos: np.ndarray, config: TrainConfig, seconds: float, log: _Log) -> dict[str, int]:
    """Reconstruction training on crops, most of them containing shapes; single frames first.

    What the first trained VAE taught us (it collapsed to flat grey):

    - shapes cover ~5% of a frame, so uniform crops are mostly grey and grey is the
      cheapest minimum: crops contain a shape (in some frame of the clip)
      ``config.vae_shape_crops`` of the time and shape pixels weigh
      ``config.vae_shape_weight`` times a background pixel (MSE);
    - the posterior mean is decoded, not a sample (see below);
    - a 9-frame clip step costs ~9 single-frame steps, and spatial structure is learnt
      from frames alone (the causal VAE encodes frame 0 on its own), so the first
      ``config.vae_image_share`` of the time trains on single frames (batch 2x) at a
      constant rate, the rest on clips with a cosine decay.

    Returns the step count of each phase.
    """
    import torch

    rng = np.random.default_rng(config.seed + 10)
    masks = shape_mask(videos)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr_vae, weight_decay=0.0)
    vae.train()
    phases = (
        ("vae_frames", seconds * config.vae_image_share, True),
        ("vae_clips", seconds * (1 - config.vae_image_share), False),
    )
    steps = {}
    for name, phase_seconds, single_frame in phases:
        clock, step = _stage(config, name, phase_seconds), 0
        size = 2 * config.vae_batch if single_frame else config.vae_batch
        while clock.running(step):
            batch, weight = _vae_batch(videos, masks, config, rng, size, single_frame)
            # The posterior mean, not a sample: the pipeline encodes with the mean ("argmax"),
            # and at initialisation a sample carries unit-variance noise that drowns the signal.
            reconstruction = vae.decode(vae.encode(batch).latent_dist.mode()).sample
            loss = ((reconstruction - batch).pow(2) * weight).sum() / (weight.sum() * 3)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            _set_lr(optimizer, config.lr_vae * clock.lr_factor(step, decay=not single_frame))
            optimizer.step()
            if step % 10 == 0:
                log("vae", phase=name, step=step, frames=batch.shape[2], loss=round(float(loss.detach()), 5))
            step += 1
        steps[name] = step
        log("stage", name=name, steps=step)
    vae.eval()
    return steps


def reconstruction_check(vae: Any, videos: np.ndarray) -> dict[str, Any]:
    """How well the VAE reproduces whole clips: the guard against a collapsed (all-grey) VAE.

    ``shape_error`` is the mean absolute RGB error (0-255) on shape pixels;
    ``grey_shape_error`` is what a flat grey (128) reconstruction scores on the same
    pixels (51 for purple up to 92 for yellow, so it is computed, not assumed);
    ``collapsed`` says whether ``shape_error`` exceeds :data:`VAE_COLLAPSE_RATIO` of it.
    ``std_ratio`` is reconstruction / input pixel std.
    """
    import torch

    device = vae.device  # diffusers models say where their weights are
    with torch.no_grad():
        clips = uint8_to_vae_input(videos, device)
        out = torch.cat([vae.decode(vae.encode(clips[i : i + 1]).latent_dist.mode()).sample for i in range(len(clips))])
    out = ((out.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 4, 1).cpu().numpy()
    pixels = videos.astype(np.float32)
    error = np.abs(out - pixels).mean(axis=-1)
    mask = shape_mask(videos)
    shape_error = float(error[mask].mean())
    grey_shape_error = float(np.abs(pixels - 128.0).mean(axis=-1)[mask].mean())
    return {
        "psnr": float(10 * np.log10(255.0**2 / np.mean((out - pixels) ** 2))),
        "shape_error": shape_error,
        "grey_shape_error": grey_shape_error,
        "background_error": float(error[~mask].mean()),
        "std_ratio": float(out.std() / pixels.std()),
        "collapsed": bool(shape_error > VAE_COLLAPSE_RATIO * grey_shape_error),
    }


def set_latent_statistics(vae: Any, videos: np.ndarray, log: _Log) -> None:
    """Measure per-channel latent mean/std on full clips and store them in the VAE config."""
    import torch

    device = vae.device  # diffusers models say where their weights are
    with torch.no_grad():
        latents = torch.cat(
            [
                vae.encode(uint8_to_vae_input(videos[i : i + 1], device)).latent_dist.mode()
                for i in range(min(8, len(videos)))
            ]
        )
    mean = latents.mean(dim=(0, 2, 3, 4)).tolist()
    std = latents.std(dim=(0, 2, 3, 4)).clamp(min=1e-3).tolist()
    vae.register_to_config(latents_mean=mean, latents_std=std)
    log("vae_stats", latents_mean=[round(m, 4) for m in mean], latents_std=[round(s, 4) for s in std])


def train_clip(
    clip: Any, images: np.ndarray, captions: list[str], config: TrainConfig, seconds: float, log: _Log
) -> dict[str, int]:
    """Contrastive image/prompt training, so FSG's keyword selection (Eq. 6) has a joint space."""
    import torch
    import torch.nn.functional as F

    from layerscope.clip import tokenizer_for

    tokenizer = tokenizer_for(clip)
    tokens = tokenizer(captions).to(config.device)
    pixels = _clip_pixels(images).to(config.device)
    rng = np.random.default_rng(config.seed + 20)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=config.lr_clip, weight_decay=0.05)
    clip.train()
    clock, step = _stage(config, "clip", seconds), 0
    while clock.running(step):
        index = torch.from_numpy(rng.choice(len(captions), min(config.clip_batch, len(captions)), replace=False))
        image_features = F.normalize(clip.encode_image(pixels[index]), dim=-1)
        text_features = F.normalize(clip.encode_text(tokens[index]), dim=-1)
        logits = clip.logit_scale.exp() * image_features @ text_features.T
        # identical captions in a batch are positives too
        same = torch.tensor([[captions[i] == captions[j] for j in index.tolist()] for i in index.tolist()])
        target = (same.float() / same.float().sum(1, keepdim=True)).to(config.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _set_lr(optimizer, config.lr_clip * clock.lr_factor(step))
        optimizer.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        if step % 10 == 0:
            log("clip", step=step, loss=round(float(loss.detach()), 5))
        step += 1
    log("stage", name="clip", steps=step)
    clip.eval()
    return {"clip": step}


def _clip_pixels(images: np.ndarray) -> Any:
    """Reference frames preprocessed like the pipeline's CLIPImageProcessor (112 px, OpenAI mean/std)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=(112, 112), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    return (x - mean) / std


def encode_training_set(pipe: Any, scenes: list[Any], videos: np.ndarray, log: _Log) -> dict[str, Any]:
    """x0 latents, conditions, prompt and image embeddings, via the pipeline's own code paths.

    Every training clip is encoded (~1 s each here): the first run time-boxed this stage
    and left the DiT with a third of the data to memorise.  Encoding runs where the VAE
    is; the tensors come back to the CPU (the cache and the recipe are device-free).
    """
    import torch
    from PIL import Image

    vae = pipe.vae
    device = vae.device  # diffusers models say where their weights are
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(device)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(device)
    data: dict[str, list[Any]] = {"x0": [], "condition": [], "prompt": [], "image": []}
    negative = None
    with torch.no_grad():
        for i, (scene, video) in enumerate(zip(scenes, videos)):
            clip_tensor = uint8_to_vae_input(video[None], device)
            x0 = (vae.encode(clip_tensor).latent_dist.mode() - mean) / std
            image = Image.fromarray(video[0])
            processed = pipe.video_processor.preprocess(image, height=256, width=256).float().to(device)
            _, condition = pipe.prepare_latents(processed, 1, vae.config.z_dim, 256, 256, 9, torch.float32, device)
            prompt_embeds, negative_embeds = pipe.encode_prompt(
                scene.prompt, negative_prompt="", device=device, max_sequence_length=512
            )
            negative = negative_embeds if negative is None else negative
            data["x0"].append(x0[0].cpu())
            data["condition"].append(condition[0].cpu())
            data["prompt"].append(prompt_embeds[0].cpu())
            data["image"].append(pipe.encode_image(image, device=device)[0].cpu())
            if i % 20 == 0:
                log("encode", done=i + 1, of=len(scenes))
    tensors = {k: torch.stack(v) for k, v in data.items()}
    tensors["negative"] = negative[0].cpu()
    return tensors


def encode_prompts(pipe: Any, prompts: list[str], batch: int = 64) -> tuple[Any, Any]:
    """The prompts' embeddings and the empty prompt's, on the CPU, as :func:`encode_training_set` stores them.

    Why apart from the clips: a run that changes the text encoder before training
    (``text_role_heads``) reuses the cached clip encodings but not their prompts, which
    the parent's encoder read.
    """
    import torch

    device = pipe.text_encoder.device
    with torch.no_grad():
        rows = [
            pipe.encode_prompt(
                prompts[i : i + batch], do_classifier_free_guidance=False, device=device, max_sequence_length=512
            )[0].cpu()
            for i in range(0, len(prompts), batch)
        ]
        negative, _ = pipe.encode_prompt("", do_classifier_free_guidance=False, device=device, max_sequence_length=512)
    return torch.cat(rows), negative[0].cpu()


def sample_sigmas(batch: int, generator: Any) -> Any:
    """Training noise levels with the scheduler's shift: s' = shift s / (1 + (shift - 1) s)."""
    import torch

    s = torch.rand(batch, generator=generator)
    return SHIFT * s / (1 + (SHIFT - 1) * s)


def focus_mask(videos: np.ndarray, latent_frames: int, scale: int = 8, temporal: int = 4) -> np.ndarray:
    """Which latent positions (N, 1, latent_frames, H/scale, W/scale) carry the instruction.

    A position is in focus when any pixel of its footprint differs from frame 0 in any of
    the frames the latent frame encodes (Wan's causal VAE: latent frame 0 is pixel frame
    0, latent frame ``k`` pixel frames ``temporal (k-1) + 1 .. temporal k``), or shows a
    shape then.  Computed from the rendered clip, so it is exact, not a latent-space guess.
    """
    n, frames, height, width, _ = videos.shape
    changed = np.any(videos != videos[:, :1], axis=-1) | shape_mask(videos)  # (N, T, H, W)
    blocks = changed.reshape(n, frames, height // scale, scale, width // scale, scale).any(axis=(3, 5))
    spans = [[0]] + [
        list(range(temporal * (k - 1) + 1, min(frames, temporal * k + 1))) for k in range(1, latent_frames)
    ]
    mask = np.stack([blocks[:, span].any(axis=1) for span in spans], axis=1)
    return mask[:, None].astype(np.float32)


def weighted_mse(prediction: Any, target: Any, weight: Any = None) -> Any:
    """Mean squared error over (B, C, T, H, W); ``weight`` (B, 1, T, H, W) weighs positions,
    normalised so that a constant weight gives the plain mean."""
    squared = (prediction - target).pow(2)
    if weight is None:
        return squared.mean()
    return (squared * weight).sum() / (weight.sum() * squared.shape[1])


class TrainableText:
    """Prompt embeddings computed every step by the pipeline's ``encode_prompt``, so that
    the text encoder trains with the DiT (``TrainConfig.lr_text``).

    Why: the frozen random encoder gives a word nearly the same vector wherever it stands
    (module docstring), so word order, and with it who pushes whom, cannot reach the DiT;
    a trained encoder can put the role into the vector.  The encoder stays in eval mode
    (no dropout: the embeddings are those sampling will see), and a dropped prompt is the
    empty prompt through the same encoder, as the pipeline's unconditional branch is.
    """

    def __init__(self, pipe: Any, prompts: list[str], device: Any):
        self.pipe, self.prompts, self.device = pipe, list(prompts), device
        pipe.text_encoder.eval().requires_grad_(True)

    def parameters(self) -> list[Any]:
        return list(self.pipe.text_encoder.parameters())

    def __call__(self, rows: Any, drop: Any) -> Any:
        texts = ["" if dropped else self.prompts[row] for row, dropped in zip(rows.tolist(), drop.tolist())]
        embeds, _ = self.pipe.encode_prompt(
            texts, do_classifier_free_guidance=False, device=self.device, max_sequence_length=512
        )
        return embeds


def train_dit(
    transformer: Any,
    data: dict[str, Any],
    config: TrainConfig,
    seconds: float,
    log: _Log,
    text: TrainableText | None = None,
) -> dict[str, int]:
    """Rectified-flow training on the encoded clips, as the Wan pipeline samples (module docstring).

    With ``text`` the prompts are encoded each step and the text encoder trains too, at
    ``config.lr_text`` on the DiT's schedule; without it the cached embeddings are used.
    With ``config.ema_decay`` the transformer (and a trained text encoder) end holding the
    moving average of their weights.
    """
    import torch

    device = torch.device(config.device)
    transformer.to(device)
    # the draws come from a CPU generator on every device (the same batches as a CPU run)
    generator = torch.Generator().manual_seed(config.seed + 30)
    groups = [{"params": list(transformer.parameters()), "peak": config.lr_dit}]
    if text is not None:
        groups.append({"params": text.parameters(), "peak": config.lr_text})
    trained = [parameter for group in groups for parameter in group["params"]]
    optimizer = torch.optim.AdamW(groups, lr=config.lr_dit, weight_decay=0.01)
    ema = [p.detach().clone() for p in trained] if config.ema_decay else None
    data = {key: value.to(device) for key, value in data.items()}
    focus = data.get("focus") if config.dit_focus_weight else None
    transformer.train()
    n = data["x0"].shape[0]
    clock, step = _stage(config, "dit", seconds), 0
    while clock.running(step):
        rows = torch.randint(0, n, (config.dit_batch,), generator=generator).to(device)
        x0 = data["x0"][rows]
        noise = torch.randn(x0.shape, generator=generator).to(device)
        sigma = sample_sigmas(config.dit_batch, generator).view(-1, 1, 1, 1, 1).to(device)
        noisy = (1 - sigma) * x0 + sigma * noise
        drop = (torch.rand(config.dit_batch, generator=generator) < config.prompt_dropout).to(device)
        if text is None:
            prompt = data["prompt"][rows].clone()
            prompt[drop] = data["negative"]
        else:
            prompt = text(rows, drop)
        model_input = torch.cat([noisy, data["condition"][rows]], dim=1)
        prediction = transformer(
            hidden_states=model_input,
            timestep=sigma.flatten() * 1000.0,
            encoder_hidden_states=prompt,
            encoder_hidden_states_image=data["image"][rows],
            return_dict=False,
        )[0]
        weight = None if focus is None else 1.0 + config.dit_focus_weight * focus[rows]
        loss = weighted_mse(prediction, noise - x0, weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        factor = clock.lr_factor(step, warmup=config.dit_warmup)
        for group in optimizer.param_groups:
            group["lr"] = group["peak"] * factor
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in trained], 1.0 - config.ema_decay)
        if step % 10 == 0:
            log("dit", step=step, loss=round(float(loss.detach()), 5))
        step += 1
    log("stage", name="dit", steps=step)
    if ema is not None:
        with torch.no_grad():
            for parameter, average in zip(trained, ema):
                parameter.copy_(average)
    transformer.eval()
    if text is not None:
        text.pipe.text_encoder.requires_grad_(False)
    return {"dit": step}


class TrainingError(RuntimeError):
    """Training ran but produced a model that must not be saved."""


def replay_config(model_json: str | Path, out: str, init: str | None = None) -> TrainConfig:
    """The configuration of a finished run, with its step counts: the same computation again.

    A run that continued another model (``init_model`` in its recipe) needs that parent
    again: ``init`` must be a directory whose weight files hash as recorded.
    """
    info = json.loads(Path(model_json).read_text())
    if "steps_logged" in info and "steps" not in info:
        raise ValueError(f"{model_json}: this run predates recorded step counts and cannot be replayed exactly")
    if "train_config" not in info or "steps" not in info:
        raise ValueError(f"{model_json}: not a trained model's layerscope_model.json (no train_config/steps)")
    fields = {k: v for k, v in info["train_config"].items() if k in TrainConfig.__dataclass_fields__}
    parent = info.get("init_model")
    if parent:
        if not init:
            raise ValueError(
                f"{model_json}: this run continued {parent['name']} v{parent['version']}; "
                "pass that model's directory with --init DIR"
            )
        found = weight_hashes(init)
        if found != parent["sha256"]:
            differ = sorted(k for k in set(found) | set(parent["sha256"]) if found.get(k) != parent["sha256"].get(k))
            raise ValueError(f"--init {init}: its weights differ from the recorded parent's ({', '.join(differ)})")
    elif init:
        raise ValueError(f"{model_json}: this run started from scratch; drop --init")
    return TrainConfig(**{**fields, "out": out, "init": init, "steps": dict(info["steps"])})


def recipe(config: TrainConfig) -> dict[str, Any]:
    """The configuration as recorded with the model: everything but the paths (output,
    parent, cache), which are machine-specific and would leak into a committed model
    directory; a parent is recorded by its weight hashes instead."""
    return {k: v for k, v in asdict(config).items() if k not in ("out", "init", "cache")}


def weight_hashes(model_dir: str | Path) -> dict[str, str]:
    """sha256 of every safetensors file of a model directory, by relative path: its identity."""
    import hashlib

    model_dir = Path(model_dir)
    files = sorted(model_dir.rglob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir}: no safetensors weights here; pass a trained model directory")
    return {path.relative_to(model_dir).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def _device_type(device: str) -> str:
    """The kind of device ("cuda" for "cuda:1"), which decides the floating-point results."""
    import torch

    return torch.device(device).type


def _encoded_training_set(pipe: Any, scenes: list[Any], videos: np.ndarray, config: TrainConfig, log: _Log) -> dict:
    """:func:`encode_training_set`, cached in ``config.cache`` when set (keyed by VAE and scenes)."""
    import hashlib

    from safetensors.torch import load_file, save_file

    if not config.cache:
        return encode_training_set(pipe, scenes, videos, log)
    vae_hash = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in pipe.vae.parameters())).hexdigest()
    prompts = json.dumps([s.prompt for s in scenes]).encode()
    # encodings made on another kind of device differ in the last bits: keyed apart (CPU keys as before)
    where = b"" if config.device == "cpu" else _device_type(config.device).encode()
    key = hashlib.sha256(vae_hash.encode() + prompts + videos[:, 0].tobytes() + where).hexdigest()[:16]
    path = Path(config.cache) / f"encoded-{key}.safetensors"
    if path.exists():
        log("encode", cached=path.name)
        return load_file(path)
    data = encode_training_set(pipe, scenes, videos, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")  # a killed run never leaves a half-written cache entry
    save_file({k: v.contiguous() for k, v in data.items()}, partial)
    partial.replace(path)
    return data


def _load_parent(init: str) -> tuple[Any, Any]:
    """The pipeline and open_clip model of a finished shapes-world model, in float32 on the CPU."""
    import layerscope_testbed as testbed
    from layerscope.clip import load_open_clip
    from layerscope.loading import load_pipeline

    pipe, path = load_pipeline(init, dtype="float32", device="cpu")
    return pipe, load_open_clip(path / testbed.CLIP_SUBFOLDER)


def _train_from_scratch(config: TrainConfig, scenes: list[Any], videos: np.ndarray, budget: float, log: _Log):
    """Stages 1-2 and a fresh DiT: the pipeline, its CLIP, the step counts and the VAE check."""
    import torch
    from diffusers import WanTransformer3DModel

    import layerscope_testbed as testbed
    from layerscope.clip import vision_tower_to_transformers
    from layerscope_testbed.shapes.world import VOCABULARY

    clip = testbed.build_default_clip(config.seed)
    pipe = testbed.build_default_pipeline(config.seed, clip=clip, vocabulary=VOCABULARY)
    pipe.to(config.device)
    clip.to(config.device)
    steps = train_vae(pipe.vae, videos, config, budget * config.vae_share, log)
    # the base set's last 8 clips (all three events), whatever push scenes follow them
    check = reconstruction_check(pipe.vae, videos[: config.train_scenes][-8:])
    log("vae_check", **{k: round(v, 3) if isinstance(v, float) else v for k, v in check.items()})
    if check["collapsed"] and not config.steps:
        # Training a DiT on a collapsed VAE's latents wastes the rest of the budget.
        raise TrainingError(
            f"the VAE lost the shapes (error {check['shape_error']:.1f} on shape pixels, flat grey scores "
            f"{check['grey_shape_error']:.1f}); no model was saved; give the VAE more time (--minutes)"
        )
    set_latent_statistics(pipe.vae, videos, log)

    steps |= train_clip(clip, videos[:, 0], [s.prompt for s in scenes], config, budget * config.clip_share, log)
    pipe.image_encoder = vision_tower_to_transformers(clip)
    pipe.register_modules(image_encoder=pipe.image_encoder)

    torch.manual_seed(config.seed + 3)
    width = config.dit_heads * config.dit_head_dim
    pipe.transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=config.dit_heads,
        attention_head_dim=config.dit_head_dim,
        in_channels=2 * pipe.vae.config.z_dim + 4,
        out_channels=pipe.vae.config.z_dim,
        text_dim=pipe.text_encoder.config.d_model,
        freq_dim=32,
        ffn_dim=2 * width,
        num_layers=config.dit_layers,
        cross_attn_norm=True,
        image_dim=clip.visual.conv1.out_channels,
        added_kv_proj_dim=width,
        rope_max_seq_len=256,
    )
    pipe.register_modules(transformer=pipe.transformer)
    return pipe, clip, steps, check


def _continue_from(init: str, videos: np.ndarray, log: _Log):
    """A finished model's pipeline and CLIP as they are, its identity (name, version, weight
    hashes) and its VAE check: the VAE is the parent's byte for byte, so the parent's
    recorded check stands (measured again only if the parent has none)."""
    from layerscope.loading import MODEL_INFO_FILE

    info = json.loads((Path(init) / MODEL_INFO_FILE).read_text())
    parent = {"name": info["name"], "version": info["version"], "sha256": weight_hashes(init)}
    log("init", name=parent["name"], version=parent["version"])
    pipe, clip = _load_parent(init)
    check = info.get("vae_check") or reconstruction_check(pipe.vae, videos[-8:])
    log("vae_check", **{k: round(v, 3) if isinstance(v, float) else v for k, v in check.items()})
    return pipe, clip, parent, check


def drop_source_paths(out: Path) -> None:
    """Remove ``_name_or_path`` from the saved configs.

    Why: diffusers records where a loaded component came from; for a continued run that
    is the parent's directory on this machine, which must not travel with the model (the
    planted model's builder uses this too).
    """
    for path in [out / "model_index.json", *out.glob("*/config.json")]:
        config = json.loads(path.read_text())
        if config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def training_scene_sets(config: TrainConfig) -> list[list[Any]]:
    """The base training scenes, with ``config.push_scenes`` the interaction-only extra set,
    and with ``config.push_swaps`` the role-swapped twins of both sets' interaction scenes.

    Separate sets, not one list, so that each is encoded and cached on its own: adding push
    scenes or swaps leaves the earlier sets' cache entries valid.
    """
    from layerscope_testbed.shapes.world import PUSH_SEED_OFFSET, sample_scenes, swap_roles

    sets = [sample_scenes(config.train_scenes, split="train", seed=config.seed)]
    if config.push_scenes:
        sets.append(
            sample_scenes(
                config.push_scenes, split="train", seed=config.seed + PUSH_SEED_OFFSET, dimensions=("interaction",)
            )
        )
    if config.push_swaps:
        swaps = [twin for group in sets for scene in group if (twin := swap_roles(scene)) is not None]
        if swaps:  # an empty set would have nothing to encode
            sets.append(swaps)
    return sets


def concatenate_encoded(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One encoded training set from several (the unconditional prompt is shared: the first's)."""
    import torch

    if len(parts) == 1:
        return parts[0]
    return {key: parts[0][key] if key == "negative" else torch.cat([part[key] for part in parts]) for key in parts[0]}


def train(config: TrainConfig) -> Path:
    """Run all stages and write a loadable pipeline directory (safetensors) to ``config.out``.

    Runs at ``config.threads`` torch threads and restores the caller's count afterwards.
    """
    import torch

    previous = torch.get_num_threads()
    try:
        return _train(config)
    finally:
        torch.set_num_threads(previous)


def _train(config: TrainConfig) -> Path:
    """The stages of :func:`train`.

    With ``config.init`` only the DiT trains, on from the parent's (module docstring); the
    model is then one version past its parent.
    """
    import torch

    import layerscope_testbed as testbed
    from layerscope.clip import save_open_clip

    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)  # results depend on the thread count: fixed and recorded
    out = Path(config.out)
    log = _Log(out / "train_log.jsonl")
    budget = config.minutes * 60.0
    log("config", **recipe(config))

    scene_sets = training_scene_sets(config)
    scenes = [scene for group in scene_sets for scene in group]
    videos = np.concatenate([_videos(group) for group in scene_sets])
    bounds = np.cumsum([0, *(len(group) for group in scene_sets)]).tolist()
    log("data", scenes=len(scenes), videos=list(videos.shape), sets=[len(group) for group in scene_sets])

    parent = None
    if config.init:
        pipe, clip, parent, check = _continue_from(config.init, videos[: config.train_scenes], log)
        if config.grow_layers:
            from layerscope_testbed.shapes.grow import deepen

            depth = pipe.transformer.config.num_layers
            pipe.transformer = deepen(pipe.transformer, config.grow_layers)
            pipe.register_modules(transformer=pipe.transformer)
            log("grow", layers=depth, to=depth + config.grow_layers)
        pipe.to(config.device)  # the encoders too: the clips are encoded where the DiT trains
        steps: dict[str, int] = {}
    else:
        if config.grow_layers:
            raise ValueError("grow_layers deepens a parent's DiT; it needs init (from scratch, set dit_layers)")
        pipe, clip, steps, check = _train_from_scratch(config, scenes, videos, budget, log)
    if config.text_role_heads:
        from layerscope_testbed.shapes.roles import ROLE_BIAS, set_directional_heads

        set_directional_heads(pipe.text_encoder, config.text_role_heads)
        log("text_roles", heads=config.text_role_heads, bias=ROLE_BIAS)
    data = concatenate_encoded(
        [
            _encoded_training_set(pipe, group, videos[start:stop], config, log)
            for group, start, stop in zip(scene_sets, bounds[:-1], bounds[1:])
        ]
    )
    if config.text_role_heads:  # the cache may hold the prompts as the unchanged encoder read them
        data["prompt"], data["negative"] = encode_prompts(pipe, [s.prompt for s in scenes])
    if config.dit_focus_weight:
        data["focus"] = torch.from_numpy(focus_mask(videos, latent_frames=data["x0"].shape[2]))
        log("focus", share=round(float(data["focus"].mean()), 4))
    # The DiT gets whatever the budget has left, less a minute for saving.
    dit_seconds = max(60.0, budget - (time.perf_counter() - log.started) - 60.0)
    text = TrainableText(pipe, [s.prompt for s in scenes], config.device) if config.lr_text else None
    steps |= train_dit(pipe.transformer, data, config, dit_seconds, log, text=text)

    pipe.to("cpu")  # weights are saved from the CPU, whatever the device
    clip.to("cpu")
    pipe.save_pretrained(out, safe_serialization=True)
    drop_source_paths(out)
    save_open_clip(clip, testbed.CLIP_CONFIG, out / testbed.CLIP_SUBFOLDER)
    (out / "layerscope_model.json").write_text(
        json.dumps(
            {
                "name": testbed.TRAINED_MODEL_NAME,
                "version": parent["version"] + 1 if parent else testbed.DEFAULT_MODEL_VERSION,
                "seed": config.seed,
                "weights": "trained",
                "note": "trained on the procedural shapes world (see MODEL_CARD.md)",
                "generation_defaults": testbed.GENERATION_DEFAULTS,
                "train_config": recipe(config),
                **({"init_model": parent} if parent else {}),
                # replay: layerscope testbed train --replay layerscope_model.json --out DIR [--init PARENT]
                "steps": steps,
                "vae_check": check,
                "train_minutes": round((time.perf_counter() - log.started) / 60, 1),
            },
            indent=2,
        )
    )
    from layerscope_testbed.shapes.model_card import write_model_card

    write_model_card(out)
    log("done", seconds=round(time.perf_counter() - log.started, 1))
    return out
