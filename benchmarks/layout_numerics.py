"""How exact is one training step's gradient in each memory layout? A diagnostic for train_parity's finding.

``benchmarks/train_parity.py`` found the fp32 ``channels_last`` training of a ResNet-38 1.2 pp more accurate after
5 epochs than the contiguous fp32 baseline (2 seeds), though the two are meant to be the same training in two
layouts. This checks the numerics behind it: the plain backbone (``OFASModel.unwrap()``), in train mode, one
forward and backward of the same random batch, in float64 (the reference) and in float32 contiguous and
``channels_last`` at 1 and 2 threads; it prints each gradient's relative error ``||g - g64|| / ||g64||`` and, as
a floor, a single 3x3 convolution's forward error in both layouts.

    python benchmarks/layout_numerics.py                       # cifar:resnet38, batch 128; under a minute
    python benchmarks/layout_numerics.py --model cifar:resnet8 --batch-size 8 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent.parent


def relative_error(value: Tensor, reference: Tensor) -> float:
    """``||value - reference|| / ||reference||`` in float64.

    >>> relative_error(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]))
    1.0
    """
    value, reference = value.detach().double(), reference.detach().double()
    return float((value - reference).norm() / reference.norm())


def step_gradient(model: nn.Module, images: Tensor, labels: Tensor, dtype: torch.dtype,
                  channels_last: bool) -> Tensor:
    """All parameter gradients of one train-mode forward and backward of a copy of ``model``, flattened."""
    model = copy.deepcopy(model).to(dtype).train()
    images = images.to(dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    F.cross_entropy(model(images), labels).backward()
    return torch.cat([p.grad.reshape(-1).double() for p in model.parameters() if p.grad is not None])


def conv_errors(seed: int) -> dict[str, float]:
    """A 16-channel 3x3 convolution's forward error against float64 in both layouts (the kernels' floor)."""
    generator = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    inputs = torch.randn(32, 16, 32, 32, generator=generator)
    reference = F.conv2d(inputs.double(), conv.weight.double(), padding=1)
    cl = copy.deepcopy(conv).to(memory_format=torch.channels_last)
    return {"contiguous": relative_error(conv(inputs), reference),
            "channels_last": relative_error(cl(inputs.contiguous(memory_format=torch.channels_last)), reference)}


def measure(model_spec: str, batch_size: int, threads: list[int], seed: int) -> dict:
    from ofas_wrap import create_model

    torch.manual_seed(seed)
    model = create_model(model_spec).unwrap()
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (batch_size,), generator=generator)
    previous = torch.get_num_threads()
    try:
        reference = step_gradient(model, images, labels, torch.float64, channels_last=False)
        rows = {}
        for count in threads:
            torch.set_num_threads(count)
            for layout in ("contiguous", "channels_last"):
                gradient = step_gradient(model, images, labels, torch.float32, channels_last=layout == "channels_last")
                rows[f"{layout}, {count} thread{'s' if count > 1 else ''}"] = relative_error(gradient, reference)
    finally:
        torch.set_num_threads(previous)
    return {"model": model_spec, "batch_size": batch_size, "seed": seed, "gradient_relative_error": rows,
            "conv_forward_relative_error": conv_errors(seed), "torch": torch.__version__}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cifar:resnet38")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.batch_size < 2:
        parser.error("--batch-size must be at least 2 (BatchNorm in train mode needs two images)")
    result = measure(args.model, args.batch_size, args.threads, args.seed)
    print(f"{args.model}, batch {args.batch_size}, train mode, one step; relative error against float64:")
    for name, error in result["gradient_relative_error"].items():
        print(f"  gradient, float32 {name}: {error:.2e}")
    for name, error in result["conv_forward_relative_error"].items():
        print(f"  one 3x3 conv forward, {name}: {error:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
