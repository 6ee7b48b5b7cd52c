"""Issue 26's pilot: which flags OFAS trained from random initialisation uses in the long 30-epoch runs.

    nohup python benchmarks/scratch_pilot.py > ../runs/scratch-pilot.log 2>&1 &      # start or continue
    python benchmarks/scratch_pilot.py --dry-run                                     # the commands, nothing run

Each candidate is ``recipes/e2e_finetune.py --model cifar:resnet38`` **without weights** (OFAS-I head and backbone
trained together from the first step, straight-through gates, the gate terms annealed in by ``--penalty-ramp``),
at a short budget (``--epochs``, default 5: a sixth of the long runs' 30, the schedule's fractions unchanged), in the
fast recipe of the kept backbones (SGD lr 0.1 cosine, batch 128, channels_last, bf16 where native), resumable
(``--resume``), in ``RUNS/scratch-pilot-<name>`` outside the checkout. Every number that chooses is measured on the
validation carve (5,000 training images the model never trained on, ``--val-size 0.1``, split seed 0); the test
split is not read.

The decision rule, written before the runs:

1. A candidate is *eligible* when, at T = 0.5 on the validation carve, it executes at most 65 % of the full
   network's FLOPs (a cut of 35 % or more: the moonshot's latency cut, FLOPs standing in for latency in a pilot).
2. Among the eligible candidates with at least 5 input-dependent gates (open for more than 5 % and fewer than
   95 % of the validation images), the one with the highest validation top-1 is chosen.
3. If no eligible candidate has 5 such gates, the eligible one with the highest validation top-1 is chosen.
4. If none is eligible, the one with the largest FLOPs cut is chosen (the long runs then need a stronger cost).

The candidates (``CANDIDATES``) differ in the gate terms only:

- ``cost``: the paper's thresholded straight-through gates with the FLOPs penalty (``--skip-weight 0.3``, the
  fine-tune default);
- ``aig``: sampled gates (``--gate-sampling bernoulli``, the straight-through Bernoulli of docs/training.md) pulled
  to a per-gate execution rate of 0.6 (``--target-rate``: ConvNet-AIG, which trains its gates from scratch), no
  FLOPs penalty;
- ``aig_info``: ``aig`` plus the information term (``--info-weight 0.1``), which rewards gates that differ per image.

All three: ``--gate-bias-init 2`` (every gate open at first, so the backbone learns as a whole) and
``--penalty-ramp 0.1 0.5`` (the gate terms off for the first 10 % of the steps, full from 50 %).
Writes ``docs/results/scratch_pilot.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-png.tar.gz"
COMMON = ["--variant", "I", "--lr", "0.1", "--gate-bias-init", "2", "--penalty-ramp", "0.1", "0.5",
          "--mixed-precision", "bf16", "--no-progress", "--val-size", "0.1"]
CANDIDATES = {
    "cost": ["--skip-weight", "0.3"],
    "aig": ["--gate-sampling", "bernoulli", "--skip-weight", "0", "--target-rate", "0.6"],
    "aig_info": ["--gate-sampling", "bernoulli", "--skip-weight", "0", "--target-rate", "0.6", "--info-weight",
                 "0.1"],
}
MAX_FLOPS_FRACTION = 0.65
MIN_ADAPTIVE_GATES = 5
THRESHOLD = 0.5


def command_for(name: str, args: argparse.Namespace) -> list[str]:
    run = Path(args.runs) / f"scratch-pilot-{name}"
    command = [sys.executable, str(REPO / "recipes" / "e2e_finetune.py"), "--model", args.model, "--dataset",
               args.data, "--epochs", str(args.epochs), *COMMON, *CANDIDATES[name], "--output", str(run)]
    if (run / "checkpoints").is_dir():
        command.append("--resume")
    return command


def validate(run: Path) -> dict:
    """Validation top-1, executed FLOPs fraction and input-dependent gates at T = THRESHOLD (the test split unread)."""
    import torch

    from ofas_wrap import OFASModel
    from ofas_wrap.data import load_image_data, make_loader
    from ofas_wrap.training._evaluate import adaptivity

    model = OFASModel.from_pretrained(run).eval()
    model.threshold = THRESHOLD
    recorded = json.loads((run / "args.json").read_text())
    data = load_image_data(recorded["dataset"], in_chans=model.config["input_size"][0],
                           val_size=recorded["val_size"], split_seed=recorded["split_seed"], augment=False,
                           normalization=model.config.get("normalization"))
    correct = count = 0
    flops, outputs = [], []
    full = float(model.executed_flops(torch.ones(1, model.num_gates, dtype=torch.bool))[0])
    with torch.no_grad():
        for images, labels in make_loader(data.val, 500):
            correct += int((model(images).argmax(1) == labels).sum())
            count += int(labels.numel())
            flops.append(model.executed_flops().double())
            outputs.append(model.last_probs.float())
    gates = adaptivity(torch.cat(outputs), THRESHOLD)
    return {"val_top1": correct / count, "val_images": count,
            "flops_fraction": float(torch.cat(flops).mean()) / full, "blocks": float(torch.cat(outputs).ge(
                THRESHOLD).float().sum(1).mean()), "num_gates": model.num_gates, **gates}


def choose(rows: dict[str, dict]) -> tuple[str, str]:
    """The decision rule of the module docstring; returns (name, which clause chose it)."""
    eligible = {n: r for n, r in rows.items() if r["flops_fraction"] <= MAX_FLOPS_FRACTION}
    adaptive = {n: r for n, r in eligible.items() if r["adaptive_gates"] >= MIN_ADAPTIVE_GATES}
    if adaptive:
        return max(adaptive, key=lambda n: adaptive[n]["val_top1"]), "2: eligible and input-dependent"
    if eligible:
        return max(eligible, key=lambda n: eligible[n]["val_top1"]), "3: eligible, fewer than 5 adaptive gates"
    return min(rows, key=lambda n: rows[n]["flops_fraction"]), "4: none eligible, the largest FLOPs cut"


def write_report(rows: dict[str, dict], chosen: tuple[str, str], args: argparse.Namespace, out: Path) -> None:
    meta = {"model": args.model, "epochs": args.epochs, "threshold": THRESHOLD, "common_flags": COMMON,
            "candidates": CANDIDATES, "max_flops_fraction": MAX_FLOPS_FRACTION,
            "min_adaptive_gates": MIN_ADAPTIVE_GATES, "chosen": chosen[0], "rule_clause": chosen[1],
            "command": "python benchmarks/scratch_pilot.py " + " ".join(sys.argv[1:])}
    lines = [f"# Issue 26 pilot: OFAS from random initialisation, {args.model}, {args.epochs} epochs", "",
             f"Validation carve only (T = {THRESHOLD}); rule in `benchmarks/scratch_pilot.py`. Command: "
             f"`{meta['command']}`.", "",
             "| candidate | flags | val top-1 | FLOPs executed | blocks | adaptive gates | patterns | train s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        lines.append(f"| {name} | `{' '.join(CANDIDATES[name])}` | {100 * row['val_top1']:.2f} % | "
                     f"{100 * row['flops_fraction']:.1f} % | {row['blocks']:.1f} / {row['num_gates']} | "
                     f"{row['adaptive_gates']} | {row['distinct_patterns']} | {row.get('train_seconds', 0):.0f} |")
    lines += ["", f"**Chosen: `{chosen[0]}`** (clause {chosen[1]}).", ""]
    from ofas_wrap._atomic import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    for path, text in ((out / "scratch_pilot.json", json.dumps({"rows": rows, "meta": meta}, indent=2) + "\n"),
                       (out / "scratch_pilot.md", "\n".join(lines))):
        write_atomic(path, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--model", default="cifar:resnet38")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--runs", default=str(REPO.parent / "runs"))
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--extra", default="", help="more e2e_finetune flags (e.g. '--max-steps 2' for a smoke run)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    rows = {}
    for name in args.only:
        run = Path(args.runs) / f"scratch-pilot-{name}"
        command = command_for(name, args) + args.extra.split()
        if args.dry_run:
            print(" ".join(command))
            continue
        if not (run / "metrics.json").is_file():
            print(f"[pilot] {' '.join(command)}", flush=True)
            started = time.time()
            code = subprocess.run(command, cwd=REPO).returncode
            if code != 0:
                print(f"[pilot] {name} stopped with exit code {code} after {time.time() - started:.0f} s; rerun to "
                      "continue it", flush=True)
                return code
        rows[name] = validate(run)
        rows[name]["train_seconds"] = json.loads((run / "metrics.json").read_text()).get("train_seconds")
        print(f"[pilot] {name}: {json.dumps(rows[name])}", flush=True)
    if rows and not args.dry_run:
        chosen = choose(rows)
        write_report(rows, chosen, args, Path(args.out))
        print(f"[pilot] chosen: {chosen[0]} (clause {chosen[1]})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
