"""The package's shape: imports run one way, the public API cannot be shadowed, one error family."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("layerscope", "fg_intervene")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str, roots: tuple[str, ...] = PACKAGES) -> set[str]:
    """Every module under ``roots`` that ``path`` imports, at any depth of the file (lazy imports count)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in roots}


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}
    graph = {}
    for module, path in modules.items():
        # "from layerscope import accessor" names a module; "from x import func" names x
        graph[module] = {name for name in _imports(path, module) if name in modules and name != module}
    return graph


TESTBED = "layerscope_testbed"


def _reaches(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """``module -> target`` for every import in ``package`` of a module under ``forbidden``."""
    roots = (*PACKAGES, TESTBED)
    return [
        f"{_module_name(path)} -> {target}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for target in _imports(path, _module_name(path), roots)
        if any(target == name or target.startswith(name + ".") for name in forbidden)
    ]


def test_core_never_imports_the_testbed_or_fg_intervene():
    """No exemption: the CLI too reaches the testbed only through entry points (registries)."""
    assert (ROOT / "testbed" / TESTBED / "__init__.py").is_file()  # the check below can see it
    assert _reaches("layerscope", (TESTBED, "fg_intervene")) == []


def test_fg_intervene_uses_only_the_core():
    assert _reaches("fg_intervene", (TESTBED, "layerscope.cli")) == []


def _build_wheel(source: Path, out: Path) -> None:
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    subprocess.run([*command, str(source)], check=True, capture_output=True)


def test_the_core_wheel_holds_no_weights_and_no_testbed(tmp_path):
    """``pip install ./`` of the core is code and templates: under 1 MB, no safetensors, no testbed."""
    import zipfile

    _build_wheel(str(ROOT), tmp_path)
    (wheel,) = tmp_path.glob("layerscope-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert wheel.stat().st_size <= 1_000_000, f"{wheel.name}: {wheel.stat().st_size} bytes"
    assert not [n for n in names if n.endswith((".safetensors", ".json")) and "testbed" in n]
    assert not [n for n in names if n.startswith(("layerscope/testbed", TESTBED))]
    assert not [n for n in names if "model_video_labels" in n]
    # the testbed's own wheel: its package and the shipped model, not the archived labels of old models
    _build_wheel(str(ROOT / "testbed"), tmp_path)
    (testbed_wheel,) = tmp_path.glob("layerscope_testbed-*.whl")
    names = zipfile.ZipFile(testbed_wheel).namelist()
    assert f"{TESTBED}/models/shapes-wan-i2v/transformer/diffusion_pytorch_model.safetensors" in names
    assert f"{TESTBED}/shapes/model_video_labels.json" in names
    assert not [n for n in names if "model_video_labels_v" in n or n.startswith("archive")]


CORE_ALONE = """
import contextlib, io, json, sys
from importlib import metadata

sys.modules["layerscope_testbed"] = None  # importing it now fails, as without the distribution
real = metadata.entry_points


def core_only(**selection):
    found = real(**selection)
    if not selection:
        return found
    return metadata.EntryPoints(ep for ep in found if not ep.value.startswith("layerscope_testbed"))


metadata.entry_points = core_only
from layerscope.cli import main

for argv in json.loads(sys.argv[1]):  # one interpreter for every command: the imports cost most
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
    print(json.dumps({"code": code, "out": out.getvalue(), "err": err.getvalue()}))
"""


def test_the_core_alone_records_and_ranks_a_local_checkpoint(model_dir, example, tmp_path):
    """Without the testbed: record and rank a local pipeline folder; --model default says what is missing."""
    import json
    import os

    from PIL import Image

    image = tmp_path / "ref.png"
    Image.fromarray(example["image"]).save(image)
    store, other = tmp_path / "run.zarr", tmp_path / "x.zarr"
    inputs = ["--image", str(image), "--prompt", example["prompt"], "--keywords", "red,circle"]
    small = ["--steps", "2", "--frames", "5", "--quiet"]
    commands = [
        ["record", "--model", str(model_dir), "--out", str(store), *inputs, *small],
        ["rank", str(store)],
        ["record", "--out", str(other)],
        ["record", "--model", "default", "--out", str(other), *inputs, *small],
        ["--help"],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CORE_ALONE, json.dumps(commands)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    recorded, ranked, bare, named, listed = [json.loads(line) for line in done.stdout.splitlines()]
    assert recorded["code"] == 0, recorded["err"][-2000:]
    assert ranked["code"] == 0 and "too few runs for a verdict" in ranked["out"]
    assert bare["code"] == 2 and "pass --image, --prompt and --keywords" in bare["err"]
    assert named["code"] == 2 and "no testbed is installed" in named["err"]
    assert not other.exists()
    assert listed["code"] == 0 and "testbed" not in listed["out"].split("positional arguments")[1].split("\n")[1]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def _without_package_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Importing ``a.b`` runs ``a/__init__``; a package importing its own children is not a cycle."""
    return {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}


def test_no_import_cycles():
    assert _cycles(_without_package_parents(import_graph())) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_adapter_files_never_import_the_registry():
    graph = import_graph()
    for module in graph:
        if module.startswith("layerscope.adapters.") and module != "layerscope.adapters.registry":
            assert "layerscope.adapters.registry" not in graph[module], module


def test_public_functions_are_not_shadowed_by_modules():
    code = (
        "import layerscope as l; l.trace; l.record; import layerscope.store, layerscope.recording; "
        "print(callable(l.record), callable(l.trace), callable(l.open_run))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True"]


def test_layerscope_record_can_be_called_twice(tiny_pipe, example, tmp_path):
    import layerscope

    first = layerscope.record(tiny_pipe, tmp_path / "a.zarr", progress=False, **{**example, "num_inference_steps": 1})
    second = layerscope.record(tiny_pipe, tmp_path / "b.zarr", progress=False, **{**example, "num_inference_steps": 1})
    assert first.status == second.status == "complete"
    assert callable(layerscope.record)
    a, b = layerscope.open_run(first.path), layerscope.open_run(second.path)
    assert (a["similarity"].values == b["similarity"].values).all()


def test_every_usage_error_is_a_layerscope_error():
    from layerscope.errors import LayerScopeError

    classes = []
    for path in sorted((ROOT / "layerscope").rglob("*.py")) + sorted((ROOT / "fg_intervene").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                classes.append((_module_name(path), node.name))
    import importlib

    assert len(classes) >= 10
    for module, name in classes:
        cls = getattr(importlib.import_module(module), name)
        if name == "TrainingError":  # a failed training run is not a usage error (exit 1)
            assert not issubclass(cls, LayerScopeError)
            continue
        assert issubclass(cls, LayerScopeError), f"{module}.{name}"


@pytest.mark.parametrize("module", ["layerscope", "layerscope.cli", "layerscope.errors"])
def test_light_modules_do_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
