"""Benchmark: LayerScope beside attention-map-diffusers 1.0 and nnsight 0.8 on the same Wan I2V pipeline.

Issue #41.  One process, one pipeline object, the same image, prompt, seed and steps for
every tool, timed interleaved (plain, tool, plain, tool, ..., plain) so that each tool's
ratio is against the plain runs beside it:

  plain         the pipeline call :func:`layerscope.recording.record` makes, nothing attached
  ls-attention  ``record(..., probe="attention")``: softmax mass on the keyword's tokens,
                heads averaged, streamed into a Zarr store (the quantity attention-map-diffusers
                computes)
  ls-hidden     ``record(..., probe="hidden")``: the paper's Eq. 10, streamed into a store
  amd           ``AttentionCapture(pipe, relations="video->text", layers="all", timesteps="all")``
                (attention-map-diffusers 1.0.0, default ``mode="fast"``: it keeps every
                attention call's q and k in RAM and recomputes the maps in ``compute()``,
                bounded by ``max_capture_bytes``, 8 GiB by default)
  nnsight       ``tracer.cache(modules=[every blocks.i.attn2], include_inputs=True,
                include_output=False)`` inside ``DiffusionModel.generate``: each block's
                cross-attention input at every call, the raw material of Eq. 10 (nnsight 0.8.1)

Measured per tool: the wall-time ratio to plain; the time from the end of generation to a
ranked layer table; the bytes kept per (layer, step); the peak RSS growth of 5, 20 and 50
steps (each in a fresh process, peak = VmHWM reset through /proc/self/clear_refs after
loading); and, once, untimed, the agreement of the maps (LayerScope ``attention`` vs
attention-map-diffusers ``video->text``, LayerScope ``hidden`` vs Eq. 10 computed from
nnsight's saved inputs, both vs a hand computation from the block's inputs with an
explicit softmax, itself checked against ``F.scaled_dot_product_attention`` and the
block's output).

"Ranked layer table": LayerScope runs ``rank_stores`` (what ``layerscope rank`` runs:
Moran's I written back into the store, bootstrap intervals, band test).  The peers ship
no ranking, so their table is the least a user must write: maps from what the tool kept
(``compute()`` and the keyword's columns; Eq. 10 from the saved inputs), Moran's I with
LayerScope's vectorised kernel (``layerscope.metrics.morans_i``; esda is ~500x slower per
map), the mean over steps, keywords and frames, sorted.  No intervals, no verdict.

Cases:
  a  the shipped model (``layerscope_testbed.resolve_model("default")``, 256x256, 9 frames,
     6 steps, CFG 5): timing, time to table, bytes, agreement
  b  the shipped model: peak RSS growth at 5, 20, 50 steps (``--quick``: 5 and 20, without
     ls-attention, which streams like ls-hidden), each tool and step count in a fresh process
  c  the realistic-shape stack of ``benchmarks/record_overhead.py`` case b (Wan-1.3B width:
     dim 1536, 12 heads, ffn 8960, 4 blocks, random weights, fp32) on the 480p latent
     grid 3x30x52, *transformer only* (one forward = one step, cond branch only):
     attention-map-diffusers gets an object whose ``transformer`` is the model (it only
     reads ``.transformer``/``.unet``), nnsight wraps the transformer (``NNsight``);
     timing, time to table, bytes, agreement
  d  the realistic stack: peak RSS growth after 1 and 2 forwards (fresh processes)

Also printed (arithmetic, not measured): what each tool would keep for a Wan2.1-I2V-14B
480p run (40 blocks, dim 5120, 81 frames = 21x30x52 tokens, bf16, 50 steps, CFG, 3
keywords), from the per-call byte formulas that the measured cases check.

nnsight installs an inert ``forward`` controller on every module it wraps, for good; the
model is wrapped once before any timing, so every variant (plain included) runs with it.

Reading the RSS numbers: growth includes the generation's own transient (attention
buffers, the VAE decode), the same for every tool, so compare a tool with ``plain``; what
a tool holds by its own count is printed beside it.  attention-map-diffusers' peak through
``compute()`` is several times its live maps under glibc's default malloc (transient
per-record buffers interleaved with kept maps fragment the heap); with
``MALLOC_MMAP_THRESHOLD_=131072`` it falls to about the live maps.  The stack's children
warm up on a tiny stack, so their growth also holds the big model's first activations.

Run time on the 2-core machine: ``--quick`` about 5 minutes, the full run about 22.

Needs the pinned peers: ``pip install -c requirements/constraints.txt -e ".[peers]"``.

    python benchmarks/peers.py [--quick] [--smoke] [--cases a,b,c,d] [--repeats N]
                               [--out benchmarks/results/peers.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _common import interleaved_runs, print_table, summary, transformer_only_adapter, write_json

TOOLS = ("plain", "ls-attention", "ls-hidden", "amd", "nnsight")
PEERS = {"attention-map-diffusers": "1.0.0", "nnsight": "0.8.1"}
WAN_TEXT_TOKENS = 512
RSS_STEPS = (5, 20, 50)
RSS_STEPS_QUICK = (5, 20)
#: ``--quick`` leaves ls-attention out of the RSS processes (it streams like ls-hidden) to stay within 5 minutes
RSS_TOOLS_QUICK = ("plain", "ls-hidden", "amd", "nnsight")
RSS_FORWARDS = (1, 2)


@dataclass(frozen=True)
class Shipped:
    """Generation settings on the shipped model (the packaged example unless ``--smoke``)."""

    height: int = 256
    width: int = 256
    num_frames: int = 9
    steps: int = 6
    guidance_scale: float = 5.0
    seed: int = 0


@dataclass(frozen=True)
class Stack:
    """The transformer-only stack (record_overhead.py case b unless ``--smoke``)."""

    heads: int = 12
    head_dim: int = 128
    ffn_dim: int = 8960
    layers: int = 4
    grid: tuple[int, int, int] = (3, 30, 52)
    text_dim: int = 4096
    image_dim: int = 1280
    image_tokens: int = 257
    keyword_tokens: tuple[tuple[int, ...], ...] = ((3,), (7, 8), (12,))

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim


SMOKE_SHIPPED = Shipped(height=128, width=128, num_frames=5, steps=2)
SMOKE_STACK = Stack(
    heads=2, head_dim=16, ffn_dim=64, layers=2, grid=(1, 6, 8), text_dim=32, image_dim=16, image_tokens=8
)


def _testbed() -> Any:
    import layerscope_testbed as testbed

    return testbed


# -- measuring ----------------------------------------------------------------------------------------


def _proc_status(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def reset_peak_rss() -> int:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); return that RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _proc_status("VmRSS")


def peak_rss() -> int:
    return _proc_status("VmHWM")


def tensor_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one storage count once)."""
    import torch

    seen: dict[int, int] = {}

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    visit(tensors)
    return sum(seen.values())


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, Any]:
    """``plain`` around every other variant: P V1 P V2 ... P, ``repeats`` times (as record_overhead.py).

    Each callable returns its own measured seconds.  The ratio of a variant is the median
    of its run divided by the mean of the two plain runs around it.
    """
    times, ratios = interleaved_runs(variants, repeats)
    return {
        "seconds": {name: summary(values) for name, values in times.items()},
        "ratio": {name: {**summary(values), "values": values} for name, values in ratios.items()},
        "raw_seconds": times,
    }


