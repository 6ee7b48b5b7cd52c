"""Training augmentation on whole ``uint8`` batches: pad-4 random crop + horizontal flip (:func:`batch_augment`),
seeded per batch by the batch's sample indices (:func:`augment_generator`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["batch_augment", "augment_generator"]


def batch_augment(images: Tensor, padding: int = 4, flip: bool = True,
                  generator: Optional[torch.Generator] = None) -> Tensor:
    """Pad-``padding`` random crop and random horizontal flip of a whole ``uint8 (B, C, H, W)`` batch at once.

    Every sample gets its own crop offset and flip, drawn from ``generator`` (or the global RNG); zero padding
    as in the CIFAR recipe of He et al. One gather instead of B PIL operations.

    Example:
        >>> x = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4)
        >>> y = batch_augment(x, padding=0, flip=False)
        >>> bool((x == y).all())
        True
    """
    batch, channels, height, width = images.shape
    out = images
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
        # every crop window as a view (batch, C, offsets_y, offsets_x, H, W); pick one per sample: one gather
        windows = padded.unfold(2, height, 1).unfold(3, width, 1)
        dy = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
        out = windows[torch.arange(batch), :, dy, dx]
    if flip:
        flips = torch.rand(batch, generator=generator) < 0.5
        out = torch.where(flips[:, None, None, None], out.flip(3), out)
    return out


def augment_generator(indices: Tensor, seed: int = 0) -> torch.Generator:
    """The augmentation RNG of one batch, seeded by the batch's sample indices (and ``seed``).

    The draws then depend only on which images form the batch, never on a global stream: an interrupted run
    resumed from a checkpoint (which skips the batches it already did) augments exactly as an uninterrupted one,
    and every DDP process draws for its own shard.

    Example:
        >>> seed = augment_generator(torch.tensor([3, 1, 4])).initial_seed()
        >>> seed == augment_generator(torch.tensor([3, 1, 4])).initial_seed()
        True
        >>> seed == augment_generator(torch.tensor([1, 3, 4])).initial_seed()
        False
    """
    positions = torch.arange(1, indices.numel() + 1, dtype=torch.int64)
    # a position-weighted mix of the indices (int64 arithmetic wraps, deterministically), kept in 62 bits
    mixed = ((indices.to(torch.int64) + 1) * 2654435761 + positions * 40503).mul(positions * 2246822519 + 1)
    value = (int(mixed.sum()) * 6364136223846793005 + seed) % (1 << 62)
    return torch.Generator().manual_seed(value)
