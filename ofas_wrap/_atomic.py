"""Atomic file writes: a temporary file beside the target, renamed over it once it is whole and on disk.

A reader, or a run that a kill stopped half-way, sees the old file or the new one, never half of one. Every writer
that replaces a file (configs, block tables, run records, figures, caches, exports, the benchmarks' reports) goes
through here: :func:`write_atomic` for text and bytes, :func:`atomic_path` for a library that writes to a path
itself (``torch.save``, ``torch.jit.save``, ``onnx.save``, ``savefig``, safetensors). Whole folders (a checkpoint,
a saved model) are staged and renamed by their writers. This module imports nothing from ``ofas_wrap``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Union

__all__ = ["atomic_path", "write_atomic"]

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary file beside ``path`` to write to: it replaces ``path`` when the block ends without an error, and
    is removed when it raises (``path`` is then left as it was).

    The temporary file is hidden (``.NAME.tmp-XXXXXXXX`` and ``suffix``, e.g. ``".png"`` for a writer that picks the
    format from the name), has the permissions of a new file (not ``mkstemp``'s private ones) and is flushed to
    disk before the rename. Raises IsADirectoryError when ``path`` is a folder and FileNotFoundError when its folder
    is missing, before anything is written.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with atomic_path(folder / "table.csv") as temporary:
        ...     _ = temporary.write_text("a,b\\n")
        >>> (folder / "table.csv").read_text(), [p.name for p in folder.iterdir()]
        ('a,b\\n', ['table.csv'])
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give the file to write a name inside it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such folder to write {path.name} in")
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        os.chmod(temporary, 0o666 & ~_umask())
        yield temporary
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: PathLike, data: Union[str, bytes]) -> Path:
    """Write ``data`` (text, as UTF-8, or bytes) to ``path`` atomically (see :func:`atomic_path`); returns the path.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "notes.txt"
        >>> write_atomic(target, "first") == target, write_atomic(target, b"second").read_text()
        (True, 'second')
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"write_atomic writes str or bytes, got {type(data).__name__}")
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return path


def _umask() -> int:
    """This process's umask (the permission bits a new file does not get)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