# -- what each peer user writes to get a ranked table ------------------------------------------------------


def peer_table(maps: Any, layers: list[int]) -> list[dict[str, Any]]:
    """(steps, layers, K, F, H, W) maps -> layers sorted by mean Moran's I (weakest first)."""
    import numpy as np

    from layerscope.metrics import morans_i

    moran = morans_i(np.asarray(maps, dtype=np.float64))  # (steps, layers, K, F)
    per_layer = np.nanmean(moran.transpose(1, 0, 2, 3).reshape(len(layers), -1), axis=1)
    order = np.argsort(per_layer, kind="stable")
    return [{"rank": r + 1, "layer": layers[i], "moran_i": float(per_layer[i])} for r, i in enumerate(order)]


def amd_maps(maps: Any, keyword_tokens: list[list[int]], steps: int, layers: int) -> Any:
    """attention-map-diffusers records -> (steps, layers, K, F, H, W), cond branch (first call of a step).

    A record holds the head mean of every video query's softmax over the 512 text keys,
    (1, 1, N, 512); a keyword of several tokens sums their columns, as LayerScope does.
    """
    import numpy as np

    out = None
    for record in maps.records:
        if record.relation != "video->text" or record.metadata.get("denoiser_call_index", 0) != 0:
            continue
        grid = record.q_shape
        layer = int(record.layer_id.split(".")[2])  # transformer.blocks.<i>.attn2
        data = record.data[0, 0].float()
        columns = [
            data[:, list(tokens)].sum(-1).reshape(grid.frames, grid.height, grid.width) for tokens in keyword_tokens
        ]
        if out is None:
            out = np.full(
                (steps, layers, len(keyword_tokens), grid.frames, grid.height, grid.width), np.nan, dtype=np.float32
            )
        out[record.step_index, layer] = np.stack([c.numpy() for c in columns])
    return out


