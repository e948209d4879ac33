"""Planted truth: a shapes-world model whose semantic-weak layers are known by construction.

``layerscope testbed plant --layers 4-7 --out DIR`` starts from the shipped model and
makes the chosen blocks' cross-attention *text-blind*, then fine-tunes the rest:

1. **Blind.** In each planted block, ``attn2.to_k`` (weight and bias) and
   ``attn2.to_v.weight`` are set to zero.  Every text token's key is then 0 (the RMS
   norm of 0 is 0), its value is the constant ``to_v.bias`` = b, and the text half of
   the cross-attention returns b at every visual token whatever the prompt.  Nothing of
   the text reaches these blocks, and the probe's keyword vector V_k (Eq. 10) is b for
   every keyword.  This is a weight-level mask: the result is an ordinary diffusers
   checkpoint that ``from_pretrained`` loads with no special code.
2. **Fine-tune** the transformer for ``steps`` rectified-flow steps on training-split
   clips (:func:`layerscope_testbed.shapes.train.train_dit`) with the blinded tensors
   frozen, so the other blocks can take over what the planted ones used to do.
3. **Set the probe's readout (off by default, ``--tune-readout``).** It makes the
   recovery circular: the readout is chosen by looking at the maps the ranking then
   reads.  Without it, only the cause (text-blindness) is planted and ``to_v.bias`` stays
   the parent's bit for bit.  Why it once existed: blinding alone does not make
   a layer's map look weak.  The ``hidden`` map of a text-blind block is cos(b, z(u)),
   the hidden state projected on an arbitrary constant direction, and its Moran's I is
   whatever spatial structure z has along b (measured on the shipped model, 6 prompts x
   2 seeds: blinded layers 4-7 with the trained b gave 0.078, 0.095, 0.028, 0.072
   against 0.03-0.11 elsewhere, i.e. no band; a random b neither).  The paper's weak
   layers have maps without spatial structure.  So for each planted block we choose b
   as the direction whose cosine maps have no spatial autocorrelation on calibration
   videos (training-split scenes, not the eval or sweep prompts; the cond branch the
   probe records): among the generalised eigenvectors of (spatially lagged covariance,
   covariance) of the block's attention inputs, in their top principal components, the
   one whose mean per-map Moran ratio is nearest 0 (:func:`white_readout`), scaled to
   the norm of the old b.  The block's *function* is unchanged:
   ``to_out.0.bias`` absorbs the change (``W_out (b_old - b_new)``), so the model's
   outputs differ only by float rounding.  In words: the planted layers are text-blind
   (their computation ignores the prompt), and their probe maps are spatially
   unstructured by choice of a readout that the network never uses.

What the default (cause-only) planted truth tests: whether an instrument sees layers that
are known to ignore the text.  The contrastive map and the causal influence are exactly
zero there by construction of the *model*, not of the readout; whether Moran's I of Eq.
10's map sees them is what ``examples/instrument_study.py`` measures.  With
``--tune-readout`` the old, circular version is built (its card says so).

Deterministic: the same configuration (and thread count) gives bit-identical weights.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layerscope.errors import UsageError

PLANTED_MODEL_NAME = "layerscope-shapes-wan-i2v-planted"
#: Principal components of the attention inputs that the readout is chosen in: the
#: directions the hidden state really varies along (not numerically empty ones, whose
#: maps would be nearly constant and get NaN Moran's I).
READOUT_COMPONENTS = 32


@dataclass
class PlantConfig:
    out: str
    layers: tuple[int, ...] = (4, 5, 6, 7)
    seed: int = 0
    clips: int = 8  # training-split clips for the fine-tune (each is encoded once, ~1 s)
    steps: int = 20  # fine-tune steps (batch 4): brief, the other blocks adapt a little
    lr: float = 2e-4
    calibration_scenes: int = 4  # training-split scenes whose attention inputs choose the readout
    calibration_steps: int = 6
    threads: int = 2
    base: str | None = None  # default: the shipped model
    #: Step 3 (set the probe readout).  Off by default: choosing b by looking at recorded maps
    #: makes "rank finds the planted band" true by construction (circular).
    tune_readout: bool = False


def parse_layers(text: str) -> tuple[int, ...]:
    """``4-7`` or ``4,5,9`` -> sorted unique block indices."""
    layers: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise UsageError(f"--layers {text!r}: expected e.g. 4-7 or 4,5,6")
        layers.update(range(int(lo), int(hi or lo) + 1))
    if not layers:
        raise UsageError(f"--layers {text!r}: no layers")
    return tuple(sorted(layers))


def check_plant(config: PlantConfig) -> None:
    """Refuse a configuration in one line before anything is loaded or written."""
    base = Path(config.base) if config.base else None
    if base is None:
        from layerscope_testbed import shipped_model_dir

        base = shipped_model_dir()
    if base is None or not (base / "transformer" / "config.json").is_file():
        raise UsageError("testbed plant needs the shipped shapes-world model (or --base DIR of one)")
    depth = json.loads((base / "transformer" / "config.json").read_text())["num_layers"]
    if config.layers[0] < 1 or config.layers[-1] > depth - 2:
        raise UsageError(
            f"--layers must lie inside the stack (1-{depth - 2} of {depth}): a weak band has stronger layers "
            "on both sides, and rank never reports the first or last layer"
        )
    out = Path(config.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {config.out} exists and is not an empty directory; choose a new directory")
    if config.calibration_scenes < 1 or config.clips < 1:
        raise UsageError("testbed plant needs at least one training clip and one calibration scene")


def blind_text(transformer: Any, layers: tuple[int, ...]) -> list[str]:
    """Zero the text keys and text value weights of ``layers``; returns the frozen tensor names."""
    import torch

    frozen = []
    with torch.no_grad():
        for layer in layers:
            attn = transformer.blocks[layer].attn2
            for name, tensor in (
                ("to_k.weight", attn.to_k.weight),
                ("to_k.bias", attn.to_k.bias),
                ("to_v.weight", attn.to_v.weight),
                ("to_v.bias", attn.to_v.bias),
            ):
                if name != "to_v.bias":
                    tensor.zero_()
                tensor.requires_grad_(False)
                frozen.append(f"blocks.{layer}.attn2.{name}")
    return frozen


def lagged_moments(x: Any, grid: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per frame f, (A_f, B_f) with b'A_f b / b'B_f b = sum_ij w_ij m_i m_j / sum_i m_i^2 for the
    frame's centred map m = x_hat b: Moran's I times S0 / N, queen (8-neighbour) binary
    weights.  Returns two (F', D, D) arrays.

    ``x``: (N, D) attention inputs of one forward, N = F' H' W' tokens in frame-major
    order.  Rows are normalised first, as the probe's cosine does.
    """
    import torch
    import torch.nn.functional as F

    frames, height, width = grid
    xn = F.normalize(x.double(), dim=-1).reshape(frames, height * width, -1)
    xc = xn - xn.mean(dim=1, keepdim=True)  # each frame's map is centred by Moran's I
    maps = xc.reshape(frames, height, width, -1).permute(0, 3, 1, 2)  # F, D, H, W
    kernel = torch.ones(1, 1, 3, 3, dtype=maps.dtype)
    kernel[0, 0, 1, 1] = 0
    d = maps.shape[1]
    lag = F.conv2d(maps.reshape(frames * d, 1, height, width), kernel, padding=1).reshape(frames, d, height * width)
    flat = maps.reshape(frames, d, height * width)
    a = flat @ lag.transpose(1, 2)
    return ((a + a.transpose(1, 2)) / 2).numpy(), (flat @ flat.transpose(1, 2)).numpy()


