"""The cache of :mod:`ofas_wrap.data`: ``$OFAS_WRAP_CACHE`` and the decode cache of image folders.

Decoded image folders are kept as ``decoded/<key>.pt`` (a ``torch.save`` of the decoded splits), written
atomically; the key hashes the folder's path, a fingerprint of its files (names, sizes, modification times)
and the decode settings, so an edited folder or other settings decode again. Archives are extracted below
``extracted/`` (:mod:`._archives`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from .._atomic import atomic_path

__all__ = ["cache_dir", "_decoded_key", "_read_decoded", "_write_decoded", "_dir_fingerprint"]

_DECODE_VERSION = 1


def cache_dir() -> Path:
    """Where extracted archives and decoded tensors are kept: ``$OFAS_WRAP_CACHE`` or ``~/.cache/ofas_wrap``."""
    return Path(os.environ.get("OFAS_WRAP_CACHE") or Path.home() / ".cache" / "ofas_wrap")


def _dir_fingerprint(path: Path) -> str:
    """Names, sizes and modification times of every file below ``path``, hashed (about 0.3 s for 60,000 files)."""
    digest = hashlib.sha1()
    count = 0
    pending = [(str(path), "")]
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, prefix + entry.name + "/"))
                else:
                    stat = entry.stat()
                    digest.update(f"{prefix}{entry.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
                    count += 1
    return f"{digest.hexdigest()[:20]}-{count}"


def _decoded_key(path: Path, image_column: Optional[str], label_column: Optional[str], image_size: Optional[int],
                 train_split: str, test_split: Optional[str]) -> str:
    """The decode cache's key of an image folder and the settings it is decoded with (its format never changes
    without a new ``_DECODE_VERSION``: a user's cache would be rebuilt)."""
    spec = json.dumps([_DECODE_VERSION, str(path), _dir_fingerprint(path), image_column, label_column, image_size,
                       train_split, test_split])
    return hashlib.sha1(spec.encode()).hexdigest()[:24]


def _read_decoded(key: str) -> Optional[dict[str, Any]]:
    """The decoded splits cached under ``key``, or ``None`` when there are none (or the file is damaged)."""
    cached = cache_dir() / "decoded" / f"{key}.pt"
    if cached.is_file():
        try:
            return torch.load(cached, weights_only=True)
        except Exception:  # a damaged cache file: decode again
            pass
    return None


def _write_decoded(key: str, decoded: dict[str, Any]) -> None:
    """Cache ``decoded`` under ``key`` atomically (a temporary file renamed over the target)."""
    target = cache_dir() / "decoded" / f"{key}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary:
        torch.save(decoded, temporary)