def eq10_maps(attn: Any, visual: Any, context: Any, keyword_tokens: list[list[int]], grid: tuple[int, int, int]):
    """Eq. 10 from one saved cross-attention call: cos(V_k, z), V_k the mean value of the keyword's rows."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        values = attn.to_v(context[:, -WAN_TEXT_TOKENS:])[0].float()  # (512, D): the text rows' values
        keyword_values = torch.stack([values[list(tokens)].mean(0) for tokens in keyword_tokens])
        z = F.normalize(visual[0].float(), dim=-1)
        return (F.normalize(keyword_values, dim=-1) @ z.T).reshape(len(keyword_tokens), *grid)


def hand_attention(attn: Any, visual: Any, context: Any, keyword_tokens: list[list[int]], grid):
    """The attention map by hand from one cross-attention call, and the call's output rebuilt.

    q, k, v exactly as diffusers' ``WanAttnProcessor`` forms them; the text softmax written
    out (no mask: Wan passes none, padding rows included); the output rebuilt with
    ``F.scaled_dot_product_attention`` over the text keys plus the I2V image-context branch
    (a separate softmax over ``add_k_proj`` keys, summed before ``to_out``).  Returns
    (maps (K, F, H, W), rebuilt output (B, N, D), max |explicit softmax @ v - SDPA| / max |SDPA| in float64).
    """
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        text, image = context[:, -WAN_TEXT_TOKENS:], context[:, :-WAN_TEXT_TOKENS]
        heads = attn.heads
        q = attn.norm_q(attn.to_q(visual)).unflatten(2, (heads, -1)).transpose(1, 2)  # B, H, N, d
        k = attn.norm_k(attn.to_k(text)).unflatten(2, (heads, -1)).transpose(1, 2)
        v = attn.to_v(text).unflatten(2, (heads, -1)).transpose(1, 2)
        probs = torch.softmax((q.double() @ k.double().transpose(-1, -2)) / q.shape[-1] ** 0.5, dim=-1)
        sdpa = F.scaled_dot_product_attention(q, k, v)  # what the model runs (float32)
        # the definitions agree (scale 1/sqrt(d), no mask): both in float64, relative to the output's scale
        sdpa64 = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
        explicit_gap = float((probs @ v.double() - sdpa64).abs().max() / sdpa64.abs().max())
        out = sdpa
        if image.shape[1]:
            k_img = attn.norm_added_k(attn.add_k_proj(image)).unflatten(2, (heads, -1)).transpose(1, 2)
            v_img = attn.add_v_proj(image).unflatten(2, (heads, -1)).transpose(1, 2)
            out = out + F.scaled_dot_product_attention(q, k_img, v_img)
        rebuilt = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2)))
        maps = torch.stack([probs[0][:, :, list(tokens)].sum(-1).mean(0) for tokens in keyword_tokens])
        return maps.float().reshape(len(keyword_tokens), *grid), rebuilt, explicit_gap


def nnsight_entries(cache: Any, layers: int, prefix: str) -> list[list[Any]]:
    """Per layer, the cached ``(args, kwargs)`` of every call of ``blocks.<i>.attn2``."""
    return [[entry.inputs for entry in cache._cache.entries[f"{prefix}.blocks.{i}.attn2"]] for i in range(layers)]


def nnsight_outputs(cache: Any, layers: int, prefix: str) -> list[list[Any]]:
    return [[entry.output for entry in cache._cache.entries[f"{prefix}.blocks.{i}.attn2"]] for i in range(layers)]


# -- case a: the shipped model --------------------------------------------------------------------------


class ShippedSession:
    """The shipped pipeline with every tool's runner; nnsight wraps it once, up front."""

    def __init__(self, settings: Shipped, tmp: Path, wrap_nnsight: bool = True):
        import numpy as np
        from PIL import Image

        from layerscope.adapters.registry import resolve_adapter
        from layerscope.loading import load_pipeline

        testbed = _testbed()
        self.settings = settings
        self.tmp = tmp
        self.prompt = testbed.EXAMPLE_PROMPT
        self.keywords = list(testbed.EXAMPLE_KEYWORDS)
        self.pipe, self.model_dir = load_pipeline(testbed.resolve_model("default"))
        self.pipe.set_progress_bar_config(disable=True)
        image = Image.fromarray(np.asarray(testbed.example_image())).convert("RGB")
        self.image = image.resize((settings.width, settings.height), Image.Resampling.BICUBIC)
        adapter = resolve_adapter(self.pipe)
        self.keyword_tokens = [list(k.token_indices) for k in adapter.map_keywords(self.prompt, self.keywords)]
        self.grid = adapter.token_grid(settings.num_frames, settings.height, settings.width)
        self.layers = adapter.num_layers()
        self.counter = iter(range(10**6))
        self.nn_model = self._wrap_nnsight() if wrap_nnsight else None

    def _wrap_nnsight(self) -> Any:
        # DiffusionModel over this very pipeline (no second copy of the weights): the
        # module nnsight's own loader builds around a pipeline after from_pretrained.
        from nnsight.modeling.diffusion import DiffusionModel, _PipelineModule

        model = DiffusionModel(_PipelineModule(self.pipe))
        model.pipeline = self.pipe
        return model

    def call_kwargs(self, steps: int | None = None) -> dict[str, Any]:
        """The pipeline call :func:`layerscope.recording.record` makes."""
        import torch

        s = self.settings
        return {
            "image": self.image,
            "prompt": self.prompt,
            "height": s.height,
            "width": s.width,
            "num_frames": s.num_frames,
            "num_inference_steps": steps or s.steps,
            "generator": torch.Generator(device="cpu").manual_seed(s.seed),
            "output_type": "np",
            "guidance_scale": s.guidance_scale,
            "negative_prompt": None,
        }

    # each runner: (generation seconds, state for the table and the bytes)
    def plain(self, steps: int | None = None) -> tuple[float, Any]:
        started = time.perf_counter()
        out = self.pipe(**self.call_kwargs(steps))
        return time.perf_counter() - started, out.frames

    def layerscope(self, probe: str, steps: int | None = None, dtype: str = "float16") -> tuple[float, Any]:
        from layerscope.recording import record

        s = self.settings
        store = self.tmp / f"{probe}{next(self.counter)}.zarr"
        started = time.perf_counter()
        result = record(
            self.pipe,
            store,
            image=self.image,
            prompt=self.prompt,
            keywords=self.keywords,
            height=s.height,
            width=s.width,
            num_frames=s.num_frames,
            num_inference_steps=steps or s.steps,
            seed=s.seed,
            guidance_scale=s.guidance_scale,
            probe=probe,
            dtype=dtype,
            progress=False,
        )
        return time.perf_counter() - started, result

    def amd(self, steps: int | None = None) -> tuple[float, Any]:
        from attention_map_diffusers import AttentionCapture

        started = time.perf_counter()
        with AttentionCapture(self.pipe, relations="video->text", layers="all", timesteps="all") as capture:
            out = self.pipe(**self.call_kwargs(steps))
        return time.perf_counter() - started, (capture, out.frames)

    def nnsight(self, steps: int | None = None, include_output: bool = False) -> tuple[float, Any]:
        model = self.nn_model
        started = time.perf_counter()
        with model.generate(**self.call_kwargs(steps)) as tracer:
            modules = [model.transformer.blocks[i].attn2 for i in range(self.layers)]
            cache = tracer.cache(modules=modules, include_inputs=True, include_output=include_output)
            out = model.output.save()
        return time.perf_counter() - started, (cache, out.frames)

    # -- from what each tool kept to a ranked table ---------------------------------------
    def ls_table(self, result: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        from layerscope.ranking import rank_stores

        ranking = rank_stores([result.path])
        table = sorted(ranking.layers, key=lambda row: row["moran_i"])
        return table, {"verdict": ranking.verdict}

    def amd_table(self, state: Any, steps: int) -> tuple[list[dict[str, Any]], Any]:
        capture, _ = state
        maps = amd_maps(capture.compute(), self.keyword_tokens, steps, self.layers)
        return peer_table(maps, list(range(self.layers))), maps

    def nnsight_maps(self, state: Any, steps: int) -> Any:
        import numpy as np

        cache, _ = state
        entries = nnsight_entries(cache, self.layers, "model.transformer")
        per_step = len(entries[0]) // steps  # 2 with CFG: cond then uncond
        out = np.empty((steps, self.layers, len(self.keyword_tokens), *self.grid), dtype=np.float32)
        for layer, calls in enumerate(entries):
            attn = self.pipe.transformer.blocks[layer].attn2
            for step in range(steps):
                args, _ = calls[step * per_step]
                out[step, layer] = eq10_maps(attn, args[0], args[1], self.keyword_tokens, self.grid).numpy()
        return out

    def nnsight_table(self, state: Any, steps: int) -> tuple[list[dict[str, Any]], Any]:
        maps = self.nnsight_maps(state, steps)
        return peer_table(maps, list(range(self.layers))), maps


def ls_store_maps(path: Path) -> Any:
    from layerscope.store import open_run

    return open_run(path)["similarity"].transpose("step", "layer", "keyword", "frame", "y", "x").values


def _ls_bytes(result: Any, steps: int, layers: int) -> dict[str, Any]:
    similarity = directory_bytes(Path(result.path) / "similarity")
    return {
        "kept_where": "disk (Zarr store; RAM: maps stream through a bounded writer queue)",
        "bytes_total": similarity,
        "bytes_store_total": result.bytes_on_disk,
        "bytes_per_layer_step": similarity / (steps * layers),
    }


def agreement_shipped(session: ShippedSession) -> dict[str, Any]:
    """Untimed: every tool once (also the warm-up), fp32 stores; the maps compared."""
    import numpy as np

    steps = session.settings.steps
    _, plain_frames = session.plain()
    _, ls_att = session.layerscope("attention", dtype="float32")
    _, ls_hid = session.layerscope("hidden", dtype="float32")
    _, amd_state = session.amd()
    _, nn_state = session.nnsight(include_output=True)
    ls_attention = ls_store_maps(ls_att.path)
    ls_hidden = ls_store_maps(ls_hid.path)
    session.ls_table(ls_att)  # warms the ranking path (its imports) before anything is timed
    amd = amd_maps(amd_state[0].compute(), session.keyword_tokens, steps, session.layers)
    peer_table(amd, list(range(session.layers)))
    eq10 = session.nnsight_maps(nn_state, steps)

    cache = nn_state[0]
    entries = nnsight_entries(cache, session.layers, "model.transformer")
    outputs = nnsight_outputs(cache, session.layers, "model.transformer")
    per_step = len(entries[0]) // steps
    hand = np.empty_like(amd)
    rebuilt_gap = explicit_gap = 0.0
    for layer in range(session.layers):
        attn = session.pipe.transformer.blocks[layer].attn2
        for step in range(steps):
            args, _ = entries[layer][step * per_step]
            maps, rebuilt, gap = hand_attention(attn, args[0], args[1], session.keyword_tokens, session.grid)
            hand[step, layer] = maps.numpy()
            rebuilt_gap = max(rebuilt_gap, float((rebuilt - outputs[layer][step * per_step]).abs().max()))
            explicit_gap = max(explicit_gap, gap)
    uint8 = np.clip(plain_frames[0], 0, 1) * 255.0 + 0.5
    return {
        "maps_compared": int(np.prod(amd.shape[:3])),
        "shape_steps_layers_keywords_frames_y_x": list(amd.shape),
        "keyword_tokens": session.keyword_tokens,
        "ls_attention_vs_amd": float(np.abs(ls_attention - amd).max()),
        "ls_attention_vs_hand": float(np.abs(ls_attention - hand).max()),
        "amd_vs_hand": float(np.abs(amd - hand).max()),
        "ls_hidden_vs_eq10_from_nnsight": float(np.abs(ls_hidden - eq10).max()),
        "hand_explicit_softmax_vs_sdpa_relative": explicit_gap,
        "hand_rebuilt_attn2_output_vs_model": rebuilt_gap,
        "attention_mass_range": [float(np.nanmin(amd)), float(np.nanmax(amd))],
        "video_vs_plain_max_abs": {
            "amd": float(np.abs(amd_state[1] - plain_frames).max()),
            "nnsight": float(np.abs(nn_state[1] - plain_frames).max()),
            "ls-attention_uint8": int(np.abs(ls_att.video.astype(int) - uint8.astype(np.uint8).astype(int)).max()),
            "ls-hidden_uint8": int(np.abs(ls_hid.video.astype(int) - uint8.astype(np.uint8).astype(int)).max()),
        },
    }


def bench_shipped(settings: Shipped, repeats: int) -> dict[str, Any]:
    steps = settings.steps
    tables: dict[str, list[float]] = {tool: [] for tool in TOOLS if tool != "plain"}
    kept: dict[str, Any] = {}
    rankings: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="layerscope-peers-") as tmp:
        session = ShippedSession(settings, Path(tmp))
        agreement = agreement_shipped(session)
        layers = session.layers

        def after(tool: str, state: Any) -> None:
            started = time.perf_counter()
            if tool.startswith("ls-"):
                table, extra = session.ls_table(state)
                kept[tool] = _ls_bytes(state, steps, layers)
                shutil.rmtree(state.path, ignore_errors=True)
            elif tool == "amd":
                capture = state[0]
                before = capture.collector.capture_bytes
                table, _ = session.amd_table(state, steps)
                kept[tool] = {
                    "kept_where": "RAM (q and k of every attention call, both CFG branches; then maps)",
                    "bytes_total": before,
                    "bytes_per_layer_step": before / (steps * layers),
                    "bytes_after_compute": capture.collector.capture_bytes,
                    "records": len(capture.records),
                }
                extra = {}
            else:
                bytes_kept = tensor_bytes(nnsight_entries(state[0], layers, "model.transformer"))
                table, _ = session.nnsight_table(state, steps)
                kept[tool] = {
                    "kept_where": "RAM (each attn2 call's inputs, both CFG branches)",
                    "bytes_total": bytes_kept,
                    "bytes_per_layer_step": bytes_kept / (steps * layers),
                }
                extra = {}
            tables[tool].append(time.perf_counter() - started)
            rankings[tool] = {"order": [row["layer"] for row in table], **extra}

        def runner(tool: str) -> Callable[[], float]:
            def run() -> float:
                if tool == "ls-attention":
                    seconds, state = session.layerscope("attention")
                elif tool == "ls-hidden":
                    seconds, state = session.layerscope("hidden")
                else:
                    seconds, state = getattr(session, tool)()
                after(tool, state)
                return seconds

            return run

        variants: dict[str, Callable[[], float]] = {"plain": lambda: session.plain()[0]}
        variants.update({tool: runner(tool) for tool in TOOLS if tool != "plain"})
        result = interleaved(variants, repeats)
    result["to_table_seconds"] = {tool: summary(values) for tool, values in tables.items()}
    result["to_table_raw"] = tables
    result["kept"] = kept
    result["rankings"] = rankings
    result["agreement"] = agreement
    result["same_layer_order"] = {
        "ls-attention_vs_amd": rankings["ls-attention"]["order"] == rankings["amd"]["order"],
        "ls-hidden_vs_nnsight_eq10": rankings["ls-hidden"]["order"] == rankings["nnsight"]["order"],
    }
    tokens = session.grid[0] * session.grid[1] * session.grid[2]
    dim = int(session.pipe.transformer.config.num_attention_heads * session.pipe.transformer.config.attention_head_dim)
    result["formula_check"] = formula_check(kept, tokens, dim, calls=steps * layers * 2)
    result["setup"] = {
        **asdict(settings),
        "keywords": session.keywords,
        "prompt": session.prompt,
        "keyword_tokens": session.keyword_tokens,
        "grid": list(session.grid),
        "layers": layers,
        "model_dir": str(session.model_dir),
    }
    return result


