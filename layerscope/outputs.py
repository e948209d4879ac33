"""Checks and atomic writes for the files a command produces, and reads of the small files it takes.

A command checks every output path before its long work starts, so a typo costs one
line instead of an hour of recording; writes go to a sibling and are renamed, so a
crash never leaves a half-written file under the final name.

Outputs may be fsspec URLs (``memory://``, ``s3://``, ...; :mod:`layerscope.locations`):
there a file is one object, written whole in one request, so no sibling is needed.
"""

from __future__ import annotations

import os
from pathlib import Path

from layerscope.errors import LayerScopeError
from layerscope.locations import LocationError, Remote, location


class OutputError(LayerScopeError):
    """An output path cannot be written (a usage error)."""


def _file_ancestor(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that is not a directory, if any."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_path(
    path: str | os.PathLike | Remote, option: str = "--out", *, directory: bool = False
) -> Path | Remote:
    """Refuse an empty path, a path under a regular file, and (for files) an existing directory.

    A URL comes back as a :class:`~layerscope.locations.Remote` (a ``file://`` URL as its
    local path); one whose filesystem package is missing is refused here, in one line.
    """
    if not str(path).strip():
        raise OutputError(f"{option} is empty; name the {'directory' if directory else 'file'} to write")
    try:
        where = location(path, option)
    except LocationError as error:
        raise OutputError(str(error)) from None
    if isinstance(where, Remote):
        if not directory and where.is_dir():
            raise OutputError(f"{option} {where} is a directory; name a file inside it, e.g. {where / 'out'}")
        if directory and where.is_file():
            raise OutputError(f"{option} {where} is a file; choose a directory path")
        return where
    path = where.expanduser()
    blocker = _file_ancestor(path)
    if blocker is not None:
        raise OutputError(f"{option} {path}: {blocker} is a file, not a directory; choose another path")
    if not directory and path.is_dir():
        raise OutputError(f"{option} {path} is a directory; name a file inside it, e.g. {path / 'out'}")
    if directory and path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file; choose a directory path")
    return path


def write_text_atomic(path: str | os.PathLike | Remote, text: str, option: str = "--out") -> Path | Remote:
    """Write ``text`` to ``path`` through a temporary sibling (never a half-written file)."""
    path = check_output_path(path, option)
    if isinstance(path, Remote):
        path.write_text(text)  # one object, one request: whole or absent
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def read_text_input(
    path: str | os.PathLike, option: str, fix: str, error: type[LayerScopeError] = LayerScopeError
) -> str:
    """Read a small UTF-8 input file; every way it can be wrong is one ``error`` line.

    The one place that turns missing files, directories, bad encodings and unreadable
    paths into messages, so rankings, intervention configs and prompt files say the same
    thing about the same mistake.
    """
    if not str(path).strip():
        raise error(f"{option} is empty; {fix}")
    try:
        source = location(path, option)  # a sweep's plan or a ranking may be at a URL
    except LocationError as reason:
        raise error(str(reason)) from None
    try:
        return source.read_text(encoding="utf-8-sig")  # a leading BOM (Windows editors) is not content
    except FileNotFoundError:
        raise error(f"{option} {path}: no such file; {fix}") from None
    except IsADirectoryError:
        raise error(f"{option} {path} is a directory; pass a file ({fix})") from None
    except NotADirectoryError:
        raise error(f"{option} {path}: a parent of it is a file, not a directory; {fix}") from None
    except UnicodeDecodeError:
        raise error(f"{option} {path} is not UTF-8 text; {fix}") from None
    except OSError as reason:
        raise error(f"{option} {path} cannot be read ({reason.strerror})") from None


def read_json_object(
    path: str | os.PathLike, option: str, fix: str, error: type[LayerScopeError] = LayerScopeError
) -> dict:
    """A JSON file whose top level must be an object (see :func:`read_text_input`)."""
    import json

    text = read_text_input(path, option, fix, error)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as reason:
        raise error(f"{option} {path} is not JSON ({reason}); {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{option} {path}: expected a JSON object; {fix}")
    return data


def read_jsonl_objects(
    path: str | os.PathLike,
    option: str,
    fix: str,
    error: type[LayerScopeError],
    *,
    allowed: set[str],
    required: tuple[str, ...] = (),
):
    """Yield ``(where, data)`` for each JSON-object line of a JSONL input (``#`` and blank lines skipped).

    The one reader of line-oriented inputs (sweep prompts, training data): every problem
    is one ``error`` naming ``file:line``; ``required`` keys must be non-empty strings.
    Lines are split on ``\\n`` only (``str.splitlines`` would also split inside JSON
    strings at U+2028/U+0085).
    """
    import json

    text = read_text_input(path, option, fix, error)
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as reason:
            raise error(f"{where}: not JSON ({reason.msg}); {fix}") from None
        if not isinstance(data, dict):
            raise error(f"{where}: expected a JSON object; {fix}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise error(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        for key in required:
            if not isinstance(data.get(key), str) or not data[key].strip():
                raise error(f"{where}: '{key}' must be a non-empty string")
        yield number, where, data
