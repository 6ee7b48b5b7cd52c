"""The ``ofas-wrap`` command line: ``ofas-wrap inspect SPEC`` (more subcommands register themselves here)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Callable, Optional

__all__ = ["main", "build_parser"]


def _add_inspect(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect", help="print the surgery plan of a backbone (blocks, shortcuts, FLOPs, the head to insert)",
        description="Print what adaptify() would do to a backbone, without changing anything.",
    )
    parser.add_argument("spec", help="backbone spec: cifar:resnet38, timm:resnet50, torchvision:resnet18, ...")
    parser.add_argument("--input-size", type=int, nargs="+", metavar="N",
                        help="H W, or C H W, or one size for square inputs (default: the model's own)")
    parser.add_argument("--variant", default="auto", choices=["I", "II", "auto"])
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--in-chans", type=int, default=None)
    parser.add_argument("--no-gate-downsample", action="store_true",
                        help="leave blocks with a projection shortcut always on")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(func=_run_inspect)


def _input_size(values: Optional[Sequence[int]], channels: int) -> Optional[tuple[int, int, int]]:
    if not values:
        return None
    if len(values) == 1:
        return (channels, values[0], values[0])
    if len(values) == 2:
        return (channels, values[0], values[1])
    if len(values) == 3:
        return (values[0], values[1], values[2])
    raise SystemExit(f"--input-size takes 1, 2 or 3 numbers (S | H W | C H W), got {len(values)}")


def _run_inspect(args: argparse.Namespace) -> int:
    import json

    from ._factory import create_model

    size = _input_size(args.input_size, args.in_chans or 3)
    model = create_model(args.spec, num_classes=args.num_classes, in_chans=args.in_chans, variant=args.variant,
                         gate_downsample=not args.no_gate_downsample, input_size=size)
    if args.json:
        print(json.dumps(model.plan.to_dict(), indent=2))
    else:
        print(f"backbone: {args.spec} ({type(model.unwrap()).__name__})")
        print(model.plan.table())
    return 0


# Other modules add subcommands by appending a function that takes the subparsers object.
SUBCOMMANDS: list[Callable] = [_add_inspect]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ofas-wrap", description="Once For All Skip for any ResNet.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as exc:
        print(f"ofas-wrap {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