# -- case c: the realistic-shape stack, transformer only ----------------------------------------------------


class TransformerOnly:
    """What attention-map-diffusers needs of a pipeline: it reads ``.transformer`` (and ``.unet``)."""

    def __init__(self, transformer: Any):
        self.transformer = transformer


class StackSession:
    def __init__(self, stack: Stack, tmp: Path, wrap_nnsight: bool = True):
        import torch
        from diffusers import WanTransformer3DModel

        self.stack = stack
        self.tmp = tmp
        torch.manual_seed(0)
        self.transformer = WanTransformer3DModel(
            num_attention_heads=stack.heads,
            attention_head_dim=stack.head_dim,
            in_channels=36,
            out_channels=16,
            text_dim=stack.text_dim,
            ffn_dim=stack.ffn_dim,
            num_layers=stack.layers,
            cross_attn_norm=True,
            image_dim=stack.image_dim,
            added_kv_proj_dim=stack.dim,
        ).eval()
        frames, height, width = stack.grid
        g = torch.Generator().manual_seed(1)
        self.inputs = {
            "hidden_states": torch.randn(1, 36, frames, 2 * height, 2 * width, generator=g),
            "encoder_hidden_states": torch.randn(1, WAN_TEXT_TOKENS, stack.text_dim, generator=g),
            "encoder_hidden_states_image": torch.randn(1, stack.image_tokens, stack.image_dim, generator=g),
            "return_dict": False,
        }
        self.keyword_tokens = [list(t) for t in stack.keyword_tokens]
        self.adapter = transformer_only_adapter(self.transformer)
        self.counter = iter(range(10**6))
        self.nn_model = None
        if wrap_nnsight:
            from nnsight import NNsight

            self.nn_model = NNsight(self.transformer)

    def forward(self, index: int = 0) -> Any:
        import torch

        with torch.no_grad(), self.transformer.cache_context("cond"):
            return self.transformer(**self.inputs, timestep=torch.tensor([999 - 20 * index]))

    def plain(self, forwards: int = 1) -> tuple[float, Any]:
        started = time.perf_counter()
        for i in range(forwards):
            self.forward(i)
        return time.perf_counter() - started, None

    def layerscope(self, probe: str, forwards: int = 1, dtype: str = "float16") -> tuple[float, Any]:
        from layerscope.probes import ProbeConfig, apply_probes
        from layerscope.store import StoreLayout, StoreWriter

        layers = list(range(self.stack.layers))
        layout = StoreLayout(
            steps=list(range(forwards)),
            layers=layers,
            blocks=[f"blocks.{i}" for i in layers],
            keywords=[f"keyword{i}" for i in range(len(self.keyword_tokens))],
            grid=self.stack.grid,
            video_shape=(1, 8, 8),
            dtype=dtype,
            attrs={"model_id": "benchmark-wan-1.3b-width-random", "weights": "random"},
        )
        path = self.tmp / f"{probe}{next(self.counter)}.zarr"
        # store creation is once per recording and left out, as in record_overhead.py case b
        writer = StoreWriter(path, layout, overwrite=True)
        config = ProbeConfig(keyword_tokens=self.keyword_tokens, grid=self.stack.grid, kind=probe)
        handle = apply_probes(self.adapter, config, writer.submit)
        try:
            started = time.perf_counter()
            for i in range(forwards):
                self.forward(i)
            writer.close()
            seconds = time.perf_counter() - started
        finally:
            handle.remove()
            writer.close()
        return seconds, path

    def amd(self, forwards: int = 1) -> tuple[float, Any]:
        from attention_map_diffusers import AttentionCapture

        shim = TransformerOnly(self.transformer)
        started = time.perf_counter()
        with AttentionCapture(shim, relations="video->text", layers="all", timesteps="all") as capture:
            for i in range(forwards):
                self.forward(i)
        return time.perf_counter() - started, capture

    def nnsight(self, forwards: int = 1, include_output: bool = False) -> tuple[float, Any]:
        import torch

        model = self.nn_model
        caches = []
        started = time.perf_counter()
        for i in range(forwards):
            timestep = torch.tensor([999 - 20 * i])
            with (
                torch.no_grad(),
                self.transformer.cache_context("cond"),
                model.trace(**self.inputs, timestep=timestep) as tracer,
            ):
                modules = [model.blocks[b].attn2 for b in range(self.stack.layers)]
                caches.append(tracer.cache(modules=modules, include_inputs=True, include_output=include_output))
        return time.perf_counter() - started, caches

    def ls_table(self, path: Path) -> list[dict[str, Any]]:
        from layerscope.ranking import rank_stores

        return rank_stores([path]).layers

    def amd_maps(self, capture: Any, forwards: int) -> Any:
        return amd_maps(capture.compute(), self.keyword_tokens, forwards, self.stack.layers)

    def nnsight_maps(self, caches: list[Any]) -> Any:
        import numpy as np

        layers = self.stack.layers
        out = np.empty((len(caches), layers, len(self.keyword_tokens), *self.stack.grid), dtype=np.float32)
        for step, cache in enumerate(caches):
            for layer, calls in enumerate(nnsight_entries(cache, layers, "model")):
                args, _ = calls[0]
                attn = self.transformer.blocks[layer].attn2
                out[step, layer] = eq10_maps(attn, args[0], args[1], self.keyword_tokens, self.stack.grid).numpy()
        return out


