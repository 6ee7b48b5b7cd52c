"""The splits a run uses: :func:`load_image_data` (the validation carve or ``val_from='test'``, the subsets,
the training split's statistics), :class:`ImageData` and :class:`DataInfo`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor

from ._decode import _load_decoded
from ._errors import DataError
from ._loader import ImageTensorDataset, convert_channels
from ._sources import resolve_source

__all__ = ["DataInfo", "ImageData", "load_image_data"]


@dataclass
class DataInfo:
    """What a run needs to know about its data (written to the run directory as ``data.json``)."""

    source: str
    kind: str
    num_classes: int
    class_names: list[str]
    channels: int
    stored_channels: int
    image_size: tuple[int, int]
    mean: list[float]
    std: list[float]
    sizes: dict[str, int] = field(default_factory=dict)
    val_size: int = 0
    split_seed: int = 0
    val_from: str = "train"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImageData:
    """The three splits (``train`` augmented, ``val`` carved from train, ``test``) and their :class:`DataInfo`."""

    train: ImageTensorDataset
    val: ImageTensorDataset
    test: ImageTensorDataset
    info: DataInfo


def _count(size: Union[int, float, None], total: int, what: str) -> int:
    if size is None:
        return 0
    if isinstance(size, float) and 0.0 <= size < 1.0:
        return int(round(size * total))
    if int(size) != size or size < 0:
        raise DataError(f"{what} must be a count >= 0 or a fraction in [0, 1), got {size}")
    return int(size)


def load_image_data(source: Union[str, os.PathLike], *, in_chans: Union[int, str, None] = "auto",
                    val_size: Union[int, float] = 0.1, train_subset: Optional[int] = None,
                    eval_subset: Optional[int] = None, split_seed: int = 0, image_size: Optional[int] = None,
                    augment: bool = True, train_split: str = "train", test_split: Optional[str] = None,
                    image_column: Optional[str] = None, label_column: Optional[str] = None,
                    config_name: Optional[str] = None, normalization: Optional[dict[str, Sequence[float]]] = None,
                    val_from: str = "train") -> ImageData:
    """Load, decode once, carve the validation split and wrap everything as :class:`ImageTensorDataset`.

    Args:
        source: see :func:`resolve_source`.
        in_chans: ``"auto"`` keeps the images' channels; ``3`` expands grey images, ``1`` turns RGB to grey.
        val_size: images carved (at random, ``split_seed``) from the training split as the validation split used to
            choose T; an int count or a fraction. The test split is never used for choices.
        train_subset: keep only this many training images (after the carve), at random; ``None`` keeps all.
        eval_subset: keep only this many validation and test images each, at random (class-mixed).
        split_seed: seed of the carve and of the subsets; the same value gives the same splits in every recipe.
        image_size: resize every image to this square size (needed when the images differ in size).
        augment: pad-4 random crop + flip on the training split.
        train_split / test_split: split names (``test_split=None`` looks for test, validation, valid, val).
        image_column / label_column: column names when they are not the usual ones.
        config_name: the Hub dataset configuration, if it has several.
        normalization: ``{"mean": [...], "std": [...]}`` to use instead of the training split's own statistics
            (a model trained earlier keeps the normalisation it was trained with).
        val_from: ``"train"`` (the carve above) or ``"test"``: the validation split is a fixed, seeded half of the
            test split and the test split is the other half (for a starting model that saw every training image,
            such as every released checkpoint, where a carve from train is contaminated). ``val_size`` is then
            ignored and the whole training split trains.

    Raises:
        DataError: missing path, unknown layout, missing or empty split, no image or label column, a validation
            split that leaves no training image.
    """
    resolved = resolve_source(source)
    decoded = _load_decoded(resolved, config_name, image_column, label_column, image_size, train_split, test_split)
    train_images, train_labels = decoded["train"]["images"], decoded["train"]["labels"]
    test_images, test_labels = decoded["test"]["images"], decoded["test"]["labels"]
    names = list(decoded["class_names"])
    num_classes = max(len(names), int(train_labels.max()) + 1, int(test_labels.max()) + 1)
    stored = int(train_images.shape[1])
    channels = stored if in_chans in (None, "auto") else int(in_chans)
    if channels not in (1, 3, stored):
        raise DataError(f"in_chans must be 'auto', 1 or 3, got {in_chans!r}")

    if val_from not in ("train", "test"):
        raise DataError(f"val_from must be 'train' or 'test', got {val_from!r}")
    generator = torch.Generator().manual_seed(split_seed)
    order = torch.randperm(len(train_labels), generator=generator)
    n_val = _count(val_size, len(order), "val_size") if val_from == "train" else 0
    if n_val >= len(order):
        raise DataError(f"val_size={val_size} leaves no training image (the train split has {len(order)})")
    val_index, train_index = order[:n_val], order[n_val:]
    if train_subset is not None:
        if train_subset < 1:
            raise DataError(f"train_subset must be >= 1, got {train_subset}")
        train_index = train_index[:train_subset]
    test_index = torch.randperm(len(test_labels), generator=generator)
    held_out_val = None
    if val_from == "test":  # a seeded half of test chooses, the other half reports; never the same image
        half = len(test_index) // 2
        held_out_val, test_index = test_index[:half], test_index[half:]
    if eval_subset is not None:
        if eval_subset < 1:
            raise DataError(f"eval_subset must be >= 1, got {eval_subset}")
        val_index, test_index = val_index[:eval_subset], test_index[:eval_subset]
    if held_out_val is not None:
        val_index = held_out_val[:eval_subset] if eval_subset is not None else held_out_val
    elif n_val == 0:
        val_index = test_index[:0]
    train_part = train_images.index_select(0, train_index)
    if normalization is not None:  # given (a run's recorded statistics, a checkpoint's): nothing to measure
        mean, std = [float(v) for v in normalization["mean"]], [float(v) for v in normalization["std"]]
        if len(mean) != channels or len(std) != channels:
            raise DataError(f"the normalisation has {len(mean)} channels but the images have {channels}")
    else:
        mean, std = _channel_stats(train_images.index_select(0, order[n_val:]))
        if channels != stored:
            if channels == 3:
                mean, std = mean * 3, std * 3
            else:
                mean, std = _channel_stats(convert_channels(train_images.index_select(0, order[n_val:]), 1))
    train = ImageTensorDataset(train_part, train_labels.index_select(0, train_index), mean, std, augment, channels)
    val_source = train_images if n_val else test_images
    val_labels = train_labels if n_val else test_labels
    val = ImageTensorDataset(val_source.index_select(0, val_index), val_labels.index_select(0, val_index), mean, std,
                             False, channels)
    test = ImageTensorDataset(test_images.index_select(0, test_index), test_labels.index_select(0, test_index), mean,
                              std, False, channels)
    info = DataInfo(
        source=resolved.location, kind=resolved.kind, num_classes=num_classes, class_names=names, channels=channels,
        stored_channels=stored, image_size=(int(train_images.shape[2]), int(train_images.shape[3])), mean=mean,
        std=std, sizes={"train": len(train), "val": len(val), "test": len(test)},
        val_size=n_val if val_from == "train" else len(val_index), split_seed=split_seed, val_from=val_from,
    )
    return ImageData(train, val, test, info)


def _channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and std of uint8 images in [0, 1], from a 256-bin histogram per channel."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    mean, std = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1).to(torch.int64), minlength=256).to(torch.float64)
        total = counts.sum().clamp_min(1.0)
        m = float((counts * levels).sum() / total)
        var = float((counts * levels * levels).sum() / total) - m * m
        mean.append(round(m, 6))
        std.append(round(max(var, 0.0) ** 0.5, 6) if var > 1e-12 else 1.0)
    return mean, std