def mean_ratio(direction: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Mean over maps of b'A_m b / b'B_m b: what ``rank`` averages (Moran's I up to S0 / N)."""
    return float(
        np.mean(np.einsum("i,mij,j->m", direction, a, direction) / np.einsum("i,mij,j->m", direction, b, direction))
    )


def white_readout(
    a: np.ndarray, b: np.ndarray, components: int = READOUT_COMPONENTS, rounds: int = 5
) -> tuple[np.ndarray, float]:
    """The unit direction whose maps have mean Moran ratio nearest 0 (no spatial
    autocorrelation), over the maps (M, D, D) of ``a`` and ``b``.

    Each round pools the maps' moments with weights 1 / (d'B_m d) of the current best
    direction d (equal weights at first; then the pooled ratio approximates the mean of
    the per-map ratios, which is what the ranking averages), solves the generalised
    eigenproblem in the top ``components`` principal directions of the pooled B, and keeps
    the eigenvector whose *mean per-map* ratio is nearest 0.
    """
    weights = np.ones(len(a))
    best, best_ratio = None, np.inf
    for _ in range(rounds):
        pooled_a, pooled_b = np.tensordot(weights, a, 1), np.tensordot(weights, b, 1)
        evals, evecs = np.linalg.eigh(pooled_b)
        basis = evecs[:, np.argsort(evals)[::-1][:components]]  # D x r
        w, u = np.linalg.eigh(basis.T @ pooled_b @ basis)
        whiten = u @ np.diag(w**-0.5) @ u.T
        _, vectors = np.linalg.eigh(whiten @ (basis.T @ pooled_a @ basis) @ whiten)
        for k in range(vectors.shape[1]):
            direction = basis @ (whiten @ vectors[:, k])
            direction /= np.linalg.norm(direction)
            ratio = mean_ratio(direction, a, b)
            if abs(ratio) < abs(best_ratio):
                best, best_ratio = direction, ratio
        weights = 1.0 / np.einsum("i,mij,j->m", best, b, best)
        weights /= weights.mean()
    return best, float(best_ratio)


def _capture_inputs(transformer: Any, layers: tuple[int, ...]) -> tuple[dict[int, list[Any]], list[Any]]:
    store: dict[int, list[Any]] = {layer: [] for layer in layers}
    handles = []
    for layer in layers:

        def hook(module, args, kwargs, layer=layer):
            hidden = args[0] if args else kwargs["hidden_states"]
            store[layer].append(hidden[0].detach().clone())

        handles.append(transformer.blocks[layer].attn2.register_forward_pre_hook(hook, with_kwargs=True))
    return store, handles


def retarget_text_value(attn: Any, new: Any) -> None:
    """Set a text-blind block's constant text value b to ``new`` without changing what the
    block computes: its text attention returns b at every token and is added to the image
    attention before ``to_out``, so ``to_out.bias += W_out (b_old - b_new)`` undoes it."""
    import torch

    with torch.no_grad():
        old = attn.to_v.bias.detach().double()
        out = attn.to_out[0]
        out.bias.copy_((out.bias.double() + out.weight.double() @ (old - new.double())).to(out.bias.dtype))
        attn.to_v.bias.copy_(new.to(attn.to_v.bias.dtype))


def set_readout(pipe: Any, layers: tuple[int, ...], scenes: list[Any], *, steps: int, seed: int) -> dict[str, Any]:
    """Step 3 of the module docstring: choose each planted block's b, keep its function."""
    import torch

    from layerscope.adapters.registry import resolve_adapter
    from layerscope_testbed.shapes.evaluate import generate

    transformer = pipe.transformer
    grid = resolve_adapter(pipe).token_grid(9, 256, 256)
    store, handles = _capture_inputs(transformer, layers)
    try:
        for index, scene in enumerate(scenes):
            generate(pipe, scene, steps=steps, seed=seed + index, guidance=5.0)
    finally:
        for handle in handles:
            handle.remove()
    report = {}
    with torch.no_grad():
        for layer in layers:
            # the cond branch, which the probe records: the pipeline calls cond first, then uncond
            moments = [lagged_moments(x, grid) for x in store[layer][0::2]]
            a, b = np.concatenate([m[0] for m in moments]), np.concatenate([m[1] for m in moments])
            attn = transformer.blocks[layer].attn2
            old = attn.to_v.bias.detach().double()
            direction, ratio = white_readout(a, b)
            new = torch.from_numpy(direction) * (old.norm() if old.norm() > 0 else 1.0)
            before = mean_ratio(old.numpy() / old.norm().item(), a, b)
            retarget_text_value(attn, new)
            report[str(layer)] = {"moran_ratio_before": round(before, 5), "moran_ratio_after": round(ratio, 5)}
    return report


def plant(config: PlantConfig) -> Path:
    """Build the planted model (module docstring) into ``config.out``; returns the directory.

    Runs at ``config.threads`` torch threads (results depend on the count) and restores the
    caller's count afterwards: a library call must not change the process's thread setting.
    """
    import torch

    previous = torch.get_num_threads()
    try:
        return _plant(config)
    finally:
        torch.set_num_threads(previous)


def _plant(config: PlantConfig) -> Path:
    import torch

    from layerscope.loading import load_pipeline
    from layerscope_testbed import shipped_model_dir
    from layerscope_testbed.shapes.train import (
        TrainConfig,
        _Log,
        _videos,
        drop_source_paths,
        encode_training_set,
        train_dit,
    )
    from layerscope_testbed.shapes.world import sample_scenes

    torch.set_num_threads(config.threads)  # results depend on the thread count: fixed and recorded
    torch.manual_seed(config.seed)
    base = Path(config.base) if config.base else shipped_model_dir()
    out = Path(config.out)
    staging = out.with_name(out.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(base, staging, ignore=shutil.ignore_patterns("train_log.jsonl", "MODEL_CARD.md"))
    log = _Log(staging / "plant_log.jsonl")
    log("config", **{k: v for k, v in asdict(config).items() if k not in ("out", "base")})

    pipe, _ = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    transformer = pipe.transformer
    frozen = blind_text(transformer, config.layers)

    scenes = sample_scenes(config.clips, split="train", seed=config.seed + 500)
    data = encode_training_set(pipe, scenes, _videos(scenes), log)
    train = TrainConfig(
        out=str(staging), seed=config.seed, lr_dit=config.lr, dit_warmup=10, steps={"dit": config.steps}
    )
    train_dit(transformer, data, train, 0.0, log)
    for name, tensor in transformer.named_parameters():
        tensor.requires_grad_(True)
        if name in frozen and not name.endswith("to_v.bias") and bool(tensor.detach().abs().max() > 0):
            raise RuntimeError(f"{name} moved during the fine-tune; the planted layers would see the text")

    parent_bias = _parent_value_biases(base, config.layers)
    for layer in config.layers:
        if not torch.equal(transformer.blocks[layer].attn2.to_v.bias.detach().cpu(), parent_bias[layer]):
            raise RuntimeError(f"blocks.{layer}.attn2.to_v.bias moved during the fine-tune; it must stay the parent's")
    readout: dict[str, Any] = {}
    if config.tune_readout:  # circular by construction: see the module docstring, step 3
        calibration = sample_scenes(config.calibration_scenes, split="train", seed=config.seed + 900)
        readout = set_readout(pipe, config.layers, calibration, steps=config.calibration_steps, seed=config.seed + 77)
        log("readout", **readout)

    transformer.save_pretrained(staging / "transformer", safe_serialization=True)
    drop_source_paths(staging)  # the base model's directory on this machine must not travel
    losses = [json.loads(line) for line in (staging / "plant_log.jsonl").read_text().splitlines()]
    dit_losses = [r["loss"] for r in losses if r.get("stage") == "dit"]
    info = json.loads((base / "layerscope_model.json").read_text())
    (staging / "layerscope_model.json").write_text(
        json.dumps(
            {
                "name": PLANTED_MODEL_NAME,
                "version": info.get("version", 1),
                "seed": config.seed,
                "weights": "planted",
                "note": f"{info['name']} with blocks {list(config.layers)} text-blind in cross-attention "
                "(planted semantic-weak layers; see MODEL_CARD.md)",
                "planted_layers": list(config.layers),
                "base_model": f"{info['name']}-v{info.get('version', 1)}",
                "plant_config": {k: v for k, v in asdict(config).items() if k not in ("out", "base")},
                "frozen_tensors": frozen,
                "finetune_loss_first_last": [dit_losses[0], dit_losses[-1]] if dit_losses else [],
                "readout": readout,
                # the same CLIP as the parent: its measured Focal Guidance defaults hold here too
                **({"focal_guidance": info["focal_guidance"]} if "focal_guidance" in info else {}),
                **({"generation_defaults": info["generation_defaults"]} if "generation_defaults" in info else {}),
            },
            indent=2,
        )
    )
    (staging / "MODEL_CARD.md").write_text(_card(config, readout, dit_losses))
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def _parent_value_biases(base: Path, layers: tuple[int, ...]) -> dict[int, Any]:
    """The parent checkpoint's ``attn2.to_v.bias`` of each planted block, read from its
    safetensors (the planted block keeps it bit for bit: nothing is chosen by looking at maps)."""
    from safetensors import safe_open

    wanted = {f"blocks.{layer}.attn2.to_v.bias": layer for layer in layers}
    found: dict[int, Any] = {}
    for path in sorted((base / "transformer").glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in set(handle.keys()) & set(wanted):
                found[wanted[key]] = handle.get_tensor(key)
    missing = sorted(set(layers) - set(found))
    if missing:
        raise RuntimeError(f"the parent checkpoint has no attn2.to_v.bias for blocks {missing}")
    return found


def _card(config: PlantConfig, readout: dict[str, Any], losses: list[float]) -> str:
    layers = ", ".join(map(str, config.layers))
    if not readout:
        return _card_cause_only(config, layers, losses)
    rows = "\n".join(
        f"| {layer} | {r['moran_ratio_before']:.4f} | {r['moran_ratio_after']:.4f} |" for layer, r in readout.items()
    )
    loss = f"{losses[0]:.4f} -> {losses[-1]:.4f} (logged every 10 steps)" if losses else "no steps"
    return f"""# {PLANTED_MODEL_NAME}

The shipped shapes-world model with **planted semantic-weak layers {layers}**: their
cross-attention never sees the text (text keys and value weights zero, frozen), the rest
of the transformer fine-tuned for {config.steps} steps on {config.clips} training clips (lr {config.lr:g},
seed {config.seed}); fine-tune loss {loss}. The probe readout of each planted block (its
constant text value b) was then set to the direction with the least spatial
autocorrelation on {config.calibration_scenes} calibration videos, with `to_out.0.bias` compensating, so
the network's function is unchanged by that step. Built by
`layerscope testbed plant --layers {config.layers[0]}-{config.layers[-1]} --seed {config.seed}`
(see `testbed/layerscope_testbed/shapes/plant.py` for why each step is there).

| planted block | mean Moran ratio of cos(b, z) on calibration maps, trained b | chosen b |
| --- | --- | --- |
{rows}

**Circular:** this model was built with `--tune-readout`, so the planted blocks' maps were
made structureless by construction; a ranking that finds them recovers that choice, not
text-blindness. This is a test instrument for LayerScope's ranking and for Focal
Guidance, not a better model; see `examples/planted_truth.py`.
"""


def _card_cause_only(config: PlantConfig, layers: str, losses: list[float]) -> str:
    loss = f"{losses[0]:.4f} -> {losses[-1]:.4f} (logged every 10 steps)" if losses else "no steps"
    return f"""# {PLANTED_MODEL_NAME}

The shipped shapes-world model with **text-blind cross-attention in blocks {layers}**:
their text keys and text value weights are zero and frozen, and their text value bias is
the parent's, bit for bit, and frozen; the rest of the transformer was fine-tuned for
{config.steps} steps on {config.clips} training clips (lr {config.lr:g}, seed {config.seed});
fine-tune loss {loss}. Only the cause is planted: nothing was chosen by looking at
recorded maps, so whether an instrument (Eq. 10's map, the contrastive map, the causal
influence) finds these blocks is an open question that `examples/instrument_study.py`
measures. Built by `layerscope testbed plant --layers {config.layers[0]}-{config.layers[-1]}
--seed {config.seed}` (see `testbed/layerscope_testbed/shapes/plant.py`).

This is a test instrument for LayerScope's instruments and for Focal Guidance, not a
better model.
"""