def agreement_stack(session: StackSession) -> dict[str, Any]:
    import numpy as np

    _, ls_att = session.layerscope("attention", dtype="float32")
    _, ls_hid = session.layerscope("hidden", dtype="float32")
    _, capture = session.amd()
    _, caches = session.nnsight(include_output=True)
    amd = session.amd_maps(capture, 1)
    eq10 = session.nnsight_maps(caches)
    hand = np.empty_like(amd)
    rebuilt_gap = explicit_gap = 0.0
    for layer in range(session.stack.layers):
        attn = session.transformer.blocks[layer].attn2
        entry = caches[0]._cache.entries[f"model.blocks.{layer}.attn2"][0]
        args, _ = entry.inputs
        maps, rebuilt, gap = hand_attention(attn, args[0], args[1], session.keyword_tokens, session.stack.grid)
        hand[0, layer] = maps.numpy()
        rebuilt_gap = max(rebuilt_gap, float((rebuilt - entry.output).abs().max()))
        explicit_gap = max(explicit_gap, gap)
    ls_attention, ls_hidden = ls_store_maps(ls_att), ls_store_maps(ls_hid)
    session.ls_table(ls_att)  # warms the ranking path before anything is timed
    return {
        "maps_compared": int(np.prod(amd.shape[:3])),
        "ls_attention_vs_amd": float(np.abs(ls_attention - amd).max()),
        "ls_attention_vs_hand": float(np.abs(ls_attention - hand).max()),
        "amd_vs_hand": float(np.abs(amd - hand).max()),
        "ls_hidden_vs_eq10_from_nnsight": float(np.abs(ls_hidden - eq10).max()),
        "hand_explicit_softmax_vs_sdpa_relative": explicit_gap,
        "hand_rebuilt_attn2_output_vs_model": rebuilt_gap,
    }


