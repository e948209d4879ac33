"""Post-training the semantic-weak layers' attention with Focal Guidance on (paper §4.3).

The paper fine-tunes only the cross-attention of Wan2.1-I2V's weak layers (11-26; batch 8,
lr 1e-5) and HunyuanVideo-I2V's single-stream layers 17-32 (lr 1e-4) with Focal Guidance
applied throughout, and reports (Table 3) that post-training alone helps little, FG
zero-shot helps, and both together help most.  This module does that for any pipeline
whose adapter implements the three post-training methods (Wan, HunyuanVideo-I2V):

* **Trainable:** the attention tensors of the chosen layers (``adapter.finetune_prefixes``:
  Wan ``blocks.<l>.attn2.*``; HunyuanVideo ``single_transformer_blocks.<s>.attn.*``);
  everything else is frozen and bit-identical in the output.  Only the first transformer
  (Wan2.1; Wan2.2's high-noise expert) is trained.
* **Objective:** the rectified-flow loss the pipeline samples with: ``x_t = (1 - s) x0 +
  s e``, target ``e - x0``, timestep ``1000 s``; ``s`` uniform, then shifted with the
  scheduler's ``shift`` as its sigmas are (``s' = shift s / (1 + (shift - 1) s)``); the
  frames scored are the adapter's (HunyuanVideo token-replace: not frame 0, which the
  pipeline never denoises).  Latents, conditions and text rows are computed once by the
  adapter (VAE and encoders never in the training graph) and cached on disk as
  safetensors, keyed by a data hash.
* **Focal Guidance during training:** the intervention (``fg_intervene``, loaded through
  the entry-point protocol: the core does not import it) is installed for each sample's
  forward with that sample's caption and image, as at inference, inside the ``cond``
  cache context its hooks act on.  Its anchors V_k^vis are computed inside the graph, so
  the trained layers' image value projection learns through Eq. 8, 9 and 13
  (``--freeze-anchors``: constants, the ablation).  The Attention Cache differs from
  inference: a training forward is one step of one sample, so the cache holds only the
  strong layers *before* the weak band (inference adds the later ones from step t-1);
  a previous step would need a second, no-grad forward per sample at another noise level
  the paper does not specify.  ``focal_guidance=False`` is the "post-training only" ablation.
* **Engine:** Hugging Face ``accelerate`` (mixed precision, multi-process under
  ``accelerate launch``/``torchrun``, gradient accumulation).  Every random draw of step
  ``n`` comes from a generator seeded by (seed, n, micro-batch, process), so a run resumed
  from a checkpoint continues exactly as an uninterrupted one.
* **Output:** only the changed tensors (``transformer_delta.safetensors``) and
  ``layerscope_finetune.json`` naming the base pipeline; ``load_pipeline`` merges them on
  load.  Why not a full pipeline copy: the weak layers' cross-attention of Wan 14B is a
  few hundred MB, the transformer 28 GB.  Checkpoints (delta + AdamW state) are
  safetensors too: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from layerscope.errors import LayerScopeError

CHECKPOINTS = "checkpoints"
LOG_FILE = "train_log.jsonl"
MIXED_PRECISION = ("no", "bf16", "fp16")


class FinetuneError(LayerScopeError):
    """The fine-tuning request cannot be carried out as given (a usage error)."""


@dataclass
class FinetuneConfig:
    """One fine-tuning run; written into the output's provenance."""

    layers: list[int]
    steps: int = 50
    lr: float | None = None  # None: the model family's (adapter.finetune_lr; the paper's)
    grad_accum: int = 1
    seed: int = 0
    focal_guidance: bool = True
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 25
    height: int = 256
    width: int = 256
    num_frames: int = 9
    eval_samples: int = 4
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("steps", "grad_accum", "checkpoint_every", "eval_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FinetuneError(f"--{name.replace('_', '-')} must be an integer >= 1 (got {value!r})")
        if self.lr is not None and not self.lr > 0:
            raise FinetuneError(f"--lr must be > 0 (got {self.lr})")
        if self.mixed_precision not in MIXED_PRECISION:
            raise FinetuneError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}")
        if not self.layers:
            raise FinetuneError("no layers to train: the ranking names no weak band; pass --layers 11-26")


