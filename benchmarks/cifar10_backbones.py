"""Train the CIFAR-10 backbones of issue 9 one after the other, resumably, and keep each one when it finishes.

    nohup python benchmarks/cifar10_backbones.py > ../runs/backbones.log 2>&1 &      # start or continue all
    python benchmarks/cifar10_backbones.py --dry-run                                 # the commands, nothing run
    python benchmarks/cifar10_backbones.py --only resnet38 resnet20                  # some of them

Each backbone is ``recipes/train_backbone.py`` into ``RUNS/c10-<short name>`` (outside the checkout), in bf16
autocast where the CPU has native bf16 kernels (``--mixed-precision``; the recipe trains in fp32 and says so where
it has not), continued with ``--resume`` when a checkpoint exists, so a stopped session loses at most the steps
since the last checkpoint: rerun the same command. A finished run is evaluated on the test split (every block, T =
0) and kept as ``benchmarks/weights/cifar10/<name>/`` (the run folder without checkpoints and logs: about 2 MB of
safetensors), with its command, wall time and test accuracy in ``benchmarks/weights/cifar10/backbones.json``. A
backbone that is already kept is not trained again (a new machine has no run folders): delete its folder to retrain
it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KEEP = REPO / "benchmarks" / "weights" / "cifar10"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-png.tar.gz"
# name -> (backbone spec, extra flags, run folder); the order is the order of training: the OFAS starting point and
# the static curve it is judged against first, the plain ResNet-38 (the other starting point) last
BACKBONES = {
    "resnet38_sd": ("cifar:resnet38", ["--drop-path", "0.5"], "c10-r38-sd"),
    "resnet20": ("cifar:resnet20", [], "c10-r20"),
    "resnet32": ("cifar:resnet32", [], "c10-r32"),
    "resnet26": ("cifar:resnet26", [], "c10-r26"),
    "resnet38": ("cifar:resnet38", [], "c10-r38"),
}
KEPT_FILES = ("config.json", "model.safetensors", "README.md", "args.json", "data.json", "metrics.json")


def complete(run: Path) -> bool:
    return (run / "metrics.json").is_file() and (run / "model.safetensors").is_file()


def command_for(name: str, args: argparse.Namespace) -> list[str]:
    spec, extra, folder = BACKBONES[name]
    command = [sys.executable, str(REPO / "recipes" / "train_backbone.py"), "--model", spec, "--dataset", args.data,
               "--epochs", str(args.epochs), *extra, "--output", str(Path(args.runs) / folder), "--no-progress",
               "--mixed-precision", args.mixed_precision, *args.extra.split()]
    if (Path(args.runs) / folder / "checkpoints").is_dir():
        command.append("--resume")
    return command


def test_accuracy(run: Path, dataset: str) -> tuple[float, int]:
    """Top-1 on the whole test split with every block (the backbone as trained; the head is not used)."""
    import torch

    from ofas_wrap import OFASModel
    from ofas_wrap.data import load_image_data, make_loader

    model = OFASModel.from_pretrained(run)
    recorded = json.loads((run / "args.json").read_text())
    data = load_image_data(dataset, in_chans=model.config["input_size"][0],
                           val_size=recorded.get("val_size", 0.1), split_seed=recorded.get("split_seed", 0),
                           augment=False, normalization=model.config.get("normalization"))
    backbone = model.unwrap().eval()
    correct = count = 0
    with torch.no_grad():
        for images, labels in make_loader(data.test, 500):
            correct += int((backbone(images).argmax(1) == labels).sum())
            count += int(labels.numel())
    return correct / count, count


def keep(name: str, run: Path, command: list[str], keep_root: Path, dataset: str) -> dict:
    """Copy the finished run into the repository (atomically) and record it in backbones.json."""
    accuracy, count = test_accuracy(run, dataset)
    target = keep_root / name
    staging = keep_root / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for file in KEPT_FILES:
        if (run / file).is_file():
            shutil.copy2(run / file, staging / file)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    metrics = json.loads((run / "metrics.json").read_text())
    recorded = json.loads((run / "args.json").read_text()) if (run / "args.json").is_file() else {}
    record = {
        "model": BACKBONES[name][0] if name in BACKBONES else None,
        "command": " ".join(["python", *[str(Path(c).relative_to(REPO)) if c.startswith(str(REPO)) else c
                                         for c in command[1:] if c != "--resume"]]),
        "epochs": metrics.get("epochs_completed"), "train_seconds": metrics.get("train_seconds"),
        "samples_per_second": metrics.get("samples_per_second"), "world_size": metrics.get("world_size"),
        "resumed_from_steps": metrics.get("resumed_from_steps"),
        "mixed_precision": recorded.get("mixed_precision"),
        "channels_last": recorded.get("channels_last"),
        "val_accuracy": (metrics.get("final_val") or {}).get("accuracy"),
        "test_accuracy": accuracy, "test_images": count,
    }
    index_path = keep_root / "backbones.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index[name] = record
    tmp = keep_root / ".backbones.json.tmp"
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, index_path)
    print(f"[backbones] kept {name}: test top-1 {100 * accuracy:.2f} % ({count} images) -> {target}", flush=True)
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--runs", default=str(REPO.parent / "runs"), help="where the run folders go (outside)")
    parser.add_argument("--keep", default=str(KEEP), help="where finished backbones are kept")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--only", nargs="+", choices=list(BACKBONES), default=list(BACKBONES))
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="bf16",
                        help="train_backbone's --mixed-precision (bf16 falls back to fp32 where not native)")
    parser.add_argument("--extra", default="", help="more train_backbone flags, e.g. '--max-steps 2' for a smoke run")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    keep_root = Path(args.keep)
    for name in args.only:
        run = Path(args.runs) / BACKBONES[name][2]
        command = command_for(name, args)
        if (keep_root / name / "model.safetensors").is_file():
            print(f"[backbones] {name} is kept in {keep_root / name}: not trained again", flush=True)
            continue
        if args.dry_run:
            print(" ".join(command))
            continue
        if not complete(run):
            print(f"[backbones] {' '.join(command)}", flush=True)
            started = time.time()
            code = subprocess.run(command, cwd=REPO).returncode
            if code != 0:
                print(f"[backbones] {name} stopped with exit code {code} after {time.time() - started:.0f} s; rerun "
                      "this command to continue it", flush=True)
                return code
        keep(name, run, command, keep_root, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
