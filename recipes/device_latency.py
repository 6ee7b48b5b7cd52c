#!/usr/bin/env python
"""Latency of an exported OFAS model on the device this runs on (e.g. a Jetson Nano); needs only PyTorch.

Copy this file and MODEL.pt (from ``ofas-wrap export`` or ``ofas_wrap.export_torchscript``) to the device:

    python device_latency.py MODEL.pt --device cuda --threshold 0 0.3 0.5 0.7
    python device_latency.py MODEL.pt --threads 4 --batch-size 8 --runs 200
    python device_latency.py MODEL.pt --data /path/to/test --threshold 0 0.5   # + accuracy on real images

For each threshold T it prints the median and 90th-percentile latency of one forward pass (after warm-up
runs, with CUDA synchronised around every timed run), the mean number of residual blocks executed on the
timed input and the MFLOPs that implies. With ``--data DIR`` (an image folder: DIR/<class>/<image>) it
also reports accuracy and mean executed blocks over the images, and times the model on real images
instead of random ones (the gates depend on the input).

An ``.onnx`` file (from ``ofas-wrap export --format onnx`` / ``ofas_wrap.export_onnx``, batch of one) is timed
with onnxruntime on the CPU instead, in the same table: ``python device_latency.py MODEL.onnx --threshold 0 0.5``
(T is set through the session's initializer override; the executed blocks come from the file's ``gates`` output).

Requirements: torch (any version that can load the file: export with the torch version of the device);
onnxruntime for .onnx files; Pillow and NumPy for --data. It does not import ofas_wrap, and its syntax works on
Python 3.6.
"""

import argparse
import json
import os
import random
import sys
import time
import warnings

import torch

CONFIG_NAME = "ofas_config.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Latency (and accuracy) of an exported OFAS model per threshold.")
    parser.add_argument("model", help="TorchScript file written by `ofas-wrap export` / export_torchscript, or an "
                                      ".onnx file from export_onnx (timed with onnxruntime)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs before timing (default 10)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per threshold (default 50)")
    parser.add_argument("--threshold", type=float, nargs="+", metavar="T", default=None,
                        help="thresholds to sweep, each in [0, 1) (default: the model's own)")
    parser.add_argument("--data", default=None, metavar="DIR", help="image folder DIR/<class>/<image> for accuracy")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many images of --data")
    parser.add_argument("--crop-pct", type=float, default=1.0,
                        help="resize the short side to size/crop-pct, then centre-crop (default 1.0: resize only)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    for name in ("batch_size", "runs"):
        if getattr(args, name) < 1:
            flag = name.replace("_", "-")
            parser.error(f"--{flag} must be positive")
    if args.warmup < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--warmup must be >= 0 and --threads >= 1")
    if args.threshold is not None and any(not 0.0 <= t < 1.0 for t in args.threshold):
        parser.error("every --threshold must be in [0, 1)")
    if not 0.0 < args.crop_pct <= 1.0:
        parser.error("--crop-pct must be in (0, 1]")
    return args


class OnnxModule:
    """An export_onnx file in onnxruntime, answering as the scripted module does here: a call on a batch of one,
    ``gate_threshold`` (a tensor: the session is rebuilt with the initializer overridden when it changes) and
    ``last_gates`` (the file's ``gates`` output)."""

    THRESHOLD_NAME = "model.gate_threshold"

    def __init__(self, path, threads):
        try:
            import onnxruntime
        except ImportError:
            raise SystemExit("error: timing an .onnx file needs onnxruntime (pip install onnxruntime)") from None
        self.ort, self.path, self.threads = onnxruntime, path, threads
        try:
            self.session, self.session_threshold = self._session(None), None
        except Exception as exc:
            raise SystemExit(f"error: {path} is not an ONNX file onnxruntime can load: {exc}") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get("ofas_config")
        if not raw:
            raise SystemExit(f"error: {path} is ONNX but not an OFAS export (no ofas_config metadata); export it "
                             "with `ofas-wrap export --format onnx`")
        self.config = json.loads(raw)
        self.gate_threshold = torch.tensor(float(self.config["ofas"]["threshold"]))
        self.last_gates = None

    def _session(self, threshold):
        options = self.ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        if threshold is not None:  # the array must outlive the session
            import numpy as np

            self._value = self.ort.OrtValue.ortvalue_from_numpy(np.array(threshold, dtype=np.float32))
            options.add_initializer(self.THRESHOLD_NAME, self._value)
        return self.ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])

    def eval(self):
        return self

    def __call__(self, x):
        if x.shape[0] != 1:
            raise SystemExit("error: an ONNX export runs a batch of one; use --batch-size 1 (TorchScript files "
                             "route batches)")
        threshold = float(self.gate_threshold)
        if threshold != self.session_threshold:
            self.session, self.session_threshold = self._session(threshold), threshold
        outputs = self.session.run(None, {self.session.get_inputs()[0].name: x.cpu().numpy()})
        if len(outputs) > 1:
            self.last_gates = torch.from_numpy(outputs[1].astype("bool"))
        return torch.from_numpy(outputs[0])


