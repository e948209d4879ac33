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


def _imports(path: Path, module: str) -> set[str]:
    """Every module of ours that ``path`` imports, at any depth of the file (lazy imports count)."""
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
    return {name for name in found if name.split(".")[0] in PACKAGES}


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}
    graph = {}
    for module, path in modules.items():
        # "from layerscope import accessor" names a module; "from x import func" names x
        graph[module] = {name for name in _imports(path, module) if name in modules and name != module}
    return graph


def _is_testbed(module: str) -> bool:
    return module == "layerscope.testbed" or module.startswith("layerscope.testbed.")


# The CLI is the one core module allowed to reach the testbed (it resolves --model default).
CORE_EXEMPT = {"layerscope.cli"}


def test_core_never_imports_the_testbed_or_fg_intervene():
    offenders = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if module.startswith("layerscope") and not _is_testbed(module) and module not in CORE_EXEMPT
        for target in targets
        if _is_testbed(target) or target.startswith("fg_intervene")
    ]
    assert offenders == []


def test_fg_intervene_uses_only_the_core():
    offenders = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if module.startswith("fg_intervene")
        for target in targets
        if _is_testbed(target) or target == "layerscope.cli"
    ]
    assert offenders == []


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
