"""Load pipelines and images from local paths only.

No model hub is ever contacted: a model is a local diffusers pipeline directory, loaded
with ``local_files_only=True`` and safetensors weights only.  The directory is checked
before anything heavy is imported, so a broken folder costs one line, not a traceback
from deep inside ``from_pretrained``.  (Model names such as the testbed's ``default``/``random``
are resolved to directories by :data:`layerscope.registry.MODELS`, outside the core.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from layerscope.errors import LayerScopeError


class LoadError(LayerScopeError):
    """A model directory or image cannot be used (a usage error)."""


DTYPES = ("float32", "bfloat16", "float16")
#: The provenance file a LayerScope-built model directory carries (name, version, weights).
MODEL_INFO_FILE = "layerscope_model.json"
_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")


def _read_index(model: str | os.PathLike, index: Path) -> dict[str, Any]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LoadError(
            f"--model {model}: model_index.json is not valid JSON ({error}); re-export the pipeline"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("_class_name"), str):
        raise LoadError(f"--model {model}: model_index.json has no '_class_name'; re-export the pipeline")
    return data


def _check_components(model: str | os.PathLike, path: Path, index: dict[str, Any]) -> None:
    """Every component named in model_index.json must have its folder (and weights, for models)."""
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or None in entry:
            continue
        folder = path / name
        if not folder.is_dir():
            raise LoadError(
                f"--model {model}: model_index.json names component {name!r} but {folder.name}/ is missing; "
                "copy the whole pipeline folder"
            )
        # models carry config.json; schedulers, tokenizers and processors carry other configs
        if (folder / "config.json").is_file():
            files = [p.name for p in folder.iterdir()]
            if not any(f.endswith(_WEIGHT_SUFFIXES) for f in files):
                pickled = [f for f in files if f.endswith((".bin", ".pt", ".ckpt", ".pth"))]
                hint = "; LayerScope loads safetensors only (convert it)" if pickled else ""
                raise LoadError(f"--model {model}: {name}/ has no safetensors weights{hint}")


#: Written by ``layerscope finetune``: the base pipeline and the changed tensors (see
#: :func:`read_finetune`).
FINETUNE_FILE = "layerscope_finetune.json"
FINETUNE_WEIGHTS = "transformer_delta.safetensors"


def read_finetune(path: Path, model: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The finetune record of ``path`` (``None`` if it is not a finetune directory).

    A finetune directory holds only the tensors training changed (the weak layers'
    cross-attention: megabytes, where a 14B transformer is 28 GB) and names its base
    pipeline; loading merges them into the base.  The base path is stored relative to the
    finetune directory when it can be, so the pair can be moved together.
    """
    marker = path / FINETUNE_FILE
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        base = Path(info["base_model_path"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise LoadError(
            f"--model {model or path}: {FINETUNE_FILE} is unreadable ({error}); re-run layerscope finetune"
        ) from None
    info["base_dir"] = base if base.is_absolute() else (path / base).resolve()
    if not (path / FINETUNE_WEIGHTS).is_file():
        raise LoadError(f"--model {model or path}: {FINETUNE_WEIGHTS} is missing; re-run layerscope finetune")
    return info


def resolve_model_dir(model: str | os.PathLike) -> Path:
    """Check that ``model`` is a local diffusers pipeline directory LayerScope can probe
    (or a ``layerscope finetune`` directory whose base is one)."""
    if not str(model).strip():
        raise LoadError("--model is empty; pass a local diffusers pipeline directory")
    path = Path(model).expanduser()
    if not path.is_dir():
        raise LoadError(f"--model {model}: no such directory; pass a local diffusers pipeline directory")
    finetune = read_finetune(path, model)
    if finetune is not None:
        try:
            resolve_model_dir(finetune["base_dir"])
        except LoadError as error:
            raise LoadError(f"--model {model}: its base model cannot be used ({error})") from None
        return path
    index = path / "model_index.json"
    if not index.is_file():
        raise LoadError(
            f"--model {model}: not a diffusers pipeline directory (no model_index.json); "
            "pass the folder of e.g. Wan2.1-I2V-14B-480P-Diffusers"
        )
    from layerscope.adapters.registry import REFUSED_PIPELINES, supported_pipeline_classes

    data = _read_index(model, index)
    class_name = data["_class_name"]
    supported = supported_pipeline_classes()
    if class_name in REFUSED_PIPELINES and class_name not in supported:
        raise LoadError(f"--model {model}: LayerScope cannot map {class_name}: {REFUSED_PIPELINES[class_name]}")
    if class_name not in supported:
        raise LoadError(
            f"--model {model}: pipeline class {class_name} is not supported; supported: {', '.join(supported)}"
        )
    _check_components(model, path, data)
    return path


def model_family(model_dir: Path) -> Any:
    """The adapter class of a folder :func:`resolve_model_dir` accepted, read from its (or its
    fine-tune base's) ``model_index.json``: what a command may refuse before loading weights."""
    finetune = read_finetune(model_dir)
    folder = Path(finetune["base_dir"]) if finetune is not None else model_dir
    class_name = _read_index(folder, folder / "model_index.json")["_class_name"]
    from layerscope.adapters.registry import adapter_classes

    return next(cls for cls in adapter_classes() if class_name in cls.pipeline_classes)


def model_info(model_dir: str | os.PathLike) -> dict[str, Any]:
    """What a store or report should say about a model directory (its provenance file, else its name)."""
    model_dir = Path(model_dir)
    finetune = read_finetune(model_dir)
    if finetune is not None:
        base = model_info(finetune["base_dir"])
        return {
            "model_id": f"{base['model_id']}+{model_dir.name}",
            "base_model_id": base["model_id"],
            "weights": "finetuned",
            "weights_note": f"{base['model_id']} with layers {finetune.get('layers')} fine-tuned "
            f"({'with' if finetune.get('focal_guidance') else 'without'} Focal Guidance)",
        }
    marker = model_dir / MODEL_INFO_FILE
    if marker.exists():
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
            return {
                "model_id": f"{info['name']}-v{info['version']}",
                "weights": info.get("weights", "unknown"),
                "weights_note": info.get("note", ""),
            }
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            pass  # a damaged provenance file: fall back to the folder name
    return {"model_id": model_dir.name, "weights": "checkpoint", "weights_note": ""}


#: diffusers' two offload strategies (``--cpu-offload model|sequential``).
OFFLOAD_MODES = ("model", "sequential")


def check_device(device: str) -> Any:
    """``device`` as a ``torch.device``, or one clear error (not a device name; CUDA absent here)."""
    import torch

    try:
        torch_device = torch.device(device)
    except RuntimeError:
        raise LoadError(f"--device {device!r} is not a torch device; use e.g. cpu, cuda or cuda:1") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise LoadError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if torch_device.type == "mps" and not torch.backends.mps.is_available():
        raise LoadError(f"--device {device}: Apple's MPS is not available on this machine; use --device cpu")
    return torch_device


def load_pipeline(
    model: str | os.PathLike,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    cpu_offload: bool | str = False,
) -> tuple[Any, Path]:
    """Load a pipeline from a local directory; return it and the directory it came from.

    ``device`` and ``dtype`` are always explicit: on a GPU pass ``device="cuda"`` and
    usually ``dtype="bfloat16"``.  ``cpu_offload``: ``"model"`` (or ``True``) keeps only
    the running component on the device (diffusers' model offload, for models that fit
    one component at a time); ``"sequential"`` streams submodules (diffusers' sequential
    offload, for components larger than GPU memory, much slower).
    """
    if dtype not in DTYPES:
        raise LoadError(f"--dtype {dtype} is not supported; choose one of {', '.join(DTYPES)}")
    offload = "model" if cpu_offload is True else (cpu_offload or None)
    if offload not in (None, *OFFLOAD_MODES):
        raise LoadError(f"--cpu-offload {cpu_offload!r} is not supported; choose one of {', '.join(OFFLOAD_MODES)}")
    path = resolve_model_dir(model)
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    torch_device = check_device(device)
    # Loading bars say nothing useful for local files; the denoising bar stays.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    finetune = read_finetune(path, model)
    _import_own_components(model, finetune["base_dir"] if finetune else path)
    try:
        pipe = DiffusionPipeline.from_pretrained(
            finetune["base_dir"] if finetune else path,
            local_files_only=True,
            use_safetensors=True,
            dtype=getattr(torch, dtype),
        )
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LoadError(f"--model {model}: diffusers could not load this pipeline ({first[:300]})") from None
    if finetune:
        _merge_finetune(pipe, path, model)
    if offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=torch_device)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=torch_device)
    else:
        pipe.to(torch_device)
    return pipe, path


