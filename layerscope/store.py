"""Streaming Zarr v3 store for one recorded run, and lazy xarray views of stores.

Layout (one run = one Zarr v3 group; README, "The store")::

    similarity  (step, layer, keyword, frame, y, x)   chunks (1, 1, K, F', H', W')
    timestep    (step)      block (layer)              coordinates
    reference   (y_px, x_px, rgb)  uint8               the conditioning image
    video       (frame_px, y_px, x_px, rgb)  uint8     the generated video
    attrs       provenance, status, steps_written, ...

Why a background writer: the denoising loop must never wait on disk.  Maps go into a
bounded queue that one thread drains into Zarr chunks; the loop blocks only when the
queue is full, and every such wait is counted in the attrs (``queue_waits``).

Why a status attribute: a store is created as ``recording`` and becomes ``complete``
only after the last chunk is flushed.  A crash or Ctrl-C leaves ``interrupted`` (or
``recording`` if the process was killed) with ``steps_written`` listing what is whole,
so no reader mistakes a partial store for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from layerscope.errors import LayerScopeError
from layerscope.locations import Remote, location

#: Bumped on incompatible schema changes; readers refuse any other version.
STORE_FORMAT = "layerscope-run/1"
STATUS_RECORDING = "recording"
STATUS_COMPLETE = "complete"
STATUS_INTERRUPTED = "interrupted"


class StoreError(LayerScopeError):
    """A store cannot be created or read as asked (a usage error)."""


def _lock_path(path: Path | Remote) -> Path | Remote:
    return path.with_name(path.name + ".lock")


#: A lock on object storage whose heartbeat is older than this, written by another host,
#: is stale (its writer's pid cannot be checked from here); see docs/store.md.
REMOTE_LOCK_STALE_SECONDS = 3600.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_owner(lock: Path | Remote) -> dict[str, Any]:
    try:
        owner = json.loads(lock.read_text() or "{}")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _owner_gone(lock: Path | Remote, owner: dict[str, Any]) -> bool:
    """A lock whose writer is known to be dead: a local pid that is gone, or (object storage,
    another host) a heartbeat older than :data:`REMOTE_LOCK_STALE_SECONDS`."""
    if owner.get("host") == socket.gethostname():
        return not _pid_alive(int(owner.get("pid", -1)))
    if isinstance(lock, Remote):
        beat = owner.get("heartbeat", owner.get("time"))
        return not isinstance(beat, (int, float)) or time.time() - beat > REMOTE_LOCK_STALE_SECONDS
    return False


class _Lock:
    """A held lock: released only while it is still this writer's (``token``)."""

    def __init__(self, path: Path | Remote, token: str, payload: dict[str, Any]):
        self.path, self.token, self.payload = path, token, payload

    def heartbeat(self) -> None:
        """Object storage: rewrite the lock's time, so other hosts can tell a live writer."""
        if isinstance(self.path, Remote):
            self.payload["heartbeat"] = time.time()
            with contextlib.suppress(OSError):  # a missed beat only makes the lock look older
                self.path.write_text(json.dumps(self.payload))

    def release(self) -> None:
        if isinstance(self.path, Remote) and _lock_owner(self.path).get("token") != self.token:
            return  # not ours any more (judged stale and taken over): leave it
        self.path.unlink(missing_ok=True)


def _acquire_lock(path: Path | Remote) -> _Lock:
    """Create ``RUN.zarr.lock`` exclusively; a lock of a dead writer is stale.

    Local paths: ``O_EXCL``, atomic.  URLs: fsspec's ``mode="create"`` write (atomic only
    where the backend implements it), then read back: a writer that finds another's token
    in the lock backs off (docs/store.md, "Stores at a URL", says what this guarantees).
    """
    import uuid

    lock = _lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    now = time.time()
    payload = {"pid": os.getpid(), "host": socket.gethostname(), "time": now, "heartbeat": now, "token": token}
    for _ in range(2):
        try:
            if isinstance(lock, Remote):
                lock.write_bytes(json.dumps(payload).encode(), exclusive=True)
                if _lock_owner(lock).get("token") != token:
                    raise FileExistsError(str(lock))  # another writer's object replaced ours
            else:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                with os.fdopen(fd, "w") as handle:
                    handle.write(json.dumps({k: payload[k] for k in ("pid", "host", "time")}))
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner.get("token") != token and _owner_gone(lock, owner):
                lock.unlink(missing_ok=True)  # stale: its writer is gone
                continue
            raise StoreError(
                f"store {path} is being written by another process (pid {owner.get('pid')} on "
                f"{owner.get('host')}); wait for it or choose another --out"
            ) from None
        return _Lock(lock, token, payload)
    raise StoreError(f"could not lock {path}; remove {lock} if no recording is running")