def bench_stack(stack: Stack, repeats: int) -> dict[str, Any]:
    import torch

    tables: dict[str, list[float]] = {tool: [] for tool in TOOLS if tool != "plain"}
    kept: dict[str, Any] = {}
    rankings: dict[str, Any] = {}
    layers = stack.layers
    with tempfile.TemporaryDirectory(prefix="layerscope-peers-") as tmp:
        session = StackSession(stack, Path(tmp))
        agreement = agreement_stack(session)  # also the warm-up of every tool

        def run_tool(tool: str) -> Callable[[], float]:
            def run() -> float:
                if tool.startswith("ls-"):
                    seconds, path = session.layerscope(tool[3:])
                    started = time.perf_counter()
                    table = session.ls_table(path)
                    tables[tool].append(time.perf_counter() - started)
                    similarity = directory_bytes(path / "similarity")
                    kept[tool] = {
                        "kept_where": "disk (Zarr store)",
                        "bytes_total": similarity,
                        "bytes_per_layer_step": similarity / layers,
                    }
                    shutil.rmtree(path, ignore_errors=True)
                    rankings[tool] = [row["layer"] for row in sorted(table, key=lambda r: r["moran_i"])]
                elif tool == "amd":
                    seconds, capture = session.amd()
                    kept_bytes = capture.collector.capture_bytes
                    started = time.perf_counter()
                    table = peer_table(session.amd_maps(capture, 1), list(range(layers)))
                    tables[tool].append(time.perf_counter() - started)
                    kept[tool] = {
                        "kept_where": "RAM (q and k of every attention call)",
                        "bytes_total": kept_bytes,
                        "bytes_per_layer_step": kept_bytes / layers,
                        "bytes_after_compute": capture.collector.capture_bytes,
                    }
                    rankings[tool] = [row["layer"] for row in table]
                else:
                    seconds, caches = session.nnsight()
                    kept_bytes = tensor_bytes([nnsight_entries(c, layers, "model") for c in caches])
                    started = time.perf_counter()
                    table = peer_table(session.nnsight_maps(caches), list(range(layers)))
                    tables[tool].append(time.perf_counter() - started)
                    kept[tool] = {
                        "kept_where": "RAM (each attn2 call's inputs)",
                        "bytes_total": kept_bytes,
                        "bytes_per_layer_step": kept_bytes / layers,
                    }
                    rankings[tool] = [row["layer"] for row in table]
                return seconds

            return run

        variants: dict[str, Callable[[], float]] = {"plain": lambda: session.plain()[0]}
        variants.update({tool: run_tool(tool) for tool in TOOLS if tool != "plain"})
        result = interleaved(variants, repeats)
    result["to_table_seconds"] = {tool: summary(values) for tool, values in tables.items()}
    result["to_table_raw"] = tables
    result["kept"] = kept
    result["rankings"] = rankings
    result["agreement"] = agreement
    result["same_layer_order"] = {
        "ls-attention_vs_amd": rankings["ls-attention"] == rankings["amd"],
        "ls-hidden_vs_nnsight_eq10": rankings["ls-hidden"] == rankings["nnsight"],
    }
    tokens = stack.grid[0] * stack.grid[1] * stack.grid[2]
    result["formula_check"] = formula_check(kept, tokens, stack.dim, calls=layers)
    result["setup"] = {**asdict(stack), "dim": stack.dim, "dtype": "float32", "torch_threads": torch.get_num_threads()}
    return result


# -- cases b and d: peak RSS growth, one fresh process per tool and step count ------------------------------


def _tool_bytes(case: str, tool: str, session: Any, state: Any) -> int | None:
    """What the tool itself holds now, by its own accounting (None for LayerScope: nothing in RAM)."""
    if tool == "amd":
        return (state if case == "stack" else state[0]).collector.capture_bytes
    if tool == "nnsight":
        caches = state if case == "stack" else [state[0]]
        layers = session.stack.layers if case == "stack" else session.layers
        prefix = "model" if case == "stack" else "model.transformer"
        return tensor_bytes([nnsight_entries(c, layers, prefix) for c in caches])
    return None


