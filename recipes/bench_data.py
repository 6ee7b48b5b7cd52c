"""How fast can the training split be fed? Per-image PIL decoding + transforms vs decoded uint8 tensors + batch aug.

    python recipes/bench_data.py --dataset ../shared/data/cifar10-jpeg.tar.gz --subset 10000
    python recipes/bench_data.py --dataset fashion-mnist --subset 10000

Both pipelines produce the same thing for one epoch of ``--subset`` training images: normalised float batches of
``--batch-size`` with a pad-4 random crop and a horizontal flip. ``pil``: the usual ``datasets`` route, each image
decoded from its stored bytes and transformed by torchvision on every epoch (``set_transform``), collated by a
``DataLoader`` with 0 and 2 workers; ``tensor``: :mod:`ofas_wrap.data` (decoded once, augmented per batch). The
one-off decoding cost of the tensor route is reported separately.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _pil_loader(dataset: str, subset: int, batch_size: int, workers: int, size, mean, std):
    import torchvision.transforms as T

    from ofas_wrap.data import load_dataset_dict, resolve_source

    split = load_dataset_dict(resolve_source(dataset))["train"].select(range(subset))
    image_key = "image" if "image" in split.column_names else "img"
    transform = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(mean, std)])

    def apply(batch):
        import numpy as np
        from PIL import Image

        pictures = [p if isinstance(p, Image.Image) else Image.fromarray(np.asarray(p, dtype=np.uint8))
                    for p in batch[image_key]]
        return {"pixel_values": [transform(p) for p in pictures], "label": batch["label"]}

    split.set_transform(apply)

    def collate(rows):
        return torch.stack([r["pixel_values"] for r in rows]), torch.tensor([r["label"] for r in rows])

    return torch.utils.data.DataLoader(split, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       collate_fn=collate)


def _epoch(loader) -> tuple[float, int]:
    start = time.perf_counter()
    count = 0
    for images, _ in loader:
        count += images.shape[0]
    return time.perf_counter() - start, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per pipeline (the best is kept)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from ofas_wrap.data import load_image_data, make_loader

    start = time.perf_counter()
    bundle = load_image_data(args.dataset, val_size=0, train_subset=args.subset)
    setup = time.perf_counter() - start
    info = bundle.info
    tensor_loader = make_loader(bundle.train, args.batch_size, shuffle=True)
    results = {"dataset": info.source, "images": len(bundle.train), "batch_size": args.batch_size,
               "tensor_setup_seconds (load + decode once, cached after the first run)": round(setup, 2)}
    best = min(_epoch(tensor_loader)[0] for _ in range(args.epochs))
    results["tensor images/s"] = round(len(bundle.train) / best, 1)
    mean = info.mean[:info.stored_channels]
    std = info.std[:info.stored_channels]
    for workers in (0, 2):
        loader = _pil_loader(args.dataset, len(bundle.train), args.batch_size, workers, tuple(info.image_size), mean,
                             std)
        best = min(_epoch(loader)[0] for _ in range(args.epochs))
        results[f"pil images/s (workers={workers})"] = round(len(bundle.train) / best, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