def check_store_target(path: str | os.PathLike | Remote, *, overwrite: bool = False) -> Path | Remote:
    """Refuse, before any work, a store path that cannot be written or would clobber something.

    Empty, under a regular file, an existing file, an existing store without
    ``overwrite``, or an existing directory that is not a LayerScope store (never
    deleted, even with ``overwrite``).  ``path`` may be an fsspec URL (:mod:`layerscope.locations`).
    """
    from layerscope.outputs import check_output_path

    path = check_output_path(path, "--out", directory=True)
    if path.exists() or path.is_symlink():
        if not is_store(path):
            raise StoreError(f"--out {path} exists and is not a LayerScope store; choose a new path")
        if not overwrite and not _lock_path(path).exists():
            raise StoreError(f"store {path} already exists; pass --overwrite or choose another --out")
    return path


def is_store(path: str | os.PathLike | Remote) -> bool:
    path = location(path)
    marker = path / "zarr.json"
    if not (path.is_dir() and not path.is_symlink() and marker.is_file()):
        return False
    try:
        fmt = str(json.loads(marker.read_text(encoding="utf-8")).get("attributes", {}).get("format", ""))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False
    return fmt.startswith(STORE_FORMAT.split("/")[0])


@dataclass
class StoreLayout:
    """Shape and labels of a run's ``similarity`` array, fixed before recording starts."""

    steps: Sequence[int]
    layers: Sequence[int]
    blocks: Sequence[str]
    keywords: Sequence[str]
    grid: tuple[int, int, int]
    video_shape: tuple[int, int, int]  # (frames, height, width) in pixels
    dtype: str = "float16"
    branches: Sequence[str] = ("cond",)
    attrs: dict[str, Any] = field(default_factory=dict)
    #: ``intrinsic`` always; ``injected`` too when an intervention changes some layers
    views: Sequence[str] = ("intrinsic",)
    #: the denoisers that may run a step (Wan2.2 A14B: ``transformer``, ``transformer_2``)
    experts: Sequence[str] = ("transformer",)
    #: per layer ``double``/``single`` for MMDiT models (a ``stream`` coordinate); None otherwise
    streams: Sequence[str] | None = None

    def variable_name(self, branch: str, view: str = "intrinsic") -> str:
        """``similarity`` for the first branch, ``similarity_<branch>`` for others; ``_injected`` for that view."""
        name = "similarity" if branch == self.branches[0] else f"similarity_{branch}"
        return name if view == "intrinsic" else f"{name}_{view}"


def _skeleton(layout: StoreLayout):
    import dask.array as da
    import xarray as xr

    frames, height, width = layout.grid
    k = len(layout.keywords)
    shape = (len(layout.steps), len(layout.layers), k, frames, height, width)
    chunks = (1, 1, k, frames, height, width)
    dims = ("step", "layer", "keyword", "frame", "y", "x")
    strings = np.dtypes.StringDType()
    data_vars: dict[str, Any] = {}
    encoding: dict[str, Any] = {}
    for branch in layout.branches:
        for view in layout.views:
            name = layout.variable_name(branch, view)
            long_name = "visual-keyword similarity"
            if view == "injected":
                long_name += " with the intervention's own terms (touched layers only; NaN elsewhere)"
            data_vars[name] = (
                dims,
                da.full(shape, np.nan, dtype=layout.dtype, chunks=chunks),
                {"branch": branch, "view": view, "long_name": long_name},
            )
            encoding[name] = {"chunks": chunks, "fill_value": np.nan}
    n_frames, px_h, px_w = layout.video_shape
    data_vars["reference"] = (("y_px", "x_px", "rgb"), da.zeros((px_h, px_w, 3), dtype=np.uint8))
    data_vars["video"] = (
        ("frame_px", "y_px", "x_px", "rgb"),
        da.zeros((n_frames, px_h, px_w, 3), dtype=np.uint8, chunks=(1, px_h, px_w, 3)),
    )
    encoding["video"] = {"chunks": (1, px_h, px_w, 3)}
    coords = {
        "step": np.asarray(layout.steps, dtype=np.int64),
        "timestep": ("step", np.full(len(layout.steps), np.nan)),
        # which denoiser ran the step (index into attrs["experts"]); -1 until it runs
        "expert": ("step", np.full(len(layout.steps), -1, dtype=np.int64)),
        "layer": np.asarray(layout.layers, dtype=np.int64),
        "block": ("layer", np.asarray(list(layout.blocks), dtype=strings)),
        **({"stream": ("layer", np.asarray(list(layout.streams), dtype=strings))} if layout.streams else {}),
        "keyword": np.asarray(list(layout.keywords), dtype=strings),
        "frame": np.arange(frames),
        "y": np.arange(height),
        "x": np.arange(width),
    }
    attrs = {
        "format": STORE_FORMAT,
        **layout.attrs,
        "status": STATUS_RECORDING,
        "steps_written": [],
        "experts": list(layout.experts),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs), encoding


