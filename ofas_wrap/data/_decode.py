"""Decoding a dataset once into ``uint8 (N, C, H, W)`` tensors: column picking, :func:`decode_split` and the
train/test pair a run uses (through the decode cache of :mod:`._cache`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from ._cache import _decoded_key, _read_decoded, _write_decoded
from ._errors import DataError
from ._sources import Source, load_dataset_dict

__all__ = ["decode_split", "_load_decoded"]

_IMAGE_COLUMNS = ("image", "img", "pixel_values", "picture")
_LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target", "y")
_TEST_SPLITS = ("test", "validation", "valid", "val")


def _pick_column(dataset, wanted: Optional[str], candidates: Sequence[str], kind: str, feature_types) -> str:
    columns = list(dataset.column_names)
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"the dataset has no {kind} column {wanted!r}; its columns are {columns}")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    for name, feature in dataset.features.items():
        if isinstance(feature, feature_types):
            return name
    hint = "--label-column" if kind == "label" else "--image-column"
    raise DataError(f"the dataset has no {kind} column (looked for {', '.join(candidates)}); its columns are "
                    f"{columns}; name it with {hint}")


def _open_picture(picture):
    """A PIL image from what ``datasets`` holds (a decoded image, a ``{"path", "bytes"}`` record, an array);
    an unreadable file is a DataError naming it."""
    from PIL import Image

    if isinstance(picture, Image.Image):
        return picture
    if isinstance(picture, dict):
        where = picture.get("path") or "an image given as bytes"
        try:
            source = io.BytesIO(picture["bytes"]) if picture.get("bytes") else picture["path"]
            opened = Image.open(source)
            opened.load()
            return opened
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
            raise DataError(f"cannot read the image {where}: {type(exc).__name__}: {exc}; remove or replace the "
                            "file") from None
    return Image.fromarray(np.asarray(picture))


def decode_split(dataset, image_column: Optional[str] = None, label_column: Optional[str] = None,
                 image_size: Optional[int] = None, batch: int = 2000) -> tuple[Tensor, Tensor, list[str]]:
    """Decode a ``datasets.Dataset`` once into ``uint8 (N, C, H, W)`` images, ``int64 (N,)`` labels, class names.

    The split is colour (3 channels) if any of its images is, with its grey images expanded; grey (1) only if all
    are. With ``image_size`` every image is resized to a square of that size, otherwise all images must have the
    same size. An unreadable file is a DataError naming it.
    """
    import datasets
    from PIL import Image

    image_key = _pick_column(dataset, image_column, _IMAGE_COLUMNS, "image",
                             (datasets.Image, datasets.Array2D, datasets.Array3D))
    label_key = _pick_column(dataset, label_column, _LABEL_COLUMNS, "label", (datasets.ClassLabel,))
    if len(dataset) == 0:
        raise DataError("a split of the dataset is empty")
    label_feature = dataset.features[label_key]
    names = list(label_feature.names) if isinstance(label_feature, datasets.ClassLabel) else []
    labels = torch.as_tensor(np.asarray(dataset.select_columns([label_key]).with_format("numpy")[:][label_key]),
                             dtype=torch.int64).reshape(-1)
    if labels.numel() and int(labels.min()) < 0:
        raise DataError(f"label column {label_key!r} has negative labels (unlabelled test split?)")
    feature = dataset.features[image_key]
    chunks = []
    if isinstance(feature, (datasets.Array2D, datasets.Array3D)):
        arrays = np.asarray(dataset.select_columns([image_key]).with_format("numpy")[:][image_key])
        if feature.dtype == "uint8":  # the numpy formatter widens the stored uint8
            arrays = arrays.astype(np.uint8)
        chunks.append(arrays[:, None] if arrays.ndim == 3 else np.moveaxis(arrays, -1, 1))
        if image_size is not None:
            raise DataError("--image-size is not supported for array datasets (IDX); resize them beforehand")
    else:
        # each image keeps its own kind (grey or colour) while decoding; the split is colour if any image is, and
        # its grey images are then expanded (lossless): channels are never decided by whichever file sorts first
        plain = dataset.select_columns([image_key]).cast_column(image_key, datasets.Image(decode=False)) \
            if isinstance(feature, datasets.Image) else dataset.select_columns([image_key])
        for start in range(0, len(plain), batch):
            pictures = plain[start:start + batch][image_key]
            arrays = []
            for picture in pictures:
                picture = _open_picture(picture)
                mode = "L" if picture.mode in ("L", "1", "I", "I;16", "F") else "RGB"
                picture = picture.convert(mode)
                if image_size is not None and picture.size != (image_size, image_size):
                    picture = picture.resize((image_size, image_size), Image.BILINEAR)
                array = np.asarray(picture)
                arrays.append(array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0))
            if len({a.shape[1:] for a in arrays}) > 1 or (chunks and chunks[0].shape[2:] != arrays[0].shape[1:]):
                raise DataError("the images have different sizes; pass --image-size N to resize them to N x N")
            channels = max(a.shape[0] for a in arrays)
            chunks.append(np.stack([np.repeat(a, channels // a.shape[0], axis=0) for a in arrays]))
        channels = max(c.shape[1] for c in chunks)
        chunks = [np.repeat(c, channels // c.shape[1], axis=1) for c in chunks]
    images = torch.from_numpy(np.ascontiguousarray(np.concatenate(chunks)))
    if images.dtype != torch.uint8:
        raise DataError(f"image column {image_key!r} holds {images.dtype}, expected 8-bit images")
    num_classes = int(labels.max()) + 1
    if not names or len(names) < num_classes:
        names = [str(i) for i in range(num_classes)]
    return images, labels, names


def _load_decoded(source: Source, config_name: Optional[str], image_column: Optional[str],
                  label_column: Optional[str], image_size: Optional[int], train_split: str,
                  test_split: Optional[str]) -> dict[str, Any]:
    """``{"train": {"images", "labels"}, "test": {...}, "class_names"}`` of ``source``, decoded once; image folders
    (and archives) are read from and written to the decode cache."""
    key = None
    if source.kind == "imagefolder":
        key = _decoded_key(source.path, image_column, label_column, image_size, train_split, test_split)
        cached = _read_decoded(key)
        if cached is not None:
            return cached
    splits = load_dataset_dict(source, config_name)
    available = list(splits.keys())
    if train_split not in splits:
        raise DataError(f"the dataset has no {train_split!r} split; its splits are {available}")
    if test_split is None:
        test_split = next((name for name in _TEST_SPLITS if name in splits), None)
        if test_split is None:
            raise DataError(f"the dataset has no test split (looked for {', '.join(_TEST_SPLITS)}); its splits are "
                            f"{available}; name one with --test-split")
    elif test_split not in splits:
        raise DataError(f"the dataset has no {test_split!r} split; its splits are {available}")
    decoded: dict[str, Any] = {}
    for role, name in (("train", train_split), ("test", test_split)):
        if len(splits[name]) == 0:
            raise DataError(f"the {name!r} split of {source.location} is empty")
        images, labels, names = decode_split(splits[name], image_column, label_column, image_size)
        decoded[role] = {"images": images, "labels": labels}
        decoded.setdefault("class_names", names)
    train_channels, test_channels = decoded["train"]["images"].shape[1], decoded["test"]["images"].shape[1]
    if {train_channels, test_channels} == {1, 3}:  # a grey split beside a colour one: expand the grey one
        for role in ("train", "test"):
            if decoded[role]["images"].shape[1] == 1:
                decoded[role]["images"] = decoded[role]["images"].expand(-1, 3, -1, -1).contiguous()
    if decoded["train"]["images"].shape[1:] != decoded["test"]["images"].shape[1:]:
        raise DataError(f"train images are {tuple(decoded['train']['images'].shape[1:])} but test images are "
                        f"{tuple(decoded['test']['images'].shape[1:])}; pass --image-size to resize both")
    if key is not None:
        _write_decoded(key, decoded)
    return decoded
