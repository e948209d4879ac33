"""Where stores (and the files beside them) live: a local path, or an fsspec URL.

The one place that decides "is this a URL".  ``location(text)`` returns

- a :class:`pathlib.Path` for a local path, and for a ``file://`` URL (``file:///data/run.zarr``
  is ``/data/run.zarr``, not a folder named ``file:``), so every local store keeps the
  local guarantees (an exclusive lock file, renames into place);
- a :class:`Remote` for any other ``protocol://`` URL (``memory://``, ``s3://``, ``gs://``,
  ...): a small path-like object over an fsspec filesystem with the few operations
  LayerScope needs (``/``, ``name``, ``exists``, ``read_text``, ``write_text``, ...), so
  code written against :class:`~pathlib.Path` works unchanged on object storage.

A URL whose filesystem package is missing (``s3://`` without ``s3fs``) is refused here in
one line naming the package, before anything is written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerscope.errors import LayerScopeError

#: ``protocol://`` at the start (RFC 3986 scheme characters); Windows drives (``C:\\``) do not match
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.DOTALL)


class LocationError(LayerScopeError):
    """A path or URL that LayerScope cannot read or write (a usage error)."""


def is_url(value: Any) -> bool:
    """True for ``protocol://...`` text (``file://`` included) and for :class:`Remote` objects."""
    return isinstance(value, Remote) or (isinstance(value, str) and _URL.match(value) is not None)


def location(value: str | os.PathLike | Remote, option: str = "path") -> Path | Remote:
    """A local :class:`Path` or a :class:`Remote` for ``value`` (the one resolver of store paths).

    ``Path`` and ``Remote`` objects pass through unchanged; local text is ``Path(text)``
    exactly as before URLs were accepted.  Raises :class:`LocationError` for a ``file://``
    URL naming another host, an unknown protocol, or a protocol whose package is missing.
    """
    if isinstance(value, (Path, Remote)):
        return value
    text = os.fspath(value)
    match = _URL.match(text) if isinstance(text, str) else None
    if match is None:
        return Path(text)
    protocol, rest = match.group(1).lower(), match.group(2)
    if protocol in ("file", "local"):
        host, _, path = rest.partition("/")
        if host not in ("", "localhost"):
            raise LocationError(
                f"{option} {text}: a file:// URL names a path on this machine, e.g. file:///data/run.zarr"
            )
        from urllib.parse import unquote

        return Path("/" + unquote(path))
    check_protocol(protocol, text, option)
    return Remote(f"{protocol}://{rest.rstrip('/')}")


def check_protocol(protocol: str, text: str, option: str = "path") -> None:
    """Refuse a protocol fsspec does not know, or whose filesystem package is not installed."""
    from fsspec.registry import get_filesystem_class, known_implementations, registry

    if protocol not in known_implementations and protocol not in registry:
        raise LocationError(
            f"{option} {text}: unknown storage protocol '{protocol}://'; use a local path, file://, "
            "memory://, or a protocol fsspec knows (s3://, gs://, az://, ...)"
        )
    try:
        get_filesystem_class(protocol)
    except ImportError:
        package = str(known_implementations.get(protocol, {}).get("class", protocol)).split(".")[0]
        raise LocationError(
            f"{option} {text}: {protocol}:// needs the {package} package; pip install {package}"
        ) from None


@dataclass(frozen=True)
class _Stat:
    st_size: int


@dataclass(frozen=True)
class Remote:
    """A file or directory at an fsspec URL, with the slice of the ``Path`` API LayerScope uses.

    Object stores have no directories: a "directory" exists while some object has its
    prefix, ``mkdir`` does nothing there, and a write of one object is all-or-nothing.
    """

    url: str

    # -- naming --------------------------------------------------------------
    def __str__(self) -> str:
        return self.url

    def __truediv__(self, name: str | os.PathLike) -> Remote:
        return Remote(f"{self.url}/{os.fspath(name).strip('/')}")

    @property
    def protocol(self) -> str:
        return self.url.split("://", 1)[0]

    @property
    def name(self) -> str:
        return self.url.split("://", 1)[1].rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def parent(self) -> Remote:
        head, rest = self.url.split("://", 1)
        return Remote(f"{head}://{rest.rsplit('/', 1)[0]}") if "/" in rest else self

    def with_name(self, name: str) -> Remote:
        return self.parent / name

    def resolve(self) -> Remote:
        return self

    def expanduser(self) -> Remote:
        return self

    # -- the filesystem --------------------------------------------------------
    @property
    def fs(self) -> Any:
        import fsspec

        return fsspec.filesystem(self.protocol)

    @property
    def root(self) -> str:
        """The path as the filesystem names it (no protocol)."""
        return self.fs._strip_protocol(self.url)

    def exists(self) -> bool:
        return bool(self.fs.exists(self.root))

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.root))

    def is_file(self) -> bool:
        return bool(self.fs.isfile(self.root))

    def is_symlink(self) -> bool:
        return False

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.root)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes, *, exclusive: bool = False) -> None:
        """One object, all or nothing; ``exclusive`` refuses an existing one (atomically only
        where the backend implements fsspec's ``mode="create"``)."""
        self.fs.pipe_file(self.root, data, mode="create" if exclusive else "overwrite")

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.root)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        self.fs.makedirs(self.root, exist_ok=True)

    def stat(self) -> _Stat:
        return _Stat(int(self.fs.du(self.root)) if self.is_dir() else int(self.fs.size(self.root)))

    def remove_tree(self) -> None:
        self.fs.rm(self.root, recursive=True)

    def move_tree(self, target: Remote) -> None:
        """Copy-and-delete on object stores (fine for a store's metadata-only skeleton)."""
        self.fs.mv(self.root, target.root, recursive=True)


def size_of(path: str | os.PathLike | Remote) -> int:
    """Bytes under a local directory or a URL (what a recording reports it wrote)."""
    where = location(path)
    if isinstance(where, Remote):
        return where.stat().st_size
    return sum(p.stat().st_size for p in where.rglob("*") if p.is_file())