def _measured_run(case: str, tool: str, session: Any, count: int, baseline: int | None) -> dict[str, Any]:
    """Generate with ``tool`` over ``count`` steps, then make the ranked table; RSS read at each end."""
    grow = (lambda value: value - baseline) if baseline is not None else (lambda value: None)
    if tool.startswith("ls-"):
        seconds, state = session.layerscope(tool[3:], count)
    else:
        seconds, state = getattr(session, tool)(count)
    run = {
        "generation_seconds": seconds,
        "peak_growth_generation_bytes": grow(peak_rss()),
        "rss_growth_after_generation_bytes": grow(_proc_status("VmRSS")),
        "tool_bytes_after_generation": _tool_bytes(case, tool, session, state),
    }
    started = time.perf_counter()
    if tool.startswith("ls-"):
        from layerscope.ranking import rank_stores

        rank_stores([state.path if case == "shipped" else state])
    elif tool == "amd":
        capture = state if case == "stack" else state[0]
        layers = session.layers if case == "shipped" else session.stack.layers
        maps = amd_maps(capture.compute(), session.keyword_tokens, count, layers)
        peer_table(maps, list(range(maps.shape[1])))
    elif tool == "nnsight":
        maps = session.nnsight_maps(state, count) if case == "shipped" else session.nnsight_maps(state)
        peer_table(maps, list(range(maps.shape[1])))
    run["to_table_seconds"] = time.perf_counter() - started
    run["peak_growth_to_table_bytes"] = grow(peak_rss())
    run["tool_bytes_after_table"] = _tool_bytes(case, tool, session, state)
    return run


def child(spec: str, smoke: bool) -> dict[str, Any]:
    """``shipped:TOOL:STEPS`` or ``stack:TOOL:FORWARDS``: set up, warm up, reset VmHWM, run, table, report."""
    import gc

    case, tool, count_text = spec.split(":")
    count = int(count_text)
    with tempfile.TemporaryDirectory(prefix="layerscope-peers-") as tmp:
        # warm-up, then dropped: the tool and its table once over one step, so first-call costs
        # (imports of xarray/zarr/dask/scipy, lazy initialisation) are nobody's growth.  The
        # shipped model warms up on itself; the big stack on a tiny one (same code paths).
        if case == "shipped":
            session: Any = ShippedSession(SMOKE_SHIPPED if smoke else Shipped(), Path(tmp), tool == "nnsight")
            _measured_run(case, tool, session, 1, None)
        else:
            _measured_run(case, tool, StackSession(SMOKE_STACK, Path(tmp), tool == "nnsight"), 1, None)
            session = StackSession(SMOKE_STACK if smoke else Stack(), Path(tmp), tool == "nnsight")
        gc.collect()
        baseline = reset_peak_rss()
        run = _measured_run(case, tool, session, count, baseline)
    return {"case": case, "tool": tool, "steps": count, "baseline_rss_bytes": baseline, **run}


def bench_rss(case: str, counts: tuple[int, ...], smoke: bool, tools: tuple[str, ...] = TOOLS) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = {}
    for tool in tools:
        for count in counts:
            command = [sys.executable, str(Path(__file__).resolve()), "--child", f"{case}:{tool}:{count}"]
            if smoke:
                command.append("--smoke")
            started = time.perf_counter()
            completed = subprocess.run(command, capture_output=True, text=True)
            if completed.returncode != 0:
                raise RuntimeError(f"child {case}:{tool}:{count} failed:\n{completed.stderr[-3000:]}")
            runs[f"{tool}:{count}"] = json.loads(completed.stdout.strip().splitlines()[-1])
            runs[f"{tool}:{count}"]["process_seconds"] = time.perf_counter() - started
    return {"counts": list(counts), "tools": list(tools), "runs": runs}


# -- arithmetic: what a real Wan2.1-I2V-14B 480p run would keep ----------------------------------------------------


def amd_bytes_per_call(tokens: int, dim: int, model_bytes: int) -> int:
    """attention-map-diffusers, fast mode: q (N, D) and k (512, D) of one cross-attention call, kept."""
    return (tokens + WAN_TEXT_TOKENS) * dim * model_bytes


def nnsight_bytes_per_call(tokens: int, dim: int, model_bytes: int) -> int:
    """nnsight's cache: attn2's visual input (N, D) per call (the context is one tensor per transformer call)."""
    return tokens * dim * model_bytes


def formula_check(kept: dict[str, Any], tokens: int, dim: int, calls: int) -> dict[str, Any]:
    """The per-call formulas of the extrapolation against the bytes measured here (fp32)."""
    return {
        "calls": calls,
        "amd_predicted": calls * amd_bytes_per_call(tokens, dim, 4),
        "amd_measured": kept["amd"]["bytes_total"],
        "nnsight_predicted_visual_inputs": calls * nnsight_bytes_per_call(tokens, dim, 4),
        "nnsight_measured_with_contexts": kept["nnsight"]["bytes_total"],
    }


def extrapolate(
    layers=40, dim=5120, grid=(21, 30, 52), steps=50, branches=2, keywords=3, model_bytes=2, store_bytes=2
) -> dict[str, Any]:
    """What each tool would keep for a real run, from the per-call formulas (checked by ``formula_check``)."""
    tokens = grid[0] * grid[1] * grid[2]
    calls = layers * steps * branches
    amd_qk = amd_bytes_per_call(tokens, dim, model_bytes)
    return {
        "model": f"Wan2.1-I2V-14B 480p: {layers} blocks, dim {dim}, grid {'x'.join(map(str, grid))}, {steps} steps, "
        f"CFG ({branches} calls per step), {keywords} keywords, bf16 model, float16 store",
        "amd_qk_bytes": amd_qk * calls,
        # after compute(): the head mean over all 512 keys per call, in the model's dtype
        "amd_maps_bytes": tokens * WAN_TEXT_TOKENS * model_bytes * calls,
        "amd_calls_within_default_budget": (8 * 1024**3) // amd_qk,
        "amd_calls_needed": calls,
        "nnsight_bytes": nnsight_bytes_per_call(tokens, dim, model_bytes) * calls,
        # K maps per (layer, step), float16, before Zarr's compression
        "layerscope_disk_bytes_uncompressed": keywords * tokens * store_bytes * layers * steps,
        "layerscope_ram": "flat (maps stream to disk through a 64-item queue)",
    }


