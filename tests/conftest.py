"""Shared fixtures: one tiny real-architecture Wan I2V pipeline per test session.

The pipeline is the embedded default model, built into a temporary cache directory and
loaded back with ``from_pretrained(local_dir)``, exactly as ``layerscope record`` does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config):
    """Bind diffusers' and transformers' log handlers now, to pytest's session-long capture.

    Each library makes its ``StreamHandler`` on first use, holding whatever ``sys.stderr`` is
    then; made inside a test with ``capsys``, it keeps that test's stream, which is closed
    afterwards, and every later warning prints a "Logging error" traceback into another
    test's stderr (which one depends on the xdist schedule)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.get_logger("diffusers")
    transformers_logging.get_logger("transformers")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep the built default model out of the user's home directory."""
    cache = tmp_path_factory.mktemp("layerscope-cache")
    old = os.environ.get("LAYERSCOPE_CACHE")
    os.environ["LAYERSCOPE_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("LAYERSCOPE_CACHE", None)
    else:
        os.environ["LAYERSCOPE_CACHE"] = old


@pytest.fixture(scope="session")
def model_dir(_isolated_cache):
    from layerscope_testbed import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def tiny_pipe(model_dir):
    from layerscope.loading import load_pipeline

    pipe, _ = load_pipeline(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def example():
    """Small but valid generation settings (16x16 tokens per latent frame)."""
    import layerscope_testbed as testbed

    return {
        "image": testbed.example_image(),
        "prompt": testbed.EXAMPLE_PROMPT,
        "keywords": list(testbed.EXAMPLE_KEYWORDS),
        "height": 256,
        "width": 256,
        "num_frames": 5,
        "num_inference_steps": 3,
    }


@pytest.fixture(scope="session")
def recorded_run(tiny_pipe, example, tmp_path_factory):
    """One complete float32 recording of the example, shared by read-only tests."""
    from layerscope.recording import record

    path = tmp_path_factory.mktemp("runs") / "base.zarr"
    summary = record(tiny_pipe, path, dtype="float32", progress=False, **example)
    return path, summary


@pytest.fixture()
def base_ranking(recorded_run, tmp_path):
    """`layerscope rank` of (a copy of) the shared recording: a ranking of the random tiny model.

    One run has no verdict (no band, no weak layers), so the layers are forced with
    ``--method bottom-k``, as a user guiding chosen layers would."""
    import shutil

    from layerscope.cli import main

    path, _ = recorded_run
    copy = tmp_path / "base.zarr"
    shutil.copytree(path, copy)
    out = tmp_path / "ranking.json"
    assert main(["rank", str(copy), "--out", str(out), "--method", "bottom-k", "--k", "2"]) == 0
    return out


@pytest.fixture(scope="session")
def example_script():
    """Load ``examples/NAME.py`` as a module (the examples are scripts, not a package)."""
    import importlib.util

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
