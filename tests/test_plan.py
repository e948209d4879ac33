"""``layerscope plan``: its predictions against measurements on the tiny Wan model, and its CLI.

What is compared (each within 10%):

* store: the predicted map bytes and chunk count against the ``similarity`` chunk files of
  a real recording (the shared ``recorded_run``, float32 store);
* probe memory: the predicted transient peak of one probe call against the peak of live
  tensor bytes allocated inside that call, counted by a dispatch mode that sees every
  tensor the probe creates and when it is freed (CPU has no ``torch.cuda.max_memory_allocated``);
* compute: the predicted probe FLOPs against FlopCounterMode around one forward with the
  probes attached minus one without, and the predicted forward FLOPs (counted on meta
  tensors) against the same count on the real CPU forward.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from layerscope.planning import PlanOptions, make_plan

#: one worker builds this module's tiny pipelines once (make test runs xdist with --dist loadgroup)
pytestmark = pytest.mark.xdist_group("plan")


PUBLISHED = Path(__file__).parent / "data" / "published_configs.json"


class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storage allocated under this mode and still alive (views not double-counted)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, live tensors]
        self.current = 0
        self.peak = 0

    def _release(self, pointer: int) -> None:
        entry = self.live.get(pointer)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[pointer]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for tensor in torch.utils._pytree.tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            pointer = tensor.untyped_storage().data_ptr()
            if pointer == 0:
                continue
            if pointer in self.live:
                self.live[pointer][1] += 1
            elif pointer in inputs:
                continue  # a view or in-place result of a tensor made before the probe ran
            else:
                nbytes = tensor.untyped_storage().nbytes()
                self.live[pointer] = [nbytes, 1]
                self.current += nbytes
                self.peak = max(self.peak, self.current)
            weakref.finalize(tensor, self._release, pointer)
        return out


def _configs(folder: Path) -> dict:
    read = lambda part: json.loads((folder / part / "config.json").read_text())  # noqa: E731
    configs = {"pipeline": json.loads((folder / "model_index.json").read_text()), "transformer": read("transformer")}
    for part in ("vae", "image_encoder", "text_encoder"):
        if (folder / part / "config.json").is_file():
            configs[part] = read(part)
    return configs


def _real_inputs(model_dir: Path, frames: int, height: int, width: int) -> dict:
    """The meta inputs the plan counts, made real (random) for a CPU forward of the tiny model."""
    from layerscope.adapters.wan import WanAdapter

    configs = _configs(model_dir)
    geometry = WanAdapter.geometry_from_configs(configs, frames, height, width)
    generator = torch.Generator().manual_seed(0)
    inputs = {}
    for key, value in WanAdapter.forward_inputs_from_configs(configs, geometry).items():
        inputs[key] = torch.randn(value.shape, generator=generator) if isinstance(value, torch.Tensor) else value
    inputs["timestep"] = torch.tensor([500.0])
    return inputs


@pytest.mark.parametrize("size", [(5, 256, 256), (9, 128, 192), (1, 64, 64)])
def test_config_geometry_is_the_adapters(tiny_pipe, model_dir, size):
    """The classmethod reads configs the way the adapter reads the loaded pipeline."""
    from layerscope.adapters.registry import resolve_adapter
    from layerscope.adapters.wan import WanAdapter

    adapter = resolve_adapter(tiny_pipe)
    geometry = WanAdapter.geometry_from_configs(_configs(Path(model_dir)), *size)
    assert geometry.grid == adapter.token_grid(*size)
    assert geometry.spatial_multiple == adapter.spatial_multiple()
    assert geometry.frame_multiple == adapter.frame_multiple()
    assert geometry.text_tokens == adapter.text_sequence_length()
    assert geometry.num_layers == adapter.num_layers()
    attn = adapter.probe_sites(tiny_pipe.transformer)[0].attention
    assert (geometry.heads, geometry.width) == (attn.heads, attn.to_q.out_features)


def test_store_prediction_matches_a_recording(recorded_run, model_dir, example):
    """Map bytes on disk within 10% of the plan (zstd level 0 barely compresses cosines); chunk count exact."""
    path, summary = recorded_run
    plan = make_plan(
        PlanOptions(
            model=str(model_dir), frames=example["num_frames"], height=example["height"], width=example["width"],
            steps=example["num_inference_steps"], keywords=len(example["keywords"]), store_dtype="float32",
            dtype="float32",
        )
    )  # fmt: skip
    chunks = [f for f in (Path(path) / "similarity" / "c").rglob("*") if f.is_file()]
    on_disk = sum(f.stat().st_size for f in chunks)
    assert len(chunks) == plan.chunks
    assert abs(on_disk - plan.map_bytes) <= 0.10 * plan.map_bytes, (on_disk, plan.map_bytes)
    store = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    assert store <= plan.store_bytes + 64 * 1024  # raw video/reference are an upper bound; attrs are not counted
    assert tuple(json.loads((Path(path) / "zarr.json").read_text())["attributes"]["grid"]) == plan.grid


@pytest.mark.parametrize("probe", ["hidden", "attention", "contrastive"])
def test_probe_memory_and_flops_match_measurement(tiny_pipe, model_dir, probe):
    """One forward of the tiny transformer with one probe kind on every layer, measured two ways."""
    from layerscope.adapters.registry import resolve_adapter
    from layerscope.probes import ProbeConfig, apply_probes

    frames, height, width = 5, 256, 256
    plan = make_plan(
        PlanOptions(model=str(model_dir), frames=frames, height=height, width=width, steps=1, probe=probe,
                    dtype="float32", keywords=2)
    )  # fmt: skip
    adapter = resolve_adapter(tiny_pipe)
    transformer = tiny_pipe.transformer
    inputs = _real_inputs(Path(model_dir), frames, height, width)
    config = ProbeConfig(
        keyword_tokens=[[1], [2]], grid=plan.grid, kind=probe, steps=[0],
        reference_tokens=[3, 4, 5] if probe == "contrastive" else None,
    )  # fmt: skip
    kind = config.probe_kind()
    peaks = []
    original = type(kind).maps

    def measured_maps(self, probe_, scratch, grid):
        with LiveBytes() as tracker:
            maps = original(self, probe_, scratch, grid)
        peaks.append(tracker.peak)
        return maps

    # the math SDPA kernel decomposes into matmuls FlopCounterMode counts (the CPU flash kernel has no formula)
    math_sdpa = torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH)
    with torch.no_grad(), math_sdpa, FlopCounterMode(display=False) as bare:
        transformer(**inputs)
    sunk = []
    handle = apply_probes(adapter, config, lambda *a: sunk.append(a))
    try:
        type(kind).maps = measured_maps
        with (
            torch.no_grad(),
            torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH),
            FlopCounterMode(display=False) as probed,
        ):
            transformer(**inputs)
    finally:
        type(kind).maps = original
        handle.remove()
    assert len(sunk) == plan.num_layers and all(torch.isfinite(s[3]).all() for s in sunk)
    assert sunk[0][3].shape == (2, *plan.grid)
    assert abs(bare.get_total_flops() - plan.forward_flops) <= 0.10 * plan.forward_flops
    extra = probed.get_total_flops() - bare.get_total_flops()
    predicted = plan.probe_flops_per_call * plan.recorded_layers
    assert abs(extra - predicted) <= 0.10 * predicted, (extra, predicted)
    assert len(peaks) == plan.num_layers
    assert abs(max(peaks) - plan.probe_peak_bytes) <= 0.10 * plan.probe_peak_bytes, (max(peaks), plan.probe_peak_bytes)


def _run(argv, capsys):
    from layerscope.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plan_prints_the_wan_480p_table(capsys):
    code, out, err = _run(["plan", "--model", str(PUBLISHED), "--entry", "Wan2.1-I2V-14B-480P"], capsys)
    assert code == 0, err
    assert "21 x 30 x 52 = 32,760 visual tokens" in out
    assert "16,394,878,784" in out  # parameters counted on the meta device
    assert "2,000 chunks" in out  # 50 steps x 40 layers


@pytest.mark.slow
def test_plan_prints_a_table_for_every_published_entry(capsys):
    """The issue's criterion: every entry of the data file plans at its size (families without an adapter fail)."""
    entries = json.loads(PUBLISHED.read_text())["entries"]
    failed = {}
    for name, entry in entries.items():
        size = entry["plan_size"]
        code, out, err = _run(
            ["plan", "--model", str(PUBLISHED), "--entry", name, "--frames", str(size["frames"]),
             "--height", str(size["height"]), "--width", str(size["width"])],
            capsys,
        )  # fmt: skip
        if code != 0 or "visual tokens" not in out:
            failed[name] = err.strip()
    assert not failed, failed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "/nonexistent/model"], "no such folder"),
        (["--model", str(PUBLISHED)], "pass --entry"),
        (["--model", str(PUBLISHED), "--entry", "Wan2.1-I2V-14B-480P", "--height", "470"], "multiples of 16"),
        (["--model", str(PUBLISHED), "--entry", "Wan2.1-I2V-14B-480P", "--frames", "80"], "4*n+1"),
        (["--model", str(PUBLISHED), "--entry", "Wan2.1-I2V-14B-480P", "--probe", "nope"], "unknown probe kind"),
        (["--model", str(PUBLISHED), "--entry", "Wan2.1-I2V-14B-480P", "--layers", "40"], "out of range"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    code, out, err = _run(["plan", *argv], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_missing_transformer_config_is_one_line(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline"}))
    code, out, err = _run(["plan", "--model", str(tmp_path)], capsys)
    assert code == 2 and "transformer config not found" in err and len(err.strip().splitlines()) == 1


def test_attention_chunk_constant_matches_the_probe():
    """The plan's query chunk is the one the attention probe passes, on both of its paths."""
    import inspect

    from layerscope.probe_kinds import attention
    from layerscope.store import StoreWriter

    assert inspect.getsource(attention).count("chunk=ATTENTION_QUERY_CHUNK") == 2
    assert inspect.signature(StoreWriter.__init__).parameters["queue_size"].default == 64


def test_sizes_default_to_the_published_entry_then_the_pipeline_class(tmp_path):
    """No --frames/--height/--width/--steps: the entry's published size (HunyuanVideo-I2V: 129
    frames at 720x1280), else the pipeline class's own ``__call__`` defaults, never one constant."""
    from layerscope.planning import PlanOptions, make_plan

    hunyuan = make_plan(PlanOptions(model=str(PUBLISHED), entry="HunyuanVideo-I2V-33ch"))
    # VAE strides 4 (time) and 8 (space), patch 1 x 2 x 2: (129 - 1) / 4 + 1 = 33, 720 / 16 = 45, 1280 / 16 = 80
    assert hunyuan.grid == (33, 45, 80) and hunyuan.recorded_steps == 50
    wan = make_plan(PlanOptions(model=str(PUBLISHED), entry="Wan2.1-I2V-14B-480P", frames=5))
    assert wan.grid == (2, 30, 52)  # the given frames, the entry's 480 x 832
    import json

    data = json.loads(PUBLISHED.read_text())["entries"]["LTX-Video-0.9.0"]
    for part in ("transformer", "vae"):  # a checkpoint folder of configs only: no plan_size there
        (tmp_path / part).mkdir()
        (tmp_path / part / "config.json").write_text(json.dumps(data[part]))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "LTXImageToVideoPipeline"}))
    ltx = make_plan(PlanOptions(model=str(tmp_path)))
    # LTXImageToVideoPipeline.__call__: 161 frames at 512 x 704; VAE 8 (time) x 32 (space), patch 1
    assert ltx.grid == (21, 16, 22)


def test_plan_of_a_model_folder_uses_the_sizes_record_would(model_dir, capsys):
    """`plan --model DIR` plans what `record --model DIR` runs: the folder's declared sizes first."""
    from layerscope.cli import main
    from layerscope.cli.options import model_defaults

    steps, frames, height, width = model_defaults(str(model_dir))
    assert main(["plan", "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    # the tiny Wan model: VAE strides 4 (time) and 8 (space), patch 1 x 2 x 2
    grid = f"{(frames - 1) // 4 + 1} x {height // 16} x {width // 16} ="
    assert grid in out and f"steps x branches recorded           {steps} x 1" in out
