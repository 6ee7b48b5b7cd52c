"""Issue 10 item 4: how much can the OFAS head know about an image? Linear probes of the class at decision points.

The paper's head sees the stem's output, globally average-pooled: for a CIFAR ResNet, 16 numbers per image. Every
input-dependent decision it makes must come from them. This benchmark measures what they hold, and what a later
decision point (after stage 1 or 2, whose blocks would then always run) or a finer pooling grid would give the
head, with a linear probe of the class: multinomial logistic regression on standardised features, fitted with
L-BFGS on ``--train-images`` training images and scored on the held-out validation half (the released models
saw every training image, so the probe is scored on test images they never saw: ``val_from="test"``; the other
half stays unused for the reported tables).

Two targets: the class (10-way), and whether the full-depth model gets the image right (the "difficulty" an
adaptive policy would need; scored as balanced accuracy, since most images are right). The released model is right
on nearly every training image, so that probe is fitted on one half of the validation images and scored on the
other.

    python -m benchmarks.head_probe --out docs/results              # the released ResNet-56, about 3 minutes
    python -m benchmarks.head_probe --smoke --out /tmp/probe         # a check of the plumbing

(from the repository root, as a module: it imports ``benchmarks.pretrained``'s constants)

Writes ``OUT/head_probe.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

try:
    from benchmarks.pretrained import CHECKPOINTS, DEFAULT_DATA, MEAN, RELEASED, STD
except ModuleNotFoundError as error:  # `python benchmarks/head_probe.py`: the repository root is not on sys.path
    if error.name != "benchmarks":
        raise
    raise SystemExit("run it from the repository root as a module: python -m benchmarks.head_probe ...") from None

REPO = Path(__file__).resolve().parent.parent
# (name, where, pooling grid): "where" is the input of stage 1 (= the stem's output) or a stage's output
POINTS = (
    ("stem, global pool (the paper's head)", "stem", 1),
    ("stem, 2x2 grid", "stem", 2),
    ("stem, 4x4 grid", "stem", 4),
    ("after stage 1, global pool", "layer1", 1),
    ("after stage 1, 2x2 grid", "layer1", 2),
    ("after stage 2, global pool", "layer2", 1),
    ("after stage 3, global pool (the classifier's input)", "layer3", 1),
)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--released", default=str(RELEASED))
    parser.add_argument("--depth", type=int, default=56, choices=sorted(CHECKPOINTS))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--eval-images", type=int, default=5000, help="validation images (the held-out half)")
    parser.add_argument("--l2", type=float, default=1e-3, help="weight decay of the probe")
    parser.add_argument("--smoke", action="store_true", help="seconds: 256 / 128 images")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_images, args.eval_images = 256, 128
    return args


@torch.no_grad()
def features(model: torch.nn.Module, split, count: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Pooled features at every decision point, the labels, and whether the full model is right, per image."""
    from ofas_wrap.data import make_loader

    captured: dict[str, torch.Tensor] = {}
    hooks = [model.layer1.register_forward_pre_hook(lambda _m, inputs: captured.__setitem__("stem", inputs[0]))]
    for name in ("layer1", "layer2", "layer3"):
        hooks.append(getattr(model, name).register_forward_hook(
            lambda _m, _i, output, name=name: captured.__setitem__(name, output)))
    pooled: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in POINTS}
    labels, right = [], []
    seen = 0
    try:
        for images, targets in make_loader(split, 500):
            images, targets = images[:count - seen], targets[:count - seen]
            logits = model(images)
            for name, where, grid in POINTS:
                pooled[name].append(F.adaptive_avg_pool2d(captured[where], grid).flatten(1))
            labels.append(targets)
            right.append(logits.argmax(1) == targets)
            seen += len(targets)
            if seen >= count:
                break
    finally:
        for hook in hooks:
            hook.remove()
    return {k: torch.cat(v) for k, v in pooled.items()}, torch.cat(labels), torch.cat(right)


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float) -> tuple[torch.nn.Linear, tuple]:
    """Multinomial logistic regression on standardised features (L-BFGS, class-balanced loss)."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    probe = torch.nn.Linear(x.shape[1], classes)
    weight = len(y) / (classes * torch.bincount(y, minlength=classes).clamp_min(1).float())
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(z), y, weight=weight) + l2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe, (mean, std)


@torch.no_grad()
def score(probe: torch.nn.Linear, norm: tuple, x: torch.Tensor, y: torch.Tensor, classes: int) -> dict[str, float]:
    predicted = probe((x - norm[0]) / norm[1]).argmax(1)
    recalls = [float((predicted[y == c] == c).float().mean()) for c in range(classes) if (y == c).any()]
    return {"accuracy": float((predicted == y).float().mean()), "balanced_accuracy": sum(recalls) / len(recalls)}


def main(argv: Optional[list[str]] = None) -> int:
    from ofas_wrap.data import load_image_data
    from ofas_wrap.models._user import build_from_factory, load_checkpoint_weights

    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    started = time.perf_counter()
    model = build_from_factory(f"{args.released}/resnet.py:resnet{args.depth}")
    model = load_checkpoint_weights(model, Path(args.released) / CHECKPOINTS[args.depth]).eval()
    data = load_image_data(args.data, in_chans=3, augment=False, val_from="test",
                           normalization={"mean": list(MEAN), "std": list(STD)})
    train_x, train_y, _ = features(model, data.train, args.train_images)
    val_x, val_y, val_right = features(model, data.val, args.eval_images)
    rows = []
    for name, where, grid in POINTS:
        probe, norm = fit_probe(train_x[name], train_y, 10, args.l2)
        cls = score(probe, norm, val_x[name], val_y, 10)
        # the released model is right on (nearly) every training image: right/wrong is fitted on one half of the
        # validation images and scored on the other
        half = len(val_y) // 2
        probe, norm = fit_probe(val_x[name][:half], val_right[:half].long(), 2, args.l2)
        hard = score(probe, norm, val_x[name][half:], val_right[half:].long(), 2)
        rows.append({"point": name, "where": where, "grid": grid, "dims": int(train_x[name].shape[1]),
                     "class_accuracy": cls["accuracy"], "right_balanced_accuracy": hard["balanced_accuracy"]})
        print(f"[probe] {name}: {rows[-1]['dims']} dims, class {100 * cls['accuracy']:.1f} %, "
              f"full model right/wrong {100 * hard['balanced_accuracy']:.1f} % (balanced)", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    meta = {
        "model": f"released akamaster ResNet-{args.depth} (200 epochs), {CHECKPOINTS[args.depth]}",
        "data": f"{args.data}: probe fitted on {len(train_y)} training images (no augmentation), scored on "
                f"{len(val_y)} images of the validation half of the test split (val_from test)",
        "full_model_val_accuracy": float(val_right.float().mean()),
        "probe": f"multinomial logistic regression on standardised pooled features, L-BFGS, L2 {args.l2}, "
                 "class-balanced loss; 'right' = whether the full-depth model classifies the image correctly, "
                 "fitted on one half of the validation images and scored on the other",
        "seconds": round(time.perf_counter() - started, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "command": "python -m benchmarks.head_probe " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "commit": commit,
    }
    lines = ["| decision point | features | class probe (%) | full model right? probe, balanced (%) |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {r['point']} | {r['dims']} | {100 * r['class_accuracy']:.1f} | "
              f"{100 * r['right_balanced_accuracy']:.1f} |" for r in rows]
    lines += ["", f"Model: {meta['model']}; full-depth accuracy on these images "
              f"{100 * meta['full_model_val_accuracy']:.2f} %.", f"Data: {meta['data']}.", f"Probe: {meta['probe']}.",
              "Chance: 10 % (class), 50 % (balanced right/wrong).", f"Machine: {meta['machine']}; "
              f"{meta['seconds']} s.", f"Command: `{meta['command']}`", f"Commit: {meta['commit']}"]
    (out / "head_probe.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=2) + "\n")
    (out / "head_probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
