"""Issue 9 item 3: does the fast training recipe learn as well as the old one? Accuracy parity after 5 epochs.

``cifar:resnet38`` on the lossless CIFAR-10 copy, 5 epochs, the same seed, data and schedule, once per
configuration of ``benchmarks/train_speed.py``:

* ``baseline``: the old path (eager fp32, contiguous memory);
* ``channels_last``: the same training in another memory layout (no change to the results is intended; not run
  unless ``--only`` names it);
* ``fast``: channels_last and bf16 autocast, the recipe the plain backbones are trained with (the same training
  in other numerics; fp32 where the CPU has no native bf16, as the recipe says in its log);
* ``recommended``: train_speed's recommendation (``fast`` + stochastic depth 0.5, whose dropped blocks are not
  computed: a different training by design).

The rule, written before the runs: a configuration is at parity iff its test top-1 (all 10,000 images, every
block) is within 0.3 pp of the baseline's. One seed each: the seed-to-seed noise at 5 epochs is not measured here,
so a miss by less than about 0.5 pp says little either way.

    nohup python benchmarks/train_parity.py >> ../runs/parity.log 2>&1 &      # start or continue (resumable)
    python benchmarks/train_parity.py --dry-run                               # the commands

Run folders go to ``RUNS/parity-<name>`` (outside the checkout; the recipes' output in ``RUNS/parity.log``) and
continue with ``--resume`` after a stop; the report is ``OUT/train_parity.{md,json}``, written when every run has
finished.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks._runner import run_or_reuse  # noqa: E402
from benchmarks.cifar10_backbones import test_accuracy  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-png.tar.gz"
CONFIGS = {
    "baseline": ["--no-channels-last", "--mixed-precision", "no"],
    "channels_last": ["--channels-last", "--mixed-precision", "no"],
    "fast": ["--channels-last", "--mixed-precision", "bf16"],
    "recommended": ["--channels-last", "--mixed-precision", "bf16", "--drop-path", "0.5"],
}
DEFAULT_ONLY = ["baseline", "fast", "recommended"]
TOLERANCE_PP = 0.3


def flags_for(name: str, args: argparse.Namespace) -> list[str]:
    """``recipes/train_backbone.py`` flags of one configuration (``--output`` is added by the runner)."""
    return ["--model", args.model, "--dataset", args.data, "--epochs", str(args.epochs), "--seed", str(args.seed),
            *CONFIGS[name], *args.extra.split()]


def verdicts(accuracy: dict[str, float], tolerance_pp: float = TOLERANCE_PP) -> dict[str, dict]:
    """Each configuration's difference to the baseline in pp and whether it is within ``tolerance_pp``.

    >>> verdicts({"baseline": 0.80, "fast": 0.8025, "slow": 0.79})["fast"]["parity"]
    True
    >>> verdicts({"baseline": 0.80, "fast": 0.8025, "slow": 0.79})["slow"]["parity"]
    False
    """
    base = accuracy["baseline"]
    return {name: {"diff_pp": round(100 * (value - base), 2), "parity": abs(100 * (value - base)) <= tolerance_pp}
            for name, value in accuracy.items()}


def markdown(result: dict) -> str:
    lines = ["| configuration | flags | precision that ran | test top-1 (%) | vs baseline (pp) | train time (min) | "
             "img/s | parity |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | `{' '.join(CONFIGS[name]) or '-'}` | {row['mixed_precision']} | "
                     f"{100 * row['test_accuracy']:.2f} | "
                     f"{row['diff_pp']:+.2f} | {row['train_seconds'] / 60:.1f} | {row['samples_per_second']:.0f} | "
                     f"{'yes' if row['parity'] else 'no'} |")
    meta = result["meta"]
    return "\n".join([
        f"# Accuracy parity of the training configurations ({meta['model']}, {meta['epochs']} epochs)", "",
        *lines, "",
        f"Rule (written before the runs): parity iff within {meta['tolerance_pp']} pp of the baseline's test top-1 "
        "(10,000 images, every block). One seed each.",
        f"Data: {meta['data']} (5,000 training images carved out for validation), seed {meta['seed']}.",
        f"Machine: {meta['machine']}. Throughput here is over the whole run, beside whatever else ran; "
        "benchmarks/train_speed.py is the timing.",
        f"Command: `{meta['command']}`", ""])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--model", default="cifar:resnet38")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default=str(REPO.parent / "runs"), help="where the run folders go (outside)")
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=DEFAULT_ONLY)
    parser.add_argument("--extra", default="", help="more train_backbone flags, e.g. '--max-steps 2' for a smoke run")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if "baseline" not in args.only:
        parser.error("--only must include baseline: every configuration is compared with it")
    rows = {}
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        run = runs / f"parity-{name}"
        if args.dry_run:
            print(f"python recipes/train_backbone.py {' '.join(flags_for(name, args))} --output {run}")
            continue
        # each in a new process: Accelerate's mixed precision is set once per process
        run_or_reuse("train_backbone", run, flags_for(name, args), runs / "parity.log", "parity", fresh_process=True)
        accuracy, count = test_accuracy(run, args.data)
        metrics = json.loads((run / "metrics.json").read_text())
        recorded = json.loads((run / "args.json").read_text())
        rows[name] = {"test_accuracy": accuracy, "test_images": count, "flags": CONFIGS[name],
                      "mixed_precision": recorded.get("mixed_precision"),
                      "train_seconds": metrics.get("train_seconds") or 0.0,
                      "samples_per_second": metrics.get("samples_per_second") or 0.0}
        print(f"[parity] {name}: test top-1 {100 * accuracy:.2f} %", flush=True)
    if args.dry_run:
        return 0
    for name, verdict in verdicts({n: r["test_accuracy"] for n, r in rows.items()}).items():
        rows[name].update(verdict)
    import torch

    result = {"rows": rows, "meta": {
        "model": args.model, "epochs": args.epochs, "seed": args.seed, "data": args.data,
        "tolerance_pp": TOLERANCE_PP,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": "python benchmarks/train_parity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_parity.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "train_parity.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
