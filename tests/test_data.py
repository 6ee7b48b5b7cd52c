"""ofas_wrap.data: every source kind on tiny data the tests write, the tensor pipeline, and the early errors."""

import os
import tarfile
import time

import numpy as np
import pytest
import torch

from ofas_wrap import data
from ofas_wrap.data import DataError

SHARED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OFAS_WRAP_CACHE", str(tmp_path / "cache"))


def write_idx_dataset(root, n_train=40, n_test=12, size=8, classes=4, seed=0, gz=True):
    """IDX files like Debian's Fashion-MNIST; image i of train has pixel (0, 0) = i, so splits can be traced."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n) % 256
        data.write_idx(f"{root}/{split}-images-idx3-ubyte{suffix}", images)
        data.write_idx(f"{root}/{split}-labels-idx1-ubyte{suffix}", (np.arange(n) % classes).astype(np.uint8))
    return root


def write_imagefolder(root, n_train=6, n_test=3, size=8, mode="RGB", classes=("cat", "dog")):
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, n in (("train", n_train), ("test", n_test)):
        for name in classes:
            os.makedirs(f"{root}/{split}/{name}", exist_ok=True)
            for i in range(n):
                shape = (size, size, 3) if mode == "RGB" else (size, size)
                picture = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
                picture.save(f"{root}/{split}/{name}/{i}.png")
    return root


# ------------------------------------------------------------------------------------------------- IDX


def test_idx_round_trip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "b-idx3-ubyte.gz"):
        data.write_idx(tmp_path / name, array)
        assert np.array_equal(data.read_idx(tmp_path / name), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX file"):
        data.read_idx(tmp_path / "bad")


def test_idx_dataset_splits_channels_and_normalisation(tmp_path):
    root = write_idx_dataset(str(tmp_path / "idx"))
    bundle = data.load_image_data(root, val_size=8)
    info = bundle.info
    assert info.kind == "idx" and info.num_classes == 4 and info.channels == 1 and info.image_size == (8, 8)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (32, 8, 12)
    # the validation images are carved from train: disjoint, together all of train, test untouched
    train_ids = set(bundle.train.images[:, 0, 0, 0].tolist())
    val_ids = set(bundle.val.images[:, 0, 0, 0].tolist())
    assert not train_ids & val_ids and train_ids | val_ids == set(range(40))
    # the statistics of the training part (train + val carve excluded) of the stored images
    raw = data.read_idx(f"{root}/train-images-idx3-ubyte.gz")
    part = raw[sorted(train_ids)].astype(np.float64) / 255
    assert info.mean[0] == pytest.approx(part.mean(), abs=1e-5)
    assert info.std[0] == pytest.approx(part.std(), abs=1e-5)
    images, labels = bundle.val.__getitems__(list(range(len(bundle.val))))
    assert images.dtype == torch.float32 and images.shape == (8, 1, 8, 8) and labels.dtype == torch.int64
    again = data.load_image_data(root, val_size=8)
    assert torch.equal(again.val.images, bundle.val.images)  # the same carve in every recipe
    other = data.load_image_data(root, val_size=8, split_seed=1)
    assert not torch.equal(other.val.images, bundle.val.images)


def test_grey_expanded_to_three_channels_and_subsets(tmp_path):
    root = write_idx_dataset(str(tmp_path / "idx"), gz=False)
    bundle = data.load_image_data(root, in_chans=3, val_size=0.25, train_subset=5, eval_subset=4)
    assert bundle.info.channels == 3 and bundle.info.stored_channels == 1
    assert len(bundle.info.mean) == 3 and bundle.info.mean[0] == bundle.info.mean[2]
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (5, 4, 4)
    x, _ = bundle.train.with_augment(False).__getitems__([0, 1])
    assert x.shape == (2, 3, 8, 8) and torch.equal(x[:, 0], x[:, 2])


def test_imagefolder_rgb_and_grey_conversion(tmp_path):
    root = write_imagefolder(str(tmp_path / "folder"))
    bundle = data.load_image_data(root, val_size=0)
    assert bundle.info.kind == "imagefolder" and bundle.info.class_names == ["cat", "dog"]
    assert bundle.info.channels == 3 and (len(bundle.train), len(bundle.test)) == (12, 6)
    assert len(bundle.val) == 0
    grey = data.load_image_data(root, in_chans=1, val_size=2)
    x, y = grey.test.__getitems__([0, 1, 2])
    assert x.shape == (3, 1, 8, 8) and len(grey.info.mean) == 1


def test_imagefolder_labels_match_the_datasets_builder(tmp_path):
    import datasets

    root = write_imagefolder(str(tmp_path / "folder"), classes=("b_second", "a_first", "c_third"))
    ours = data.load_dataset_dict(root)
    builder = datasets.load_dataset("imagefolder", data_dir=root)
    assert ours["train"].features["label"].names == builder["train"].features["label"].names
    assert sorted(ours["train"]["label"]) == sorted(builder["train"]["label"])


def test_archive_is_extracted_to_the_cache_and_decoded_once(tmp_path, monkeypatch):
    root = write_imagefolder(str(tmp_path / "folder"))
    archive = tmp_path / "folder.tar.gz"
    with tarfile.open(archive, "w:gz") as handle:
        handle.add(root, arcname="cifar-like")
    first = data.load_image_data(str(archive), val_size=2)
    extracted = list((tmp_path / "cache" / "extracted").iterdir())
    assert len(extracted) == 1 and (extracted[0] / "cifar-like" / "train").is_dir()
    assert not (tmp_path / "train").exists()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    # patched where the decoding calls it (ofas_wrap.data._decode), not on the package, which only re-exports it
    monkeypatch.setattr(data._decode, "load_dataset_dict", no_decoding)
    second = data.load_image_data(str(archive), val_size=2)
    assert torch.equal(first.train.images, second.train.images)


def test_save_to_disk_with_other_column_names(tmp_path):
    import datasets

    root = write_imagefolder(str(tmp_path / "folder"))
    splits = data.load_dataset_dict(root)
    renamed = splits.rename_columns({"image": "img", "label": "fine_label"})
    renamed.save_to_disk(str(tmp_path / "disk"))
    bundle = data.load_image_data(str(tmp_path / "disk"), val_size=0)
    assert bundle.info.kind == "disk" and len(bundle.test) == 6
    no_label = splits.remove_columns(["label"]).map(lambda row: {"caption": "x"})
    no_label.save_to_disk(str(tmp_path / "nolabel"))
    with pytest.raises(DataError, match="no label column.*--label-column"):
        data.load_image_data(str(tmp_path / "nolabel"))
    custom = splits.rename_columns({"label": "species"})
    custom.save_to_disk(str(tmp_path / "custom"))
    assert data.load_image_data(str(tmp_path / "custom"), label_column="species", val_size=0).info.num_classes == 2
    single = datasets.concatenate_datasets([splits["train"], splits["test"]])
    single.save_to_disk(str(tmp_path / "single"))
    with pytest.raises(DataError, match="no test split.*--test-split"):
        data.load_image_data(str(tmp_path / "single"))


# ---------------------------------------------------------------------------------------------- errors


def test_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        data.load_image_data(str(tmp_path / "nowhere"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a dataset directory"):
        data.load_image_data(str(tmp_path / "junk"))
    root = write_imagefolder(str(tmp_path / "folder"))
    for name in os.listdir(f"{root}/test/cat") + []:
        os.remove(f"{root}/test/cat/{name}")
    for name in os.listdir(f"{root}/test/dog"):
        os.remove(f"{root}/test/dog/{name}")
    with pytest.raises(DataError, match="holds no image"):  # each empty class folder is named
        data.load_image_data(root)
    idx = write_idx_dataset(str(tmp_path / "idx"))
    with pytest.raises(DataError, match="leaves no training image"):
        data.load_image_data(idx, val_size=40)
    with pytest.raises(DataError, match="in_chans"):
        data.load_image_data(idx, in_chans=2)
    # patched where resolve_source reads it (ofas_wrap.data._sources), not on the package, which only re-exports it
    monkeypatch.setattr(data._sources, "DEBIAN_FASHION_MNIST", str(tmp_path / "no-package"))
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        data.resolve_source("fashion-mnist")


def test_hub_ids_are_recognised_without_network():
    source = data.resolve_source("uoft-cs/cifar10")
    assert source.kind == "hub" and source.location == "uoft-cs/cifar10"
    with pytest.raises(DataError, match="does not exist"):
        data.resolve_source("./not/here")


# ------------------------------------------------------------------------------------------- tensors


def test_batch_augment_is_a_per_sample_crop_and_flip():
    images = torch.randint(0, 256, (16, 3, 10, 12), dtype=torch.uint8)
    out = data.batch_augment(images, padding=4, flip=False, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    dy = torch.randint(0, 9, (16,), generator=generator)
    dx = torch.randint(0, 9, (16,), generator=generator)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(16):
        assert torch.equal(out[i], padded[i, :, dy[i]:dy[i] + 10, dx[i]:dx[i] + 12])
    flipped = data.batch_augment(images, padding=0, flip=True, generator=torch.Generator().manual_seed(1))
    same = [torch.equal(flipped[i], images[i]) for i in range(16)]
    mirrored = [torch.equal(flipped[i], images[i].flip(2)) for i in range(16)]
    assert all(a or b for a, b in zip(same, mirrored)) and any(mirrored) and any(same)


def test_normalize_and_channel_conversion():
    images = torch.full((2, 3, 2, 2), 51, dtype=torch.uint8)
    assert torch.allclose(data.normalize(images, [0.1] * 3, [0.5] * 3), torch.full((2, 3, 2, 2), 0.2))
    rgb = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)
    rgb[0, 0] = 255
    assert int(data.convert_channels(rgb, 1)) == 76  # 0.299 * 255


def test_loader_fetches_whole_batches_and_shuffles_by_epoch():
    dataset = data.ImageTensorDataset(torch.arange(20, dtype=torch.uint8).reshape(20, 1, 1, 1),
                                      torch.arange(20), [0.0], [1 / 255])
    calls = []
    original = dataset.__getitems__
    dataset.__getitems__ = lambda indices: calls.append(len(indices)) or original(indices)
    loader = data.make_loader(dataset, 8, shuffle=True, seed=3)
    epoch0 = torch.cat([y for _, y in loader])
    assert calls == [8, 8, 4] and sorted(epoch0.tolist()) == list(range(20))
    assert torch.equal(torch.cat([y for _, y in loader]), epoch0)
    loader.sampler.set_epoch(1)
    assert not torch.equal(torch.cat([y for _, y in loader]), epoch0)


def test_tensor_pipeline_is_faster_than_per_image_pil():
    """The reason for the design (docs/training.md has the full measurement): a generous 3x margin."""
    import torchvision.transforms as T
    from PIL import Image

    images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8)
    dataset = data.ImageTensorDataset(images, torch.zeros(512, dtype=torch.int64), [0.5] * 3, [0.25] * 3, True)
    pictures = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize([0.5] * 3, [0.25] * 3)])

    def best(fn, repeat=3):
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    batched = best(lambda: [dataset.__getitems__(list(range(i, i + 128))) for i in range(0, 512, 128)])
    per_image = best(lambda: torch.stack([transform(p) for p in pictures]))
    assert batched * 3 < per_image, (batched, per_image)


# ------------------------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_debian_fashion_mnist():
    if not os.path.isdir(data.DEBIAN_FASHION_MNIST):
        pytest.skip(f"{data.DEBIAN_FASHION_MNIST} is missing (Debian package dataset-fashion-mnist not installed; "
                    "the tests install nothing)")
    bundle = data.load_image_data("fashion-mnist", val_size=5000)
    info = bundle.info
    assert info.class_names[0] == "T-shirt/top" and info.num_classes == 10
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (55000, 5000, 10000)
    assert info.mean[0] == pytest.approx(0.286, abs=0.002) and info.std[0] == pytest.approx(0.353, abs=0.002)


@pytest.mark.slow
def test_shared_cifar10_archive(tmp_path):
    """The JPEG copy (old tables) read as a stream: its layout, then 3 real images per class and split through the
    loader. Extracting all 60,000 files took 22-70 s of the suite; the loader's archive path is tested on a small
    archive above, and on the lossless copy by the pretrained benchmark's smoke run."""
    import io
    from collections import Counter

    archive = os.path.join(SHARED_DIR, "data", "cifar10-jpeg.tar.gz")
    if not os.path.isfile(archive):
        pytest.skip(f"{archive} is missing (the shared data folder ../shared is not present)")
    per_split, per_class, kept = Counter(), Counter(), []
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            split, label, _ = member.name.split("/")[-3:]
            per_split[split] += 1
            per_class[split, label] += 1
            if per_class[split, label] <= 3:
                kept.append((member.name, tar.extractfile(member).read()))
    assert per_split == {"train": 50000, "test": 10000}
    assert set(per_class.values()) == {5000, 1000}  # balanced: 5,000 / 1,000 per class
    small = tmp_path / "small.tar.gz"
    with tarfile.open(small, "w:gz") as out:
        for name, payload in kept:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            out.addfile(info, io.BytesIO(payload))
    splits = data.load_dataset_dict(str(small))
    assert {name: len(split) for name, split in splits.items()} == {"train": 30, "test": 30}
    assert splits["train"].features["label"].names == [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    images, labels, names = data.decode_split(splits["test"])
    assert images.shape == (30, 3, 32, 32) and images.dtype == torch.uint8 and len(set(labels.tolist())) == 10
    assert 0.3 < float(images.float().mean()) / 255 < 0.65


def test_a_grey_image_that_sorts_first_does_not_turn_an_rgb_folder_grey(tmp_path):
    from PIL import Image

    root = write_imagefolder(tmp_path / "imgs")
    Image.fromarray(np.full((8, 8), 77, np.uint8), "L").save(f"{root}/train/cat/!grey.png")  # sorts first
    bundle = data.load_image_data(root, val_size=0)
    assert bundle.info.channels == 3 and bundle.train.images.shape[1] == 3
    grey = bundle.train.images[(bundle.train.images[:, 0] == 77).flatten(1).all(1)]
    assert len(grey) == 1 and bool((grey == 77).all())  # expanded losslessly


def test_grey_images_only_in_train_are_aligned_with_an_rgb_test_split(tmp_path):
    root = write_imagefolder(tmp_path / "imgs", mode="L")
    rgb = write_imagefolder(tmp_path / "rgb")
    for path in (tmp_path / "rgb" / "test").rglob("*.png"):
        target = tmp_path / "imgs" / path.relative_to(rgb)
        target.write_bytes(path.read_bytes())
    bundle = data.load_image_data(root, val_size=0)
    assert bundle.train.images.shape[1] == bundle.test.images.shape[1] == 3


def test_an_unreadable_image_is_named(tmp_path):
    root = write_imagefolder(tmp_path / "imgs")
    bad = f"{root}/train/dog/broken.png"
    with open(bad, "wb") as handle:
        handle.write(b"this is text, not a png")
    with pytest.raises(DataError, match="broken.png"):
        data.load_image_data(root)


def test_a_truncated_idx_file_and_an_empty_class_folder_are_clear_errors(tmp_path):
    root = write_idx_dataset(tmp_path / "idx")
    path = f"{root}/train-images-idx3-ubyte.gz"
    with open(path, "rb") as handle:
        raw = handle.read()
    with open(path, "wb") as handle:
        handle.write(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="damaged"):
        data.read_idx(path)
    folder = write_imagefolder(tmp_path / "imgs")
    os.makedirs(f"{folder}/train/empty")
    with pytest.raises(DataError, match="holds no image"):
        data.load_image_data(folder)
