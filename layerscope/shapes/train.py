"""Train the "shapes world" Wan-architecture I2V testbed on 2 CPU cores, reproducibly.

Stages, each time-boxed so the whole run fits the budget (default 60 minutes):

1. VAE (``AutoencoderKLWan``): reconstruction of random 64x64 crops of 9-frame videos.
   Convolutions do not care about the crop size, and full 256x256 clips cost ~10 s a
   step here; the scenes are flat colours and edges, which crops cover.  Then the
   latent mean/std per channel are measured and written into the VAE config, as the
   pipeline normalises latents with them.
2. CLIP (open_clip custom config): contrastive image/caption training on reference
   frames and their prompts, so that keyword selection (Eq. 6) has a joint space.  Its
   vision tower, converted, becomes the pipeline's image encoder.
3. DiT (``WanTransformer3DModel``): rectified-flow training exactly as the Wan pipeline
   samples: x_s = (1 - s) x0 + s e, target e - x0, timestep 1000 s with the scheduler's
   shift, conditioned through the pipeline's own ``prepare_latents`` / ``encode_prompt``
   / ``encode_image``; the prompt is dropped 10% of the time so guidance works.

The text encoder (UMT5, word-level SentencePiece-style tokenizer over the shapes-world
vocabulary) stays at its seeded random initialisation: a fixed random embedding of each
word is enough for the DiT to learn to read it, and it saves the budget for the DiT.

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

SHIFT = 3.0  # FlowMatchEulerDiscreteScheduler(shift=3.0), as in the default pipeline


@dataclass
class TrainConfig:
    out: str
    seed: int = 0
    minutes: float = 60.0
    train_scenes: int = 480
    vae_share: float = 0.25
    clip_share: float = 0.08
    dit_share: float = 0.52  # the rest is encoding the training set with the trained VAE
    crop: int = 64
    vae_batch: int = 4
    clip_batch: int = 64
    dit_batch: int = 4
    dit_layers: int = 12
    dit_heads: int = 4
    dit_head_dim: int = 24
    lr_vae: float = 1e-3
    lr_clip: float = 5e-4
    lr_dit: float = 1e-3
    prompt_dropout: float = 0.1


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
    from layerscope.shapes.render import render_video

    return np.stack([render_video(s, num_frames=9, height=256, width=256) for s in scenes])


def _to_tensor(videos: np.ndarray) -> Any:
    """uint8 (B, T, H, W, 3) -> float (B, 3, T, H, W) in [-1, 1], as the pipeline feeds the VAE."""
    import torch

    return torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def _cosine_lr(optimizer: Any, base: float, fraction: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction)))


def train_vae(vae: Any, videos: np.ndarray, config: TrainConfig, seconds: float, log: _Log) -> None:
    import torch

    rng = np.random.default_rng(config.seed + 10)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr_vae, weight_decay=0.0)
    vae.train()
    started, step = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - started) < seconds:
        index = rng.integers(0, len(videos), config.vae_batch)
        y, x = (rng.integers(0, (256 - config.crop) // 8 + 1, 2) * 8).tolist()
        batch = _to_tensor(videos[index, :, y : y + config.crop, x : x + config.crop])
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        recon = (reconstruction - batch).abs().mean() + (reconstruction - batch).pow(2).mean()
        loss = recon + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        _cosine_lr(optimizer, config.lr_vae, elapsed / seconds)
        optimizer.step()
        if step % 10 == 0:
            log("vae", step=step, loss=round(float(loss), 5), recon=round(float(recon), 5))
        step += 1
    vae.eval()


def set_latent_statistics(vae: Any, videos: np.ndarray, log: _Log) -> None:
    """Measure per-channel latent mean/std on full clips and store them in the VAE config."""
    import torch

    with torch.no_grad():
        latents = torch.cat([vae.encode(_to_tensor(videos[i : i + 1])).latent_dist.mode() for i in range(8)])
    mean = latents.mean(dim=(0, 2, 3, 4)).tolist()
    std = latents.std(dim=(0, 2, 3, 4)).clamp(min=1e-3).tolist()
    vae.register_to_config(latents_mean=mean, latents_std=std)
    log("vae_stats", latents_mean=[round(m, 4) for m in mean], latents_std=[round(s, 4) for s in std])


def train_clip(clip: Any, images: np.ndarray, captions: list[str], config: TrainConfig, seconds: float, log) -> None:
    import torch
    import torch.nn.functional as F

    from layerscope.clip import tokenizer_for

    tokenizer = tokenizer_for(clip)
    tokens = tokenizer(captions)
    pixels = _clip_pixels(images)
    rng = np.random.default_rng(config.seed + 20)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=config.lr_clip, weight_decay=0.05)
    clip.train()
    started, step = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - started) < seconds:
        index = torch.from_numpy(rng.choice(len(captions), min(config.clip_batch, len(captions)), replace=False))
        image_features = F.normalize(clip.encode_image(pixels[index]), dim=-1)
        text_features = F.normalize(clip.encode_text(tokens[index]), dim=-1)
        logits = clip.logit_scale.exp() * image_features @ text_features.T
        # identical captions in a batch are positives too
        same = torch.tensor([[captions[i] == captions[j] for j in index.tolist()] for i in index.tolist()])
        target = same.float() / same.float().sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _cosine_lr(optimizer, config.lr_clip, elapsed / seconds)
        optimizer.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        if step % 10 == 0:
            log("clip", step=step, loss=round(float(loss), 5))
        step += 1
    clip.eval()


def _clip_pixels(images: np.ndarray) -> Any:
    """Reference frames preprocessed like the pipeline's CLIPImageProcessor (112 px, OpenAI mean/std)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=(112, 112), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    return (x - mean) / std