def load_model(path, device, threads=None):
    """The scripted module (or an onnxruntime stand-in for .onnx) and its OFAS config."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path}: no such file")
    if path.endswith(".onnx"):
        if device.type != "cpu":
            raise SystemExit("error: .onnx files are timed with onnxruntime on the CPU here; use --device cpu")
        module = OnnxModule(path, threads)
        return module, module.config
    extra = {CONFIG_NAME: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # newer torch calls torch.jit deprecated
        try:
            module = torch.jit.load(path, map_location=device, _extra_files=extra)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SystemExit(f"error: {path} is not a TorchScript file this torch ({torch.__version__}) can load: "
                             f"{reason}") from None
    raw = extra[CONFIG_NAME]
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if not raw:
        raise SystemExit(f"error: {path} is TorchScript but not an OFAS export (no {CONFIG_NAME} inside); "
                         "export it with `ofas-wrap export`")
    config = json.loads(raw)
    if "ofas" not in config or not (hasattr(module, "gate_threshold") or config.get("pruned")):
        raise SystemExit(f"error: {path} does not look like an OFAS model export")
    return module.eval(), config


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quantile(ordered, q):
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def time_model(module, x, warmup, runs, device):
    """Per-run latencies in ms; CUDA is synchronised before and after each timed run."""
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            module(x)
        synchronize(device)
        for _ in range(runs):
            synchronize(device)
            start = time.perf_counter()
            module(x)
            synchronize(device)
            times.append((time.perf_counter() - start) * 1000.0)
    return sorted(times)


def executed(module, config):
    """Executed residual blocks and FLOPs per sample of the last forward, from module.last_gates."""
    pruned = config.get("pruned")
    if pruned:  # a depth-pruned network (export_torchscript(prune=...)): its blocks and FLOPs are fixed
        kept = len(config["ofas"]["blocks"]) - len(pruned["removed_blocks"])
        flops = pruned.get("flops")
        return (torch.full((1,), float(kept), dtype=torch.float64),
                None if not flops else torch.full((1,), float(flops), dtype=torch.float64))
    if getattr(module, "last_gates", None) is None:  # an ONNX file without the gates output
        return torch.full((1,), float("nan"), dtype=torch.float64), None
    gates = module.last_gates.cpu().bool()
    num_blocks = len(config["ofas"]["blocks"])
    blocks = gates.sum(dim=1).double() + (num_blocks - gates.shape[1])
    flops = config.get("flops")
    if not flops:
        return blocks, None
    # A deliberate copy of ofas_wrap._plan._executed_flops: this script runs on devices with torch alone, without
    # ofas-wrap installed (tests/test_bench.py checks that it never imports it), so it cannot call the package.
    total = torch.full((gates.shape[0],), float(flops["fixed"]), dtype=torch.float64)
    for block in flops["blocks"]:
        if not block["gated"]:
            total += block["flops"]
        else:
            run = gates[:, block["gate_index"]].double()
            total += run * block["flops"] + (1 - run) * block["skip_flops"]
    return blocks, total


def list_images(root, class_names, limit):
    """(path, label) pairs of DIR/<class>/<image>; labels follow the model's class names when they match."""
    if not os.path.isdir(root):
        raise SystemExit(f"error: --data {root} is not a folder")
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not folders:
        raise SystemExit(f"error: --data {root} has no class sub-folders (expected DIR/<class>/<image>)")
    if class_names and all(f in class_names for f in folders):
        index = dict((name, class_names.index(name)) for name in folders)
    else:
        if class_names:
            print("note: the folder names do not match the model's class names; using sorted folder order",
                  file=sys.stderr)
        index = dict((name, i) for i, name in enumerate(folders))
    items = []
    for folder in folders:
        directory = os.path.join(root, folder)
        for name in sorted(os.listdir(directory)):
            if name.lower().endswith(IMAGE_SUFFIXES):
                items.append((os.path.join(directory, name), index[folder]))
    if not items:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        raise SystemExit(f"error: no images ({suffixes}) under {root}")
    if limit is not None and limit < len(items):
        random.Random(0).shuffle(items)  # a class-balanced-ish subset, the same every time
        items = items[:limit]
    return items