class StoreWriter:
    """Write one run's maps into a Zarr v3 store from a background thread.

    Use as a context manager or call :meth:`close` with the final status.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        layout: StoreLayout,
        *,
        overwrite: bool = False,
        queue_size: int = 64,
    ):
        import zarr

        self.path = check_store_target(path, overwrite=True)
        self.layout = layout
        self._lock = _acquire_lock(self.path)
        try:
            if self.path.exists() or self.path.is_symlink():
                if not overwrite:
                    raise StoreError(f"store {self.path} already exists; pass --overwrite or choose another --out")
                _remove_store(self.path)
            dataset, encoding = _skeleton(layout)
            # Written under a hidden name and renamed into place: xarray writes zarr.json
            # before the attributes that mark a LayerScope store, and a process killed in
            # between must not leave a directory that no later run may touch (sweep resume).
            # On object storage the "rename" copies the skeleton (metadata and coordinates).
            creating = self.path.with_name(f".{self.path.name}.creating-{os.getpid()}")
            if isinstance(creating, Remote):
                if creating.exists():
                    creating.remove_tree()
                dataset.to_zarr(
                    str(creating), mode="w", compute=False, consolidated=False, encoding=encoding, zarr_format=3
                )
                creating.move_tree(self.path)
            else:
                shutil.rmtree(creating, ignore_errors=True)
                dataset.to_zarr(creating, mode="w", compute=False, consolidated=False, encoding=encoding, zarr_format=3)
                creating.rename(self.path)
            self._group = zarr.open_group(_zarr_target(self.path), mode="r+")
        except BaseException:
            self._lock.release()
            raise
        self._step_pos = {int(s): i for i, s in enumerate(layout.steps)}
        self._layer_pos = {int(layer): i for i, layer in enumerate(layout.layers)}
        self._arrays = {(b, v): self._group[layout.variable_name(b, v)] for b in layout.branches for v in layout.views}
        # which (layer, branch) blocks each step has: a step is whole when all are there
        self._written: list[set[tuple[int, str]]] = [set() for _ in layout.steps]
        self._expected_per_step = len(layout.layers) * len(layout.branches)
        self.maps_written = 0
        self.queue_waits = 0
        self.queue_wait_seconds = 0.0
        self._error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._drain, name="layerscope-writer", daemon=True)
        self._thread.start()
        self._closed = False
        self.status = STATUS_RECORDING

    # -- producer side (the denoising loop) ---------------------------------
    def submit(self, step: int, layer: int, branch: str, maps: Any, view: str = "intrinsic") -> None:
        """Queue one (K, F', H', W') map block; block only if the queue is full."""
        if self._error is not None:
            raise RuntimeError("the store writer failed") from self._error
        item = (step, layer, branch, view, _to_host(maps))
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.queue_waits += 1
            started = time.perf_counter()
            self._queue.put(item)
            self.queue_wait_seconds += time.perf_counter() - started

    def injected_sink(self, step: int, layer: int, branch: str, maps: Any) -> None:
        """A probe sink for the ``injected`` view."""
        self.submit(step, layer, branch, maps, view="injected")

    def set_timestep(self, step: int, timestep: float | None, expert: int = 0) -> None:
        if step in self._step_pos:
            self._queue.put(("timestep", step, float("nan") if timestep is None else float(timestep), int(expert)))

    # -- consumer side --------------------------------------------------------
    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if item[0] == "timestep":
                    self._group["timestep"][self._step_pos[item[1]]] = item[2]
                    self._group["expert"][self._step_pos[item[1]]] = item[3]
                    continue
                step, layer, branch, view, host = item
                array = _materialise(host).astype(self.layout.dtype, copy=False)
                pos = self._step_pos[step]
                self._arrays[(branch, view)][pos, self._layer_pos[layer]] = array
                if view != "intrinsic":
                    continue  # completeness is judged on the primary maps
                self._written[pos].add((layer, branch))
                self.maps_written += 1
                if len(self._written[pos]) == self._expected_per_step:
                    # on disk at once, so a killed process (kill -9) leaves the truth behind
                    self.update_attrs(steps_written=self.steps_written())
                    self._lock.heartbeat()
            except BaseException as error:  # surfaced to the producer on its next call
                self._error = error
            finally:
                self._queue.task_done()

    def steps_written(self) -> list[int]:
        return [int(s) for s, pos in self._step_pos.items() if len(self._written[pos]) == self._expected_per_step]

    def write_reference(self, image: np.ndarray) -> None:
        self._group["reference"][...] = np.asarray(image, dtype=np.uint8)

    def write_video(self, video: np.ndarray) -> None:
        self._group["video"][...] = np.asarray(video, dtype=np.uint8)

    def update_attrs(self, **attrs: Any) -> None:
        self._group.attrs.update(_jsonable(attrs))

    def close(self, status: str = STATUS_COMPLETE, **attrs: Any) -> str:
        """Flush every queued map, record the final status, release the lock; return the status.

        ``complete`` is written only if the writer never failed and every step is whole.
        """
        if self._closed:
            return self.status
        self._closed = True
        try:
            self._queue.put(None)
            self._thread.join()
            if self._error is not None and status == STATUS_COMPLETE:
                status = STATUS_INTERRUPTED
                attrs["error"] = f"writer failed: {self._error!r}"
            written = self.steps_written()
            if status == STATUS_COMPLETE and len(written) != len(self.layout.steps):
                status = STATUS_INTERRUPTED
                attrs.setdefault("error", f"only {len(written)} of {len(self.layout.steps)} steps were recorded")
            self.update_attrs(
                **attrs,
                status=status,
                steps_written=written,
                maps_written=self.maps_written,
                queue_waits=self.queue_waits,
                queue_wait_seconds=round(self.queue_wait_seconds, 6),
            )
            self.status = status
        finally:
            self._lock.release()
        return status

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close(STATUS_COMPLETE)
        else:
            self.close(STATUS_INTERRUPTED, error=f"{exc_type.__name__}: {exc}"[:500])


def _zarr_target(path: Path | Remote) -> Path | str:
    """What zarr and xarray open: the local path, or the URL (they resolve it with fsspec)."""
    return str(path) if isinstance(path, Remote) else path


def _remove_store(path: Path | Remote) -> None:
    """Delete an old LayerScope store for --overwrite, and nothing else.

    ``--out ~ --overwrite`` must not wipe a home directory: only a directory holding a
    Zarr group written by ``layerscope record`` is removed.
    """
    if not is_store(path):
        raise StoreError(f"{path} exists and is not a LayerScope store; refusing to overwrite it, choose another --out")
    if isinstance(path, Remote):
        # no rename on object storage: mark it interrupted first, so a delete killed half
        # way leaves a store that says it is not complete (and may be overwritten again)
        marker = path / "zarr.json"
        meta = json.loads(marker.read_text())
        meta.setdefault("attributes", {}).update(status=STATUS_INTERRUPTED, error="being replaced (--overwrite)")
        marker.write_text(json.dumps(meta))
        path.remove_tree()
        return
    # rename first: a process killed while deleting leaves a hidden sibling, never a
    # half-deleted directory under the store's name that later runs refuse to touch
    doomed = path.with_name(f".{path.name}.deleting-{os.getpid()}")
    path.rename(doomed)
    shutil.rmtree(doomed)


def _to_host(maps: Any) -> Any:
    """Start the device-to-host copy without waiting for it (CUDA), or pass CPU data on."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return np.asarray(maps)
    if isinstance(maps, torch.Tensor):
        maps = maps.detach()
        if maps.device.type == "cuda":
            host = torch.empty(maps.shape, dtype=maps.dtype, pin_memory=True)
            host.copy_(maps, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            return (host, event)
        return maps
    return np.asarray(maps)


def _materialise(host: Any) -> np.ndarray:
    if isinstance(host, tuple):
        tensor, event = host
        event.synchronize()
        return tensor.numpy()
    if hasattr(host, "numpy"):
        return host.numpy()
    return np.asarray(host)


def _jsonable(value: Any) -> Any:
    """Zarr attrs are JSON: turn tuples, numpy scalars and paths into plain values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_metrics(path: str | os.PathLike, metrics: Any, **attrs: Any) -> None:
    """Write (or replace) the metric variables of a store, keeping its attrs; under the store's lock."""
    import zarr

    path = location(path)
    lock = _acquire_lock(path)
    try:
        group = zarr.open_group(_zarr_target(path), mode="r+")
        kept = dict(group.attrs)
        for name in metrics.data_vars:
            if name in group:
                del group[name]
            metrics[name].encoding = {}
        # to_zarr(mode="a") replaces the group attrs with the written dataset's: keep them.
        metrics = metrics.copy()
        metrics.attrs = _jsonable({**kept, **attrs})
        metrics.chunk({dim: -1 for dim in metrics.dims if dim in ("step", "layer")}).to_zarr(
            _zarr_target(path), mode="a", consolidated=False
        )
    finally:
        lock.release()


def recording_was_killed(path: str | os.PathLike | Remote, attrs: dict[str, Any]) -> bool:
    """A store still marked ``recording`` whose writer holds no live lock was killed mid-run."""
    if attrs.get("status") != STATUS_RECORDING:
        return False
    lock = _lock_path(location(path))
    if not lock.exists():
        return True
    try:
        owner = json.loads(lock.read_text() or "{}")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return True
    return _owner_gone(lock, owner if isinstance(owner, dict) else {})


def open_run(path: str | os.PathLike | Remote) -> Any:
    """Open a recorded run as a lazy (dask-backed) :class:`xarray.Dataset`.

    ``path`` is a directory or an fsspec URL (``file://``, ``memory://``, ``s3://``, ...).

    Raises:
        StoreError: the path is not a LayerScope store or has an incompatible format.
    """
    import xarray as xr

    path = location(path)
    if not (path / "zarr.json").exists():
        raise StoreError(f"{path} is not a Zarr store; pass the directory written by `layerscope record`")
    dataset = xr.open_zarr(_zarr_target(path), consolidated=False)
    fmt = str(dataset.attrs.get("format", ""))
    if fmt.split("/")[0] != STORE_FORMAT.split("/")[0] or fmt.split("/")[-1] != STORE_FORMAT.split("/")[-1]:
        raise StoreError(
            f"{path} has store format {fmt or 'unknown'!r}; this LayerScope reads {STORE_FORMAT!r} "
            "(re-record it with this version)"
        )
    return dataset


def open_runs(paths: Sequence[str | os.PathLike]) -> Any:
    """Open several runs stacked along a new ``run`` dimension.

    Runs must share layers, keywords and grid; per-run provenance (prompt, seed,
    status) becomes coordinates along ``run`` so nothing is lost in the stacking.
    """
    import xarray as xr

    if not paths:
        raise StoreError("no stores given")
    from layerscope.map_statistics import variables

    stats = set(variables())
    datasets = []
    for path in paths:
        ds = open_run(path)
        keep = [v for v in ds.data_vars if v.startswith("similarity") or v in stats]
        names = [str(k) for k in ds["keyword"].values]
        stacked = ds[keep].assign_coords(
            # Prompts differ between runs, so keywords are stacked by position and their
            # words kept as a (run, keyword) coordinate.
            keyword=np.arange(len(names)),
            keyword_name=("keyword", np.asarray(names, dtype=object)),
            run=str(path),
            run_status=ds.attrs.get("status", ""),
            run_prompt=ds.attrs.get("prompt", ""),
            run_seed=int(ds.attrs.get("seed", -1)),
        )
        datasets.append(stacked.expand_dims("run"))
    try:
        combined = xr.concat(
            datasets, dim="run", join="outer", coords="different", compat="equals", combine_attrs="drop_conflicts"
        )
    except ValueError as error:
        raise StoreError(f"runs cannot be stacked: {error}") from None
    return combined