def encode_training_set(pipe: Any, scenes: list[Any], videos: np.ndarray, seconds: float, log) -> dict[str, Any]:
    """x0 latents, conditions, prompt and image embeddings, via the pipeline's own code paths."""
    import torch
    from PIL import Image

    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    data: dict[str, list[Any]] = {"x0": [], "condition": [], "prompt": [], "image": []}
    negative = None
    started = time.perf_counter()
    with torch.no_grad():
        for i, (scene, video) in enumerate(zip(scenes, videos)):
            if time.perf_counter() - started > seconds and i >= 16:
                log("encode", stopped_at=i, reason="time budget")
                break
            clip_tensor = _to_tensor(video[None])
            x0 = (vae.encode(clip_tensor).latent_dist.mode() - mean) / std
            image = Image.fromarray(video[0])
            processed = pipe.video_processor.preprocess(image, height=256, width=256).float()
            _, condition = pipe.prepare_latents(processed, 1, vae.config.z_dim, 256, 256, 9, torch.float32, "cpu")
            prompt_embeds, negative_embeds = pipe.encode_prompt(
                scene.prompt, negative_prompt="", device="cpu", max_sequence_length=512
            )
            negative = negative_embeds if negative is None else negative
            data["x0"].append(x0[0])
            data["condition"].append(condition[0])
            data["prompt"].append(prompt_embeds[0])
            data["image"].append(pipe.encode_image(image, device="cpu")[0])
            if i % 20 == 0:
                log("encode", done=i + 1, of=len(scenes))
    tensors = {k: torch.stack(v) for k, v in data.items()}
    tensors["negative"] = negative[0]
    return tensors


def sample_sigmas(batch: int, generator: Any) -> Any:
    """Training noise levels with the scheduler's shift: s' = shift s / (1 + (shift - 1) s)."""
    import torch

    s = torch.rand(batch, generator=generator)
    return SHIFT * s / (1 + (SHIFT - 1) * s)


def train_dit(transformer: Any, data: dict[str, Any], config: TrainConfig, seconds: float, log: _Log) -> None:
    import torch

    generator = torch.Generator().manual_seed(config.seed + 30)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=config.lr_dit, weight_decay=0.01)
    transformer.train()
    n = data["x0"].shape[0]
    started, step = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - started) < seconds:
        index = torch.randint(0, n, (config.dit_batch,), generator=generator)
        x0 = data["x0"][index]
        noise = torch.randn(x0.shape, generator=generator)
        sigma = sample_sigmas(config.dit_batch, generator).view(-1, 1, 1, 1, 1)
        noisy = (1 - sigma) * x0 + sigma * noise
        prompt = data["prompt"][index].clone()
        drop = torch.rand(config.dit_batch, generator=generator) < config.prompt_dropout
        prompt[drop] = data["negative"]
        model_input = torch.cat([noisy, data["condition"][index]], dim=1)
        prediction = transformer(
            hidden_states=model_input,
            timestep=sigma.flatten() * 1000.0,
            encoder_hidden_states=prompt,
            encoder_hidden_states_image=data["image"][index],
            return_dict=False,
        )[0]
        loss = (prediction - (noise - x0)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        warmup = min(1.0, step / 100)
        _cosine_lr(optimizer, config.lr_dit * warmup, elapsed / seconds)
        optimizer.step()
        if step % 10 == 0:
            log("dit", step=step, loss=round(float(loss), 5))
        step += 1
    transformer.eval()


def train(config: TrainConfig) -> Path:
    """Run all stages and write a loadable pipeline directory (safetensors) to ``config.out``."""
    import torch
    from diffusers import WanTransformer3DModel

    from layerscope import testbed
    from layerscope.clip import save_open_clip, vision_tower_to_transformers
    from layerscope.shapes.world import VOCABULARY, sample_scenes

    torch.manual_seed(config.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(config.out)
    log = _Log(out / "train_log.jsonl")
    budget = config.minutes * 60.0
    log("config", **asdict(config))

    scenes = sample_scenes(config.train_scenes, split="train", seed=config.seed)
    videos = _videos(scenes)
    log("data", scenes=len(scenes), videos=list(videos.shape))

    clip = testbed.build_default_clip(config.seed)
    pipe = testbed.build_default_pipeline(config.seed, clip=clip, vocabulary=VOCABULARY)
    train_vae(pipe.vae, videos, config, budget * config.vae_share, log)
    set_latent_statistics(pipe.vae, videos, log)

    train_clip(clip, videos[:, 0], [s.prompt for s in scenes], config, budget * config.clip_share, log)
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
    encode_seconds = budget * (1 - config.vae_share - config.clip_share - config.dit_share)
    data = encode_training_set(pipe, scenes, videos, encode_seconds, log)
    train_dit(pipe.transformer, data, config, budget * config.dit_share, log)

    pipe.save_pretrained(out, safe_serialization=True)
    save_open_clip(clip, testbed.CLIP_CONFIG, out / testbed.CLIP_SUBFOLDER)
    (out / "layerscope_model.json").write_text(
        json.dumps(
            {
                "name": testbed.TRAINED_MODEL_NAME,
                "version": testbed.DEFAULT_MODEL_VERSION,
                "seed": config.seed,
                "weights": "trained",
                "note": "trained on the procedural shapes world (see MODEL_CARD.md)",
                "train_config": asdict(config),
            },
            indent=2,
        )
    )
    log("done", seconds=round(time.perf_counter() - log.started, 1))
    return out
