"""Archives of image folders (``.tar.gz``, ``.tgz``, ``.tar``, ``.zip``), extracted once into the cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from ._cache import cache_dir

__all__ = ["_ARCHIVE_SUFFIXES", "_extract_archive"]

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def _extract_archive(archive: Path) -> Path:
    digest = hashlib.sha256()
    with open(archive, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    target = cache_dir() / "extracted" / digest.hexdigest()[:16]
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as handle:
                handle.extractall(staging)
        else:
            with tarfile.open(archive) as handle:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.9.17 / 3.11.4: refuse unsafe members
                    handle.extractall(staging, filter="data")
                else:
                    handle.extractall(staging)
        staging.chmod(0o755)
        try:
            os.replace(staging, target)
        except OSError:  # another process won the race
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