def trainable_names(transformer: Any, layers: list[int], prefixes: tuple[str, ...] | None = None) -> list[str]:
    """Parameter names under ``prefixes`` (the adapter's; Wan's ``blocks.<l>.attn2.`` by default)."""
    prefixes = prefixes or tuple(f"blocks.{layer}.attn2." for layer in layers)
    names = [name for name, _ in transformer.named_parameters() if name.startswith(prefixes)]
    if not names:
        raise FinetuneError(f"layers {layers} have no attention parameters in this transformer")
    return names


def _clip_tensor(frames: Any, height: int, width: int) -> Any:
    """uint8 (F, H, W, 3) -> float (1, 3, F, height, width) in [-1, 1], resized with PIL."""
    import numpy as np
    from PIL import Image

    from layerscope.recording import uint8_to_vae_input

    resized = np.stack(
        [np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC)) for f in frames]
    )
    return uint8_to_vae_input(resized[None])


def encode_clips(adapter: Any, clips: list[Any], config: FinetuneConfig, cache: Path, device: Any) -> dict[str, Any]:
    """Every clip encoded once by the family's adapter (latents, conditions, text rows), cached on disk."""
    import torch
    from PIL import Image
    from safetensors.torch import load_file, save_file

    if cache.is_file():
        return load_file(cache)
    data: dict[str, list[Any]] = {}
    h, w, f = config.height, config.width, config.num_frames
    for clip in clips:
        video = _clip_tensor(clip.frames[:f], h, w)
        image = Image.fromarray(clip.image).convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
        for key, tensor in adapter.encode_training_clip(video, image, clip.caption, device).items():
            data.setdefault(key, []).append(tensor.float().cpu())
    tensors = {k: torch.stack(v).contiguous() for k, v in data.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.partial")  # processes may encode at once
    save_file(tensors, partial)
    partial.replace(cache)
    return tensors


def _generator(config: FinetuneConfig, step: int, micro: int, process: int) -> Any:
    import torch

    return torch.Generator().manual_seed(((config.seed * 1_000_003 + step) * 1009 + micro) * 101 + process)


def _shifted(s: Any, shift: float) -> Any:
    return shift * s / (1 + (shift - 1) * s)


class Trainer:
    """The training loop; built by :func:`finetune`, separable for tests."""

    def __init__(self, pipe: Any, adapter: Any, clips: list[Any], data: dict[str, Any], config: FinetuneConfig,
                 out: Path, intervention: Any, model_dir: Path) -> None:  # fmt: skip
        import torch
        from accelerate import Accelerator

        self.pipe, self.adapter, self.clips, self.config, self.out = pipe, adapter, clips, config, out
        self.intervention = intervention if config.focal_guidance else None
        self.model_dir = model_dir
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            cpu=pipe.device.type == "cpu",
        )
        transformer = pipe.transformer
        transformer.requires_grad_(False)
        self.names = trainable_names(transformer, config.layers, adapter.finetune_prefixes(config.layers))
        parameters = dict(transformer.named_parameters())
        self.params = [parameters[name] for name in self.names]
        for param in self.params:
            param.requires_grad_(True)
        if config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=0.0)
        self.model, self.optimizer = self.accelerator.prepare(transformer, self.optimizer)
        self.device = self.accelerator.device
        self.data = {k: v.to(self.device) for k, v in data.items()}
        self.shift = float(getattr(pipe.scheduler.config, "shift", 1.0) or 1.0)
        self.grid = None

    # -- one sample ------------------------------------------------------
    def _guided(self, index: int):
        """Install FG for sample ``index`` (its caption and image); a remover, or a no-op."""
        import contextlib

        if self.intervention is None:
            return contextlib.nullcontext()
        import torch
        from PIL import Image

        from layerscope.interventions import RunInputs
        from layerscope.recording import validate_geometry

        clip = self.clips[index]
        config = self.config
        if self.grid is None:
            self.grid = validate_geometry(self.adapter, config.height, config.width, config.num_frames)
        image = Image.fromarray(clip.image).convert("RGB").resize((config.width, config.height))
        inputs = RunInputs(
            pipe=self.pipe,
            adapter=self.adapter,
            prompt=clip.caption,
            image=image,
            height=config.height,
            width=config.width,
            num_frames=config.num_frames,
            grid=self.grid,
            model_dir=self.model_dir,
            extra=dict(config.extra),
        )
        with torch.no_grad():
            handle = self.intervention.apply(inputs)
        return contextlib.closing(_Remover(handle))

    def loss(self, index: int, generator: Any) -> Any:
        """Flow-matching loss of sample ``index`` with noise and level drawn from ``generator``."""
        import torch

        x0 = self.data["x0"][index : index + 1]
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        sigma = _shifted(torch.rand(1, generator=generator), self.shift).to(self.device)
        noisy = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
        sample = {key: value[index : index + 1] for key, value in self.data.items()}
        inner = self.accelerator.unwrap_model(self.model)
        with self._guided(index), inner.cache_context("cond"), self.accelerator.autocast():
            prediction, scored = self.adapter.training_prediction(
                self.model, inner.dtype, sample, noisy, sigma * 1000.0
            )
        return (prediction.float() - (noise - x0))[:, :, scored].pow(2).mean()

    def eval_loss(self) -> float:
        """Mean loss on a fixed set of (sample, noise, level): comparable before and after."""
        import torch

        count = min(self.config.eval_samples, self.data["x0"].shape[0])
        total = 0.0
        with torch.no_grad():
            for index in range(count):
                generator = torch.Generator().manual_seed(10_000 + index)
                total += float(self.loss(index, generator))
        return total / count

    # -- checkpoints -------------------------------------------------------
    def delta(self) -> dict[str, Any]:
        inner = self.accelerator.unwrap_model(self.model)
        state = dict(inner.named_parameters())
        return {name: state[name].detach().float().cpu().contiguous() for name in self.names}

    def save_checkpoint(self, step: int) -> Path:
        """Delta and AdamW moments as safetensors, the step in JSON (no pickles)."""
        from safetensors.torch import save_file

        from layerscope.outputs import write_text_atomic

        folder = self.out / CHECKPOINTS / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.delta(), folder / "delta.safetensors")
        moments = {}
        for name, param in zip(self.names, self.params):
            state = self.optimizer.state.get(param, {})
            for key in ("exp_avg", "exp_avg_sq", "step"):
                if key in state:
                    moments[f"{name}::{key}"] = state[key].detach().float().cpu().reshape(state[key].shape).contiguous()
        save_file(moments, folder / "optimizer.safetensors")
        write_text_atomic(folder / "trainer_state.json", json.dumps({"step": step}))
        return folder

    def load_checkpoint(self, folder: Path) -> int:
        import torch
        from safetensors.torch import load_file

        delta = load_file(folder / "delta.safetensors")
        moments = load_file(folder / "optimizer.safetensors")
        with torch.no_grad():
            for name, param in zip(self.names, self.params):
                param.copy_(delta[name].to(param.dtype))
                state = {}
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    if f"{name}::{key}" in moments:
                        value = moments[f"{name}::{key}"]
                        state[key] = value.to(param.device) if key != "step" else value
                if state:
                    self.optimizer.state[param] = state
        return int(json.loads((folder / "trainer_state.json").read_text())["step"])

    # -- the loop ------------------------------------------------------------
    def train(self, start: int, progress: bool, log: Any) -> list[float]:
        import torch
        from tqdm.auto import tqdm

        accelerator = self.accelerator
        n = self.data["x0"].shape[0]
        losses = []
        bar = tqdm(total=self.config.steps, initial=start, desc="finetune", unit="step",
                   disable=not progress or not accelerator.is_main_process)  # fmt: skip
        for step in range(start, self.config.steps):
            started = time.perf_counter()
            total = 0.0
            for micro in range(self.config.grad_accum):
                generator = _generator(self.config, step, micro, accelerator.process_index)
                index = int(torch.randint(0, n, (1,), generator=generator))
                loss = self.loss(index, generator) / self.config.grad_accum
                accelerator.backward(loss)
                total += float(loss.detach())
            accelerator.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - started
            losses.append(total)
            if accelerator.is_main_process:
                log({"step": step + 1, "loss": round(total, 6), "seconds": round(seconds, 3)})
            bar.set_postfix(loss=f"{total:.4f}", step_s=f"{seconds:.2f}")
            bar.update()
            if (step + 1) % self.config.checkpoint_every == 0 and step + 1 < self.config.steps:
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    self.save_checkpoint(step + 1)
        bar.close()
        return losses


