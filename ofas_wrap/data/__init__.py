"""Image classification data for the recipes: one loader for Hub ids, image folders, ``save_to_disk`` dirs and IDX.

Every source goes through Hugging Face ``datasets`` (IDX files are wrapped in a ``datasets.Dataset`` of uint8
arrays), is decoded **once** into ``uint8`` tensors ``(N, C, H, W)`` and augmented in batches on tensors
(pad-4 random crop + horizontal flip, the CIFAR recipe), then normalised with the training split's own
per-channel mean and standard deviation. Small datasets are then never bottlenecked by per-image Python
decoding on every epoch (see ``docs/training.md`` for the measurement).

Accepted ``source`` values (:func:`resolve_source`):

- a local ``imagefolder`` directory with ``train/`` and ``test/`` subfolders (``train/<class>/<image>``);
- an archive of such a folder (``.tar.gz``, ``.tgz``, ``.tar``, ``.zip``), extracted once into the cache;
- a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
- a directory with IDX files (``train-images-idx3-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``, labels);
  ``fashion-mnist`` is an alias for Debian's ``/usr/share/datasets/fashion-mnist``;
- anything else is taken as a Hugging Face Hub dataset id (``uoft-cs/cifar10``), loaded with
  ``datasets.load_dataset``.

Decoded image folders and archives are cached in ``$OFAS_WRAP_CACHE`` (default ``~/.cache/ofas_wrap``), so the
second recipe of a pipeline does not rebuild the ``datasets`` cache (about 30 s for CIFAR-10 on two cores).

Example:
    >>> import tempfile, numpy as np
    >>> from ofas_wrap import data
    >>> root = tempfile.mkdtemp()
    >>> rng = np.random.default_rng(0)
    >>> for split, n in (("train", 40), ("t10k", 10)):
    ...     data.write_idx(f"{root}/{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    ...     data.write_idx(f"{root}/{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    >>> bundle = data.load_image_data(root, val_size=8)
    >>> len(bundle.train), len(bundle.val), len(bundle.test), bundle.info.channels
    (32, 8, 10, 1)
    >>> images, labels = bundle.train.__getitems__([0, 1, 2])
    >>> images.shape, images.dtype
    (torch.Size([3, 1, 28, 28]), torch.float32)

The package is split by concern in timm's style: small private modules, each with an ``__all__`` of what it
offers, re-exported here. Each imports only modules above it in this list (none imports ``ofas_wrap.data``):

- ``_errors``: :class:`DataError`;
- ``_cache``: ``$OFAS_WRAP_CACHE`` (:func:`cache_dir`) and the decode cache of image folders (key, atomic write);
- ``_archives``: tar / zip archives of image folders, extracted once into the cache;
- ``_idx``: IDX files (:func:`read_idx`, :func:`write_idx`) and an IDX folder as a ``datasets.DatasetDict``;
- ``_sources``: :func:`resolve_source` (Hub ids, image folders, ``save_to_disk`` dirs, IDX, ``fashion-mnist``)
  and :func:`load_dataset_dict`;
- ``_decode``: :func:`decode_split` and the decoded train/test pair (through the decode cache);
- ``_augment``: :func:`batch_augment` (pad-4 crop + flip) and :func:`augment_generator` (seeded per batch);
- ``_loader``: :func:`normalize`, :func:`convert_channels`, :class:`ImageTensorDataset`,
  :class:`EpochShuffleSampler`, :func:`make_loader`;
- ``_splits``: :func:`load_image_data` (validation carve, ``val_from="test"``, subsets), :class:`ImageData`,
  :class:`DataInfo`.
"""

from __future__ import annotations

from ._augment import augment_generator, batch_augment
from ._cache import cache_dir
from ._decode import decode_split
from ._errors import DataError
from ._idx import FASHION_MNIST_CLASSES, read_idx, write_idx
from ._loader import EpochShuffleSampler, ImageTensorDataset, convert_channels, make_loader, normalize
from ._sources import DEBIAN_FASHION_MNIST, load_dataset_dict, resolve_source
from ._sources import Source as Source  # resolve_source's result: importable as before, not in __all__
from ._splits import DataInfo, ImageData, load_image_data

__all__ = [
    "augment_generator",
    "DataError",
    "DataInfo",
    "ImageData",
    "ImageTensorDataset",
    "EpochShuffleSampler",
    "DEBIAN_FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "resolve_source",
    "load_dataset_dict",
    "decode_split",
    "load_image_data",
    "batch_augment",
    "normalize",
    "convert_channels",
    "make_loader",
    "read_idx",
    "write_idx",
    "cache_dir",
]