# -- report ------------------------------------------------------------------------------------------------


def _mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


def _kib(value: float) -> str:
    return f"{value / 2**10:,.1f} KiB"


def _seconds(s: dict[str, Any]) -> str:
    return f"{s['median']:.2f} s ({s['min']:.2f}–{s['max']:.2f})"


def _ratio(r: dict[str, Any]) -> str:
    return f"{r['median']:.3f}x ({r['min']:.3f}–{r['max']:.3f})"


def tables(results: dict[str, Any]) -> None:
    for case, title in (("a", "shipped model"), ("c", "realistic stack, transformer only")):
        if case not in results:
            continue
        r = results[case]
        print(f"\n{title}: generation, time to a ranked table, bytes kept")
        rows = []
        for tool in TOOLS:
            if tool == "plain":
                rows.append((tool, _seconds(r["seconds"][tool]), "1", "", "", ""))
                continue
            k = r["kept"][tool]
            rows.append(
                (
                    tool,
                    _seconds(r["seconds"][tool]),
                    _ratio(r["ratio"][tool]),
                    _seconds(r["to_table_seconds"][tool]),
                    _kib(k["bytes_per_layer_step"]),
                    f"{_mib(k['bytes_total'])} ({k['kept_where'].split(' ')[0]})",
                )
            )
        print_table(
            ("tool", "generation", "ratio to plain", "to ranked table", "kept per layer-step", "kept in all"), rows
        )
        a = r["agreement"]
        print_table(("agreement (max abs diff)", "value"), [(k, v) for k, v in a.items() if not isinstance(v, list)])
    for case, title in (
        ("b", "shipped model, peak RSS growth (VmHWM reset after setup)"),
        ("d", "realistic stack, peak RSS growth"),
    ):
        if case not in results:
            continue
        r = results[case]
        print(f"\n{title}")
        header = ["tool", *(f"{n} {'steps' if case == 'b' else 'forwards'}" for n in r["counts"])]
        rows = []
        for tool in r["tools"]:
            cells = []
            for n in r["counts"]:
                run = r["runs"][f"{tool}:{n}"]
                held = run["tool_bytes_after_generation"]
                cells.append(
                    f"{_mib(run['peak_growth_generation_bytes'])} / {_mib(run['peak_growth_to_table_bytes'])}"
                    + (f" ({_mib(held)} held)" if held is not None else "")
                )
            rows.append((tool, *cells))
        print("(peak RSS growth during generation / through the ranked table (what the tool holds at the end of")
        print(" generation by its own count); growth is measured from the RSS after loading and a warm-up)")
        print_table(header, rows)
    if "extrapolation" in results:
        print("\narithmetic (not measured):")
        print_table(("quantity", "value"), [(k, v) for k, v in results["extrapolation"].items()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 repeat; RSS at 5 and 20 steps, ls-attention left out; no realistic stack (<= 5 min)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, every case once (tests)")
    parser.add_argument("--cases", default=None, help="comma-separated subset of a,b,c,d (default all; --quick a,b)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="interleaved repeats (default 3 on the shipped model, 2 on the stack; --quick 1)",
    )
    parser.add_argument("--out", default="benchmarks/results/peers.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        print(json.dumps(child(args.child, args.smoke)))
        return 0

    from importlib import metadata

    missing = []
    for name, version in PEERS.items():
        try:
            if metadata.version(name) != version:
                missing.append(f"{name}=={version} (found {metadata.version(name)})")
        except metadata.PackageNotFoundError:
            missing.append(f"{name}=={version}")
    if missing:
        print(
            f"peers missing: {', '.join(missing)}; install them with "
            "pip install -c requirements/constraints.txt -e '.[peers]'",
            file=sys.stderr,
        )
        return 2

    default_cases = "a,b" if args.quick else "a,b,c,d"
    cases = [c.strip() for c in (args.cases or default_cases).split(",") if c.strip()]
    unknown = set(cases) - {"a", "b", "c", "d"}
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; choose from a,b,c,d")
    repeats = args.repeats or (1 if args.quick or args.smoke else 3)
    shipped = SMOKE_SHIPPED if args.smoke else Shipped()
    stack = SMOKE_STACK if args.smoke else Stack()
    rss_steps = (2, 3) if args.smoke else (RSS_STEPS_QUICK if args.quick else RSS_STEPS)
    rss_forwards = (1, 2) if args.smoke else RSS_FORWARDS

    import torch

    results: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
        },
        "versions": {name: metadata.version(name) for name in (*PEERS, "diffusers", "layerscope")},
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "mode": "smoke" if args.smoke else ("quick" if args.quick else "full"),
        "load_average_at_start": list(os.getloadavg()),
    }
    started = time.perf_counter()
    case_seconds: dict[str, float] = {}
    for case in ("b", "d", "a", "c"):  # the RSS children first, while this parent is small and idle
        if case not in cases:
            continue
        case_started = time.perf_counter()
        if case == "b":
            results["b"] = bench_rss("shipped", rss_steps, args.smoke, RSS_TOOLS_QUICK if args.quick else TOOLS)
        elif case == "d":
            results["d"] = bench_rss("stack", rss_forwards, args.smoke)
        elif case == "a":
            results["a"] = bench_shipped(shipped, repeats)
        else:
            results["c"] = bench_stack(stack, args.repeats or (1 if args.quick or args.smoke else 2))
        case_seconds[case] = time.perf_counter() - case_started
    results["case_seconds"] = case_seconds
    results["extrapolation"] = extrapolate()
    results["seconds_total"] = time.perf_counter() - started
    results["load_average_at_end"] = list(os.getloadavg())
    tables(results)
    write_json(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