class _Remover:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def close(self) -> None:
        self.handle.remove()


def latest_checkpoint(out: Path) -> Path | None:
    folders = sorted((out / CHECKPOINTS).glob("step-*/trainer_state.json"))
    return folders[-1].parent if folders else None


def finetune(
    pipe: Any,
    model_dir: Path,
    clips: list[Any],
    config: FinetuneConfig,
    out: Path,
    *,
    intervention: Any = None,
    resume: bool = False,
    progress: bool = True,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Train, then write the delta, its provenance and a card to ``out``; return ``out``."""
    from safetensors.torch import save_file

    from layerscope.adapters.registry import resolve_adapter
    from layerscope.loading import FINETUNE_FILE, FINETUNE_WEIGHTS, model_info
    from layerscope.outputs import write_text_atomic
    from layerscope.training_data import data_hash

    adapter = resolve_adapter(pipe)
    layers_available = adapter.num_layers()
    bad = [layer for layer in config.layers if not 0 <= layer < layers_available]
    if bad:
        raise FinetuneError(f"layer {bad[0]} is out of range; this model has layers 0-{layers_available - 1}")
    if config.lr is None:
        config.lr = float(adapter.finetune_lr)
    if config.focal_guidance and intervention is None:
        raise FinetuneError("Focal Guidance during training needs --intervene focal-guidance (or pass --no-fg)")
    digest = data_hash(clips)
    # encodings depend on the data, the clip size and the model's VAE/encoders: all three key the cache
    import hashlib

    model_key = hashlib.sha1(str(model_dir.resolve()).encode()).hexdigest()[:8]
    shape = f"{config.num_frames}x{config.height}x{config.width}"
    cache = out / "cache" / f"encoded-{digest}-{model_key}-{shape}.safetensors"
    data = encode_clips(adapter, clips, config, cache, pipe.device)
    trainer = Trainer(pipe, adapter, clips, data, config, out, intervention, model_dir)
    start = 0
    if resume and (folder := latest_checkpoint(out)) is not None:
        start = trainer.load_checkpoint(folder)
    log_path = out / LOG_FILE

    def log(record: dict[str, Any]) -> None:
        with log_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    if start == 0:
        log_path.unlink(missing_ok=True)
    eval_before = trainer.eval_loss()
    started = time.perf_counter()
    trainer.train(start, progress, log)
    seconds = time.perf_counter() - started
    eval_after = trainer.eval_loss()
    trainer.accelerator.wait_for_everyone()
    if not trainer.accelerator.is_main_process:
        return out
    save_file(trainer.delta(), out / FINETUNE_WEIGHTS)
    try:
        base_path = os.path.relpath(model_dir.resolve(), out.resolve())
    except ValueError:  # another drive (Windows)
        base_path = str(model_dir.resolve())
    base = model_info(model_dir)
    total = sum(p.numel() for p in pipe.transformer.parameters())
    trained = sum(p.numel() for p in trainer.params)
    record = {
        "format": "layerscope-finetune/1",
        "base_model_path": base_path,
        "base_model_id": base["model_id"],
        "layers": config.layers,
        "focal_guidance": config.focal_guidance,
        "trainable_parameters": trained,
        "transformer_parameters": total,
        "trainable_share": trained / total,
        "data_hash": digest,
        "clips": len(clips),
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "resumed_from_step": start,
        "train_seconds": seconds,
        "processes": trainer.accelerator.num_processes,
        "config": asdict(config),
        **(provenance or {}),
    }
    write_text_atomic(out / "MODEL_CARD.md", _card(record))
    write_text_atomic(out / FINETUNE_FILE, json.dumps(record, indent=2, default=str))  # last: marks it complete
    return out


def _card(record: dict[str, Any]) -> str:
    config = record["config"]
    return (
        f"# {record['base_model_id']} + weak-layer fine-tune\n\n"
        f"Cross-attention of layers {record['layers']} of `{record['base_model_id']}` trained for "
        f"{config['steps']} steps (lr {config['lr']}, {config['grad_accum']} micro-batch(es) of 1 per step, "
        f"{record['processes']} process(es)) on {record['clips']} clips (data hash {record['data_hash']}), "
        f"{'with' if record['focal_guidance'] else 'without'} Focal Guidance during training.\n\n"
        f"Trainable parameters: {record['trainable_parameters']:,} of {record['transformer_parameters']:,} "
        f"({100 * record['trainable_share']:.2f}%). Fixed-sample flow-matching loss: "
        f"{record['eval_loss_before']:.4f} before, {record['eval_loss_after']:.4f} after.\n\n"
        "Load it like any pipeline: `layerscope record --model THIS_DIR ...` (the base named in "
        "`layerscope_finetune.json` is loaded and `transformer_delta.safetensors` merged into it).\n"
    )
