"""What ``--dataset`` names (:func:`resolve_source`: a Hub id, an image folder or its archive, a
``save_to_disk`` directory, IDX files, ``fashion-mnist``) and loading it as a ``datasets.DatasetDict``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ._archives import _ARCHIVE_SUFFIXES, _extract_archive
from ._errors import DataError
from ._idx import _idx_dataset_dict, _idx_files

__all__ = ["DEBIAN_FASHION_MNIST", "Source", "resolve_source", "load_dataset_dict"]

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@dataclass
class Source:
    """What :func:`resolve_source` found: ``kind`` is hub, imagefolder, disk or idx; ``path`` the local dir."""

    kind: str
    location: str
    path: Optional[Path] = None


def resolve_source(source: Union[str, os.PathLike]) -> Source:
    """Decide what ``source`` is (see the module docstring); raises :class:`DataError` for a missing path.

    Example:
        >>> resolve_source("uoft-cs/cifar10").kind
        'hub'
    """
    text = os.fspath(source).strip()
    if not text:
        raise DataError("--dataset is empty; give a Hub id, an image folder, a save_to_disk dir or IDX files")
    if text.lower() in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        if not Path(DEBIAN_FASHION_MNIST).is_dir():
            raise DataError(
                f"Fashion-MNIST was asked for but {DEBIAN_FASHION_MNIST} does not exist; install Debian's package "
                "(as root: apt-get update && apt-get install -y dataset-fashion-mnist), or give the Hub id "
                "zalando-datasets/fashion_mnist when the Hub is reachable"
            )
        text = DEBIAN_FASHION_MNIST
    path = Path(os.path.expanduser(text))
    if path.exists():
        path = path.resolve()
        if path.is_file():
            if not text.lower().endswith(_ARCHIVE_SUFFIXES):
                raise DataError(f"dataset path {path} is a file but not an archive ({', '.join(_ARCHIVE_SUFFIXES)})")
            found = _classify_dir(_extract_archive(path))
            found.location = str(path)
            return found
        return _classify_dir(path)
    looks_local = text.startswith(("/", ".", "~")) or os.sep + os.sep in text or text.count("/") > 1
    if looks_local or text.lower().endswith(_ARCHIVE_SUFFIXES):
        raise DataError(f"dataset path {text!r} does not exist")
    return Source("hub", text)


def _classify_dir(path: Path) -> Source:
    names = {p.name for p in path.iterdir()}
    if "dataset_dict.json" in names or "state.json" in names:
        return Source("disk", str(path), path)
    if _idx_files(path, "train", required=False):
        return Source("idx", str(path), path)
    if "train" in names and (path / "train").is_dir():
        return Source("imagefolder", str(path), path)
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and not any(p.is_file() for p in path.iterdir() if not p.name.startswith(".")):
        return _classify_dir(subdirs[0])  # an archive with one top-level folder
    raise DataError(
        f"{path} is not a dataset directory: expected an image folder with a train/ subfolder "
        "(train/<class>/<image>, test/<class>/<image>), a save_to_disk directory (dataset_dict.json) or IDX "
        "files (train-images-idx3-ubyte.gz, ...)"
    )


# ------------------------------------------------------------------------------------- image folders
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _imagefolder_dataset_dict(path: Path):
    """``split/<class>/<image>`` as a ``datasets.DatasetDict`` with ``image`` (``datasets.Image``) and ``label``.

    The same layout and labels as ``load_dataset("imagefolder", data_dir=path)`` (classes sorted by name, shared
    by all splits), built directly from the file list: for CIFAR-10 in 60,000 files this takes seconds where the
    generic builder takes about 30 s on every load.
    """
    import datasets

    split_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = sorted({c.name for split in split_dirs for c in split.iterdir()
                      if c.is_dir() and not c.name.startswith(".")})
    if not classes:
        raise DataError(f"{path} has no class folders: expected {path}/train/<class>/<image>")
    index = {name: i for i, name in enumerate(classes)}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    splits = {}
    for split in split_dirs:
        files: list[str] = []
        labels: list[int] = []
        for class_dir in sorted(c for c in split.iterdir() if c.is_dir() and not c.name.startswith(".")):
            with os.scandir(class_dir) as entries:
                names = sorted(e.name for e in entries if e.is_file() and e.name.lower().endswith(_IMAGE_SUFFIXES))
            if not names:
                raise DataError(f"class folder {class_dir} holds no image ({', '.join(_IMAGE_SUFFIXES)}); remove it or "
                                "add its images")
            files += [str(class_dir / name) for name in names]
            labels += [index[class_dir.name]] * len(names)
        splits[split.name] = datasets.Dataset.from_dict({"image": files, "label": labels}, features=features)
    return datasets.DatasetDict(splits)


# --------------------------------------------------------------------------------------- HF datasets
def load_dataset_dict(source: Union[str, os.PathLike, Source], config_name: Optional[str] = None):
    """Load ``source`` as a ``datasets.DatasetDict`` (IDX files become uint8 array columns).

    Raises :class:`DataError` with a hint for a missing path or an unreachable Hub.
    """
    import datasets

    resolved = source if isinstance(source, Source) else resolve_source(source)
    if resolved.kind == "idx":
        return _idx_dataset_dict(resolved.path)
    if resolved.kind == "disk":
        loaded = datasets.load_from_disk(str(resolved.path))
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    if resolved.kind == "imagefolder":
        return _imagefolder_dataset_dict(resolved.path)
    try:
        loaded = datasets.load_dataset(resolved.location, config_name)
    except Exception as exc:  # network errors, unknown ids: one clear message
        raise DataError(
            f"could not load {resolved.location!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "If it is meant as a local path, it does not exist; if it is a Hub id, check the name and that the Hub "
            "is reachable (offline: use a local image folder, a save_to_disk dir or fashion-mnist)"
        ) from exc
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded
