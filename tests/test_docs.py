"""The documentation: every shell block is tagged, and every runnable one runs.

A ```bash block in README.md or docs/ is preceded by ``<!-- runnable -->`` (this test
runs it, at the tiny sizes written in it, on the shipped model) or by
``<!-- not-runnable: REASON -->`` (a real checkpoint, a GPU, many minutes).  Blocks of one
page run in order in one scratch directory (a later block may read what an earlier one
wrote), with the project's ``.venv`` linked in, one torch thread, as a user would paste
them.  ``mkdocs build --strict`` itself runs in ``make test`` (the Makefile).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = "<!-- runnable -->"
NOT_RUNNABLE = re.compile(r"<!-- not-runnable: .+ -->")
FENCE = re.compile(r"^(\s*)```(\w*)")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def shell_blocks(page: Path) -> list[tuple[int, str | None, str]]:
    """(line number, the tag above it or None, the block's text) for every ```bash block."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        start, language, indent = index, match.group(2), match.group(1)
        index += 1
        body = []
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index][len(indent) :])
            index += 1
        index += 1
        if language in ("bash", "sh", "shell", "console"):
            above = start - 1
            while above >= 0 and not lines[above].strip():
                above -= 1
            tag = lines[above].strip() if above >= 0 else None
            blocks.append((start + 1, tag, "\n".join(body)))
    return blocks


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_every_test_the_support_matrix_names_exists():
    """Each cell of docs/support.md is backed by a test that is really there (file and function)."""
    import ast

    text = (ROOT / "docs" / "support.md").read_text(encoding="utf-8")
    named = re.findall(r"`(tests/test_\w+\.py)(?:::(\w+))?`", text)
    assert len(named) > 30
    for path, function in named:
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert not function or function in defined, f"{path}::{function} named in docs/support.md does not exist"


def test_every_shell_block_says_whether_it_runs():
    untagged = [
        f"{_name(page)}:{line}"
        for page in pages()
        for line, tag, _ in shell_blocks(page)
        if tag != RUNNABLE and not (tag and NOT_RUNNABLE.fullmatch(tag))
    ]
    assert not untagged, f"tag these blocks <!-- runnable --> or <!-- not-runnable: why -->: {untagged}"
    assert sum(tag == RUNNABLE for page in pages() for _, tag, _ in shell_blocks(page)) >= 10


def _runnable_pages() -> list[Path]:
    return [page for page in pages() if any(tag == RUNNABLE for _, tag, _ in shell_blocks(page))]


@pytest.mark.slow
@pytest.mark.parametrize("page", _runnable_pages(), ids=_name)
def test_runnable_blocks_run(page: Path, tmp_path: Path):
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    for folder in ("examples", "benchmarks", "scripts"):  # commands may name the repository's scripts
        (tmp_path / folder).symlink_to(ROOT / folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LAYERSCOPE_CACHE": str(tmp_path / "cache")}
    for line, tag, body in shell_blocks(page):
        if tag != RUNNABLE:
            continue
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", body],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, (
            f"{_name(page)}:{line} failed:\n{body}\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
        )
