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
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

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

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
_IMAGE_COLUMNS = ("image", "img", "pixel_values", "picture")
_LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target", "y")
_TEST_SPLITS = ("test", "validation", "valid", "val")
_DECODE_VERSION = 1


class DataError(ValueError):
    """A dataset that cannot be used: missing path, unknown layout, empty split, no label column, ..."""


# ----------------------------------------------------------------------------------------------- sources
@dataclass
class Source:
    """What :func:`resolve_source` found: ``kind`` is hub, imagefolder, disk or idx; ``path`` the local dir."""

    kind: str
    location: str
    path: Optional[Path] = None


def cache_dir() -> Path:
    """Where extracted archives and decoded tensors are kept: ``$OFAS_WRAP_CACHE`` or ``~/.cache/ofas_wrap``."""
    return Path(os.environ.get("OFAS_WRAP_CACHE") or Path.home() / ".cache" / "ofas_wrap")


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


# ------------------------------------------------------------------------------------------------- IDX
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


# ------------------------------------------------------------------------------------------- tensors
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


# ---------------------------------------------------------------------------------------- the bundle
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


def _load_decoded(source: Source, config_name: Optional[str], image_column: Optional[str],
                  label_column: Optional[str], image_size: Optional[int], train_split: str,
                  test_split: Optional[str]) -> dict[str, Any]:
    key = None
    if source.kind == "imagefolder":
        spec = json.dumps([_DECODE_VERSION, str(source.path), _dir_fingerprint(source.path), image_column,
                           label_column, image_size, train_split, test_split])
        key = hashlib.sha1(spec.encode()).hexdigest()[:24]
        cached = cache_dir() / "decoded" / f"{key}.pt"
        if cached.is_file():
            try:
                return torch.load(cached, weights_only=True)
            except Exception:  # a damaged cache file: decode again
                pass
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
        target = cache_dir() / "decoded" / f"{key}.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=".decoded-", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                torch.save(decoded, stream)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return decoded


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
    mean, std = _channel_stats(train_images.index_select(0, order[n_val:]))
    if channels != stored:
        if channels == 3:
            mean, std = mean * 3, std * 3
        else:
            mean, std = _channel_stats(convert_channels(train_images.index_select(0, order[n_val:]), 1))
    if normalization is not None:
        mean, std = [float(v) for v in normalization["mean"]], [float(v) for v in normalization["std"]]
        if len(mean) != channels or len(std) != channels:
            raise DataError(f"the normalisation has {len(mean)} channels but the images have {channels}")
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