def _import_own_components(model: str | os.PathLike, path: Path) -> None:
    """Import the registered components (:data:`~layerscope.registry.PIPELINE_COMPONENTS`) the
    folder names; a module that no installed package registers is never imported (a folder's
    JSON chooses no code)."""
    from layerscope.registry import PIPELINE_COMPONENTS

    registered = {}
    for name in PIPELINE_COMPONENTS.names():
        registered.setdefault(PIPELINE_COMPONENTS.target(name).partition(":")[0], name)
    for entry in _read_index(model, path / "model_index.json").values():
        library = entry[0] if isinstance(entry, list) and entry and isinstance(entry[0], str) else ""
        if library in registered:
            PIPELINE_COMPONENTS.load(registered[library])


def _merge_finetune(pipe: Any, path: Path, model: str | os.PathLike) -> None:
    """Load the changed tensors into the base transformer; every name must exist and match."""
    from safetensors.torch import load_file

    delta = load_file(path / FINETUNE_WEIGHTS)
    own = pipe.transformer.state_dict()
    unknown = sorted(set(delta) - set(own))
    if unknown:
        raise LoadError(f"--model {model}: tensors {', '.join(unknown[:3])} are not in the base transformer")
    for name, tensor in delta.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise LoadError(
                f"--model {model}: {name} has shape {tuple(tensor.shape)}, the base {tuple(own[name].shape)}"
            )
    pipe.transformer.load_state_dict({k: v.to(own[k].dtype) for k, v in delta.items()}, strict=False)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an RGB image as uint8 (H, W, 3), or fail with a one-line reason."""
    from PIL import Image, UnidentifiedImageError

    if not str(path).strip():
        raise LoadError("--image is empty; pass a PNG or JPEG file")
    if Path(path).is_dir():
        raise LoadError(f"--image {path} is a directory; pass a PNG or JPEG file")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise LoadError(f"--image {path}: no such file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise LoadError(f"--image {path}: not a readable image ({type(error).__name__}); pass a PNG or JPEG") from None
