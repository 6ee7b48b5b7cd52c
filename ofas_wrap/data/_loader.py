"""Decoded images as a dataset of whole batches (:class:`ImageTensorDataset`: channels, normalisation,
augmentation) and its loader (:func:`make_loader`, :class:`EpochShuffleSampler`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ._augment import augment_generator, batch_augment

__all__ = ["normalize", "convert_channels", "ImageTensorDataset", "EpochShuffleSampler", "make_loader"]


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``uint8 (B, C, H, W)`` -> ``float32``, scaled to [0, 1] then standardised per channel."""
    mean_t = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1) * 255.0
    std_t = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1) * 255.0
    return images.to(torch.float32).sub_(mean_t).div_(std_t)


def convert_channels(images: Tensor, channels: int) -> Tensor:
    """Grey ``uint8 (B, 1, H, W)`` -> 3 channels (an expanded view), RGB -> grey (ITU-R 601 luma), else unchanged.

    Example:
        >>> convert_channels(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), 3).shape
        torch.Size([2, 3, 4, 4])
    """
    stored = images.shape[1]
    if channels == stored:
        return images
    if stored == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1)
    if stored == 3 and channels == 1:
        weights = torch.tensor([299, 587, 114], dtype=torch.int32).reshape(1, 3, 1, 1)
        return ((images.to(torch.int32) * weights).sum(1, keepdim=True) // 1000).to(torch.uint8)
    raise ValueError(f"cannot convert {stored}-channel images to {channels} channels")


class ImageTensorDataset(Dataset):
    """Decoded images kept as ``uint8``; ``__getitems__`` returns a normalised (and augmented) batch at once.

    ``channels`` may differ from the stored channels: grey stored images are expanded to 3 (a view, no copy),
    RGB images converted to grey (luma). With ``augment=True`` each fetched batch gets :func:`batch_augment`.
    Use it with :func:`make_loader` (``collate_fn`` passes the batch through).
    """

    def __init__(self, images: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float],
                 augment: bool = False, channels: Optional[int] = None, padding: int = 4, flip: bool = True) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels
        self.channels = channels or images.shape[1]
        if self.channels not in (1, 3) and self.channels != images.shape[1]:
            raise ValueError(f"channels must be 1 or 3 (or the stored {images.shape[1]}), got {self.channels}")
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.augment = augment
        self.padding = padding
        self.flip = flip

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        # one thread: these few small ops are 20x slower with 2 OpenMP threads on a busy 2-core machine
        threads = torch.get_num_threads()
        if threads > 1:
            torch.set_num_threads(1)
        try:
            images = self.images.index_select(0, index)
            if self.augment:
                images = batch_augment(images, self.padding, self.flip, generator=augment_generator(index))
            images = normalize(convert_channels(images, self.channels), self.mean, self.std)
            return images, self.labels.index_select(0, index)
        finally:
            if threads > 1:
                torch.set_num_threads(threads)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        images, labels = self.__getitems__([index])
        return images[0], labels[0]

    def with_augment(self, augment: bool) -> ImageTensorDataset:
        """The same tensors (shared) with augmentation switched on or off."""
        return ImageTensorDataset(self.images, self.labels, self.mean, self.std, augment, self.channels,
                                  self.padding, self.flip)


class EpochShuffleSampler(Sampler[int]):
    """A shuffle that depends only on ``(seed, epoch)``: every process and every resumed run sees the same order.

    ``accelerate`` calls ``set_epoch`` on it through the prepared data loader; sharding across processes is done
    by accelerate on top of it.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = int(size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def _passthrough(batch):
    return batch


def make_loader(dataset: ImageTensorDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False) -> DataLoader:
    """A ``DataLoader`` that fetches whole batches through ``__getitems__`` (no per-sample collation).

    Example:
        >>> import torch
        >>> ds = ImageTensorDataset(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.arange(10), [0.5], [0.5])
        >>> [tuple(x.shape) for x, _ in make_loader(ds, 4)]
        [(4, 1, 4, 4), (4, 1, 4, 4), (2, 1, 4, 4)]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler = EpochShuffleSampler(len(dataset), seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
                      collate_fn=_passthrough, num_workers=0)
