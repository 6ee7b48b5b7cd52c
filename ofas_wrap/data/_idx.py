"""IDX files (the MNIST / Fashion-MNIST format): :func:`read_idx`, :func:`write_idx` and an IDX folder as a
``datasets.DatasetDict`` of uint8 arrays.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ._errors import DataError

__all__ = ["FASHION_MNIST_CLASSES", "read_idx", "write_idx", "_idx_files", "_idx_dataset_dict"]

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]


def read_idx(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzipped or not, into a numpy array.

    Example:
        >>> import tempfile, numpy as np
        >>> p = tempfile.mkdtemp() + "/x-idx1-ubyte.gz"
        >>> write_idx(p, np.arange(5, dtype=np.uint8))
        >>> read_idx(p).tolist()
        [0, 1, 2, 3, 4]
    """
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path} is damaged ({type(exc).__name__}: {exc}); download or copy it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise DataError(f"{path}: unknown IDX data type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    array = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DataError(f"{path}: IDX header says shape {shape} but holds {array.size} values (truncated file?)")
    return array.reshape(shape).astype(array.dtype.newbyteorder("="))


def write_idx(path: Union[str, os.PathLike], array: np.ndarray) -> None:
    """Write a uint8 numpy array as an IDX file (gzipped when ``path`` ends in ``.gz``); for tests and tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(header + array.tobytes())


def _idx_files(path: Path, split: str, required: bool = True) -> Optional[tuple[Path, Path]]:
    prefixes = ("train",) if split == "train" else ("t10k", "test")
    for prefix in prefixes:
        for suffix in (".gz", ""):
            images = path / f"{prefix}-images-idx3-ubyte{suffix}"
            labels = path / f"{prefix}-labels-idx1-ubyte{suffix}"
            if images.is_file() and labels.is_file():
                return images, labels
    if required:
        raise DataError(f"no IDX files for the {split} split in {path} (expected {prefixes[0]}-images-idx3-ubyte.gz "
                        f"and {prefixes[0]}-labels-idx1-ubyte.gz)")
    return None


def _idx_dataset_dict(path: Path):
    import datasets

    splits = {}
    for split in ("train", "test"):
        found = _idx_files(path, split, required=split == "train")
        if found is None:
            continue
        images, labels = read_idx(found[0]), read_idx(found[1])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"IDX files in {path} for {split}: images {images.shape} and labels {labels.shape} "
                            "do not match (expected (N, H, W) and (N,))")
        num_classes = int(labels.max()) + 1 if len(labels) else 0
        names = FASHION_MNIST_CLASSES if "fashion" in str(path).lower() and num_classes <= 10 else None
        features = datasets.Features({
            "image": datasets.Array2D(shape=images.shape[1:], dtype="uint8"),
            "label": datasets.ClassLabel(names=names or [str(i) for i in range(max(num_classes, 1))]),
        })
        splits[split] = datasets.Dataset.from_dict({"image": images, "label": labels.astype(np.int64)},
                                                   features=features)
    return datasets.DatasetDict(splits)