def load_image(path, size, norm, crop_pct):
    import numpy as np
    from PIL import Image

    channels, height, width = size
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        if crop_pct < 1.0:
            scale = 1.0 / crop_pct
            short = min(image.size)
            factor = max(height, width) * scale / short
            image = image.resize((max(width, int(round(image.size[0] * factor))),
                                  max(height, int(round(image.size[1] * factor)))), Image.BILINEAR)
            left = (image.size[0] - width) // 2
            top = (image.size[1] - height) // 2
            image = image.crop((left, top, left + width, top + height))
        elif image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    if norm:
        mean = torch.tensor(norm["mean"], dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(norm["std"], dtype=torch.float32).view(-1, 1, 1)
        tensor = (tensor - mean) / std
    return tensor


def batches(items, size, norm, crop_pct, batch_size):
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        images = torch.stack([load_image(path, size, norm, crop_pct) for path, _ in chunk])
        labels = torch.tensor([label for _, label in chunk])
        yield images, labels


def evaluate(module, config, items, args, device):
    """Accuracy and mean executed blocks over the images at the module's current threshold."""
    size = config["ofas"]["input_size"]
    correct, seen, blocks = 0, 0, 0.0
    with torch.no_grad():
        for images, labels in batches(items, size, config.get("normalization"), args.crop_pct, args.batch_size):
            logits = module(images.to(device))
            correct += int((logits.argmax(dim=1).cpu() == labels).sum())
            seen += labels.shape[0]
            blocks += float(executed(module, config)[0].sum())
    return correct / float(seen), blocks / seen


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device cuda, but this torch ({torch.__version__}) sees no CUDA device")
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    module, config = load_model(args.model, device, args.threads)
    size = config["ofas"]["input_size"]
    pruned = bool(config.get("pruned"))
    if pruned and args.threshold is not None:
        raise SystemExit(f"error: {args.model} is a depth-pruned network (no gates, no threshold): leave out "
                         "--threshold")
    thresholds = [None] if pruned else (args.threshold if args.threshold is not None
                                        else [float(module.gate_threshold)])

    items = None
    if args.data:
        items = list_images(args.data, config.get("class_names"), args.limit)
        if not config.get("normalization"):
            print("note: the model's config has no input normalisation; feeding pixels scaled to [0, 1]",
                  file=sys.stderr)
        first = [items[i % len(items)] for i in range(args.batch_size)]
        x = next(batches(first, size, config.get("normalization"), args.crop_pct, args.batch_size))[0]
        source = f"real images from {args.data}"
    else:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn([args.batch_size] + list(size), generator=generator)
        source = "random normal"
    x = x.to(device)

    rows = []
    try:
        for threshold in thresholds:
            if threshold is not None:
                module.gate_threshold.fill_(threshold)
            times = time_model(module, x, args.warmup, args.runs, device)
            with torch.no_grad():
                module(x)
            blocks, flops = executed(module, config)
            row = {
                "threshold": threshold,
                "median_ms": quantile(times, 0.5),
                "p90_ms": quantile(times, 0.9),
                "iqr_ms": quantile(times, 0.75) - quantile(times, 0.25),
                "per_image_ms": quantile(times, 0.5) / args.batch_size,
                "executed_blocks": float(blocks.mean()),
                "mflops": None if flops is None else float(flops.mean()) / 1e6,
            }
            if items is not None:
                row["accuracy"], row["data_executed_blocks"] = evaluate(module, config, items, args, device)
                row["images"] = len(items)
            rows.append(row)
    finally:
        if not pruned:
            module.gate_threshold.fill_(float(config["ofas"]["threshold"]))

    if args.json:
        print(json.dumps({"model": args.model, "device": str(device), "threads": torch.get_num_threads(),
                          "batch_size": args.batch_size, "warmup": args.warmup, "runs": args.runs,
                          "torch": torch.__version__,
                          "runtime": "onnxruntime" if isinstance(module, OnnxModule) else "torchscript",
                          "rows": rows}, indent=2))
        return 0
    num_blocks = len(config["ofas"]["blocks"])
    backbone = config.get("backbone") or {}
    name = backbone.get("source", "custom") + ":" + backbone.get("name", config.get("backbone_class", "?"))
    gated = len(config["ofas"]["gated_blocks"])
    shape = "x".join(str(s) for s in size)
    if pruned:
        removed = config["pruned"]["removed_blocks"]
        print(f"model {args.model} ({name}), depth-pruned: {num_blocks - len(removed)} of {num_blocks} residual "
              f"blocks (no gates)")
    else:
        print(f"model {args.model} ({name}), {num_blocks} residual blocks, {gated} gated")
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size} x {shape}, {source}; "
          f"{args.runs} runs after {args.warmup} warm-up; torch {torch.__version__}")
    header = f"{'T':>6} {'median ms':>10} {'p90 ms':>10} {'ms/image':>10} {'blocks':>13} {'MFLOPs':>9}"
    if items is not None:
        header += f" {'accuracy':>9} {'data blocks':>13}"
    print(header)
    for row in rows:
        blocks = f"{row['executed_blocks']:.2f}/{num_blocks}"
        mflops = "-" if row["mflops"] is None else f"{row['mflops']:.2f}"
        threshold = "-" if row["threshold"] is None else f"{row['threshold']:.3g}"
        line = (f"{threshold:>6} {row['median_ms']:>10.3f} {row['p90_ms']:>10.3f} "
                f"{row['per_image_ms']:>10.3f} {blocks:>13} {mflops:>9}")
        if items is not None:
            data_blocks = f"{row['data_executed_blocks']:.2f}/{num_blocks}"
            line += f" {100.0 * row['accuracy']:>8.2f}% {data_blocks:>13}"
        print(line)
    if items is not None:
        print(f"accuracy over {len(items)} images of {args.data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
