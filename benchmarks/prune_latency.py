"""Is the depth-pruned network ever slower than the OFAS model with its pattern forced? (issue 25, item 2)

For one model and one pattern of removed blocks, both as deployed (TorchScript, 1 thread by default):

- **the OFAS model with the pattern forced**: ``ofas_wrap.export_torchscript(model, ...)`` loaded with
  ``torch.jit.load``, its ``forced_gate_mask`` set to the pattern (the head still runs, the gates are branches);
- **the pruned network**: ``ofas_wrap.export_torchscript(model, ..., prune=keep)`` loaded with ``torch.jit.load``
  (the plain backbone with those blocks removed: no head, no gates);
- **the full backbone**, scripted, for scale.

First the outputs are compared (max |difference| of the pruned file against the OFAS file and the eager OFAS model
with the pattern forced, seeded random inputs at batch 1 and 8). Then the three are timed with
``torch.utils.benchmark.Timer.blocked_autorange`` in interleaved rounds (the order reversed every other round), at
each batch size; the ratio pruned / OFAS is taken per round and its median and interquartile range are reported.
Nothing here asserts a time; only timings on a quiet machine are meaningful, but ratios within one interleaved run
hold up better than absolute times on a busy one.

Usage (from the repository root)::

    python benchmarks/prune_latency.py --model ../shared/data/pretrained/akamaster-cifar10/resnet.py:resnet56 \\
        --weights ../shared/data/pretrained/akamaster-cifar10/resnet56-4bfd9763.th \\
        --remove layer1.8,layer2.2,layer2.4,layer2.5,layer2.8,layer3.8 --json /tmp/prune_latency.json
    python benchmarks/prune_latency.py --model cifar:resnet56 --remove-count 6 --batch-sizes 1,32
    python benchmarks/prune_latency.py --smoke --json /tmp/p.json     # a few seconds: checks the script works

Without ``--remove``, ``--remove-count N`` identity-shortcut blocks are removed, spread evenly over the gated ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.benchmark import Timer

import ofas_wrap
from ofas_wrap._atomic import write_atomic

warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated")
warnings.filterwarnings("ignore", message=r"The TorchScript type system doesn't support instance-level annotations")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar:resnet56",
                        help="create_model spec: cifar:resnetN, timm:NAME, torchvision:NAME or FILE.py:FACTORY")
    parser.add_argument("--weights", default=None,
                        help="a checkpoint for the backbone (create_model's checkpoint_path; the timing does not "
                             "depend on it, the equality check uses it)")
    parser.add_argument("--input-size", type=int, default=32, help="square input side (default 32)")
    parser.add_argument("--remove", default=None, help="comma-separated gated block names to remove")
    parser.add_argument("--remove-count", type=int, default=6,
                        help="without --remove: this many identity-shortcut blocks, spread evenly (default 6)")
    parser.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes to time (default 1)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    parser.add_argument("--min-run-time", type=float, default=0.5,
                        help="seconds of blocked_autorange per side and round (default 0.5)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON to PATH")
    parser.add_argument("--smoke", action="store_true", help="cifar:resnet8 at 16 px, 2 short rounds (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.weights, args.input_size, args.remove = "cifar:resnet8", None, 16, "layer2.0"
        args.rounds, args.min_run_time = 2, 0.02
    for name in ("rounds", "threads", "input_size", "remove_count"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes takes comma-separated integers, got {args.batch_sizes!r}")
    if min(args.batch_sizes) < 1:
        parser.error("--batch-sizes must be positive")
    return args


def pattern(model: ofas_wrap.OFASModel, remove: Optional[str], count: int) -> list[bool]:
    """One bool per gated block, False for the blocks to remove (named, or ``count`` identity blocks spread)."""
    names = model.gated_block_names
    if remove:
        chosen = [name.strip() for name in remove.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in names]
        if unknown:
            raise SystemExit(f"--remove names {unknown}, which are not gated blocks; they are {', '.join(names)}")
    else:
        identity = [b.name for b in model.blocks if b.gate_index >= 0 and b.identity_shortcut]
        if count > len(identity):
            raise SystemExit(f"--remove-count {count}: the model has only {len(identity)} identity-shortcut blocks")
        chosen = [identity[round(i * (len(identity) - 1) / max(count - 1, 1))] for i in range(count)]
        chosen = list(dict.fromkeys(chosen))
    return [name not in chosen for name in names]


def time_interleaved(sides: dict[str, Callable[[], Any]], rounds: int, min_run_time: float,
                     threads: int) -> dict[str, list[float]]:
    """Milliseconds per call of every side in each round (median of ``blocked_autorange``), in interleaved rounds
    whose order is reversed every other round. Each side runs 5 untimed calls first (TorchScript's profiling
    executor optimises a graph on its second call)."""
    for fn in sides.values():
        for _ in range(5):
            fn()
    timers = {name: Timer("fn()", globals={"fn": fn}, num_threads=threads, label=name) for name, fn in sides.items()}
    times: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for index in range(rounds):
        for name in order if index % 2 == 0 else order[::-1]:
            times[name].append(timers[name].blocked_autorange(min_run_time=min_run_time).median * 1e3)
    return times


def caller(module: Any, x: torch.Tensor) -> Callable[[], Any]:
    def call() -> Any:
        with torch.inference_mode():
            return module(x)

    return call


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    low, median, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, median, high


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    size = (3, args.input_size, args.input_size)
    model = ofas_wrap.create_model(args.model, checkpoint_path=args.weights, input_size=size).eval()
    keep = pattern(model, args.remove, args.remove_count)
    mask = torch.tensor(keep)
    removed = [name for name, kept in zip(model.gated_block_names, keep) if not kept]
    with tempfile.TemporaryDirectory() as folder:
        ofas_path = ofas_wrap.export_torchscript(model, Path(folder) / "ofas.pt")
        pruned_path = ofas_wrap.export_torchscript(model, Path(folder) / "pruned.pt", prune=keep)
        ofas_file, pruned_file = torch.jit.load(str(ofas_path)), torch.jit.load(str(pruned_path))
        pruned_config = ofas_wrap.load_torchscript(pruned_path)[1]["pruned"]
    ofas_file.forced_gate_mask = mask
    backbone, _ = ofas_wrap.script_with_fx_fallback(model.unwrap().eval())

    difference = 0.0
    for batch in (1, 8):
        x = torch.randn(batch, *size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad(), model.forced_gates(mask):
            eager = model(x)
            pruned_out = pruned_file(x)
            scripted_out = ofas_file(x)
        if not torch.equal(ofas_file.last_gates.cpu(), mask.expand(batch, -1)):
            raise RuntimeError("the OFAS file did not run the forced pattern")
        difference = max(difference, (pruned_out - eager).abs().max().item(),
                         (pruned_out - scripted_out).abs().max().item())

    rows = []
    for batch in args.batch_sizes:
        x = torch.randn(batch, *size, generator=torch.Generator().manual_seed(100 + batch))
        times = time_interleaved({"ofas_forced": caller(ofas_file, x), "pruned": caller(pruned_file, x),
                                  "backbone": caller(backbone, x)}, args.rounds, args.min_run_time, args.threads)
        ratios = [p / o for p, o in zip(times["pruned"], times["ofas_forced"])]
        low, median, high = quartiles(ratios)
        rows.append({
            "batch": batch, "rounds": args.rounds,
            "ofas_forced_ms": statistics.median(times["ofas_forced"]), "pruned_ms": statistics.median(times["pruned"]),
            "backbone_ms": statistics.median(times["backbone"]), "pruned_over_ofas": median,
            "pruned_over_ofas_iqr": high - low, "pruned_slower_rounds": sum(r > 1 for r in ratios),
            "times_ms": times,
        })
    return {
        "meta": {
            "model": args.model, "weights": args.weights, "input_size": list(size), "threads": args.threads,
            "num_gates": model.num_gates, "removed_blocks": removed, "keep": keep,
            "mflops": {"pruned": pruned_config["flops"] / 1e6, "backbone": pruned_config["backbone_flops"] / 1e6},
            "runtime": "TorchScript (torch.jit.load of export_torchscript files)", "torch": torch.__version__,
            "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
        "max_abs_difference": difference,
        "rows": rows,
    }


def report_text(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [f"{meta['model']}: removed {len(meta['removed_blocks'])} of {meta['num_gates']} gated blocks "
             f"({', '.join(meta['removed_blocks'])}); {meta['mflops']['pruned']:.1f} of "
             f"{meta['mflops']['backbone']:.1f} MFLOPs; {meta['threads']} thread(s), load average "
             f"{meta['load_average']}",
             f"max |pruned - OFAS with the pattern forced| = {report['max_abs_difference']:.3g}",
             f"{'batch':>5} {'OFAS forced ms':>15} {'pruned ms':>10} {'backbone ms':>12} {'pruned/OFAS':>12} "
             f"{'IQR':>6} {'slower rounds':>14}"]
    for row in report["rows"]:
        lines.append(f"{row['batch']:>5} {row['ofas_forced_ms']:>15.3f} {row['pruned_ms']:>10.3f} "
                     f"{row['backbone_ms']:>12.3f} {row['pruned_over_ofas']:>12.3f} "
                     f"{row['pruned_over_ofas_iqr']:>6.3f} {row['pruned_slower_rounds']:>8}/{row['rounds']}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run(args)
    print(report_text(report), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
