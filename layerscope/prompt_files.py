"""The JSONL prompt-file format that ``sweep`` and ``bench`` share: one line reader, one schema per use.

Lines are read by :func:`layerscope.outputs.read_jsonl_objects` (JSON objects, known
keys, required keys, one-line errors naming the line); this module holds what both
schemas check the same way: the image, relative to the file and hashed so a resumed run
can tell it changed, and the id, which names files.  The schemas themselves are
:func:`layerscope.sweep.read_prompts` (``keywords`` required: they are what is recorded)
and :func:`layerscope.bench.prompts.read_bench_prompts` (``dimension`` and yes/no
``questions`` required: they are what is judged).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from layerscope.errors import LayerScopeError

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def prompt_image(base: Path, value: str, where: str, error: type[LayerScopeError]) -> tuple[Path, str]:
    """A prompt line's image (relative to the prompt file) and its sha1, or one line of ``error``.

    Shared by the sweep's and the bench's prompt files (one format, two sets of required keys).
    """
    try:
        image = (base / value).resolve()
        digest = hashlib.sha1(image.read_bytes()).hexdigest() if image.is_file() else None
    except (OSError, ValueError) as problem:  # NUL bytes, permissions, too-long names
        raise error(f"{where}: image {value!r} cannot be read ({problem})") from None
    if digest is None:
        raise error(f"{where}: image {value} not found (paths are relative to {base or '.'}); fix the path")
    return image, digest


def check_prompt_id(entry_id: Any, where: str, number: int, seen: dict[str, int], error: type[LayerScopeError]) -> str:
    """A prompt line's id: safe as a file name and unique in the file (``seen`` is updated)."""
    if not isinstance(entry_id, str) or not _ID_PATTERN.match(entry_id):
        raise error(f"{where}: id {entry_id!r} must be letters, digits, '.', '_' or '-' (it names files)")
    if entry_id in seen:
        raise error(f"{where}: id {entry_id!r} is also on line {seen[entry_id]}; ids must be unique")
    seen[entry_id] = number
    return entry_id
