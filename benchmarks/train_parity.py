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
block) is within 0.3 pp of the baseline's. With several seeds (``--seed 0 1 2``; added in session 10, before the
runs of seeds 1 and 2) the rule applies to the mean of the paired differences (each seed's configuration minus
the same seed's baseline), and the report adds the seed-to-seed noise: the standard deviation of each
configuration's accuracy over the seeds and the standard error of the mean paired difference. With one seed the
noise is not measured, so a miss by less than about 0.5 pp says little either way.

    nohup python -m benchmarks.train_parity >> ../runs/parity.log 2>&1 &      # start or continue (resumable)
    python -m benchmarks.train_parity --seed 0 1 2 --reuse docs/results/train_parity.json  # seed 0 not retrained
    python -m benchmarks.train_parity --dry-run                               # the commands

(from the repository root, as a module: it imports ``benchmarks._runner`` and ``benchmarks.cifar10_backbones``)

Run folders go to ``RUNS/parity-<name>`` (seed 0) and ``RUNS/parity-<name>-seed<N>`` (outside the checkout; the
recipes' output in ``RUNS/parity.log``) and continue with ``--resume`` after a stop; ``--reuse JSON`` takes the
rows of an earlier report for the seeds and configurations it holds instead of training them again (its runs'
folders may be gone with their machine); the others are trained. The report is ``OUT/train_parity.{md,json}``,
written when every run has finished.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
from pathlib import Path
from typing import Optional

from ofas_wrap._atomic import write_atomic

try:
    from benchmarks._runner import run_or_reuse
    from benchmarks.cifar10_backbones import test_scores
except ModuleNotFoundError as error:  # `python benchmarks/train_parity.py`: the repository root is not on sys.path
    if error.name != "benchmarks":
        raise
    raise SystemExit("run it from the repository root as a module: python -m benchmarks.train_parity ...") from None

REPO = Path(__file__).resolve().parent.parent

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-png.tar.gz"
CONFIGS = {
    "baseline": ["--no-channels-last", "--mixed-precision", "no"],
    "channels_last": ["--channels-last", "--mixed-precision", "no"],
    "fast": ["--channels-last", "--mixed-precision", "bf16"],
    "recommended": ["--channels-last", "--mixed-precision", "bf16", "--drop-path", "0.5"],
}
DEFAULT_ONLY = ["baseline", "fast", "recommended"]
TOLERANCE_PP = 0.3


def flags_for(name: str, args: argparse.Namespace, seed: int) -> list[str]:
    """``recipes/train_backbone.py`` flags of one configuration (``--output`` is added by the runner)."""
    return ["--model", args.model, "--dataset", args.data, "--epochs", str(args.epochs), "--seed", str(seed),
            *CONFIGS[name], *args.extra.split()]


def run_folder(runs: Path, name: str, seed: int) -> Path:
    """``RUNS/parity-<name>`` for seed 0 (the folders of the one-seed reports), ``...-seed<N>`` for the others."""
    return runs / (f"parity-{name}" if seed == 0 else f"parity-{name}-seed{seed}")


def verdicts(accuracy: dict[str, float], tolerance_pp: float = TOLERANCE_PP) -> dict[str, dict]:
    """Each configuration's difference to the baseline in pp and whether it is within ``tolerance_pp`` (one seed).

    >>> verdicts({"baseline": 0.80, "fast": 0.8025, "slow": 0.79})["fast"]["parity"]
    True
    >>> verdicts({"baseline": 0.80, "fast": 0.8025, "slow": 0.79})["slow"]["parity"]
    False
    """
    return summarize({0: accuracy}, tolerance_pp)


def summarize(per_seed: dict[int, dict[str, float]], tolerance_pp: float = TOLERANCE_PP) -> dict[str, dict]:
    """The rule over seeds: each configuration's mean accuracy, the mean of its paired differences to the same
    seed's baseline (pp), and parity iff that mean is within ``tolerance_pp``; with two seeds or more also the
    standard deviation of its accuracy over the seeds (pp) and the standard error of the mean difference (pp).

    >>> rows = summarize({0: {"baseline": 0.80, "fast": 0.81}, 1: {"baseline": 0.78, "fast": 0.78}})
    >>> rows["fast"]["diff_pp"], rows["fast"]["parity"], rows["fast"]["diff_se_pp"]
    (0.5, False, 0.5)
    """
    names = list(next(iter(per_seed.values())))
    if any(list(accuracy) != names or "baseline" not in accuracy for accuracy in per_seed.values()):
        raise ValueError(f"every seed needs the same configurations and a baseline, got {per_seed}")
    rows = {}
    for name in names:
        values = [100 * per_seed[seed][name] for seed in per_seed]
        diffs = [100 * (per_seed[seed][name] - per_seed[seed]["baseline"]) for seed in per_seed]
        mean_diff = statistics.fmean(diffs)
        row = {"test_accuracy": round(statistics.fmean(values) / 100, 6), "diff_pp": round(mean_diff, 2),
               "parity": abs(mean_diff) <= tolerance_pp + 1e-9}
        if len(per_seed) > 1:
            row["accuracy_std_pp"] = round(statistics.stdev(values), 2)
            row["diff_se_pp"] = round(statistics.stdev(diffs) / math.sqrt(len(diffs)), 2)
        rows[name] = row
    return rows


def load_reused(path: Optional[str]) -> dict[int, dict[str, dict]]:
    """seed -> configuration -> run row of an earlier report (one-seed or several-seed format); {} without one."""
    if not path:
        return {}
    report = json.loads(Path(path).read_text())
    if "runs" in report:
        return {int(seed): rows for seed, rows in report["runs"].items()}
    return {int(report["meta"]["seed"]): report["rows"]}


def run_row(run: Path, name: str, data: str) -> dict:
    """A finished run's row: its test accuracy and what its args and metrics recorded."""
    scores = test_scores(run, data, gated=False)  # plain backbones
    accuracy, count = scores["test_accuracy"], scores["test_images"]
    metrics = json.loads((run / "metrics.json").read_text())
    recorded = json.loads((run / "args.json").read_text())
    return {"test_accuracy": accuracy, "test_images": count, "flags": CONFIGS[name],
            "mixed_precision": recorded.get("mixed_precision"),
            "train_seconds": metrics.get("train_seconds") or 0.0,
            "samples_per_second": metrics.get("samples_per_second") or 0.0}


def markdown(result: dict) -> str:
    seeds = result["meta"]["seeds"]
    several = len(seeds) > 1
    head = ["configuration", "flags", "precision that ran",
            *([f"seed {seed} (%)" for seed in seeds] if several else []),
            "test top-1 (%)" + (", mean" if several else ""), "vs baseline (pp)" + (", mean paired" if several else ""),
            *(["seed std (pp)", "SE of diff (pp)"] if several else []), "train time (min)", "img/s", "parity"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, row in result["rows"].items():
        runs = [result["runs"][str(seed)][name] for seed in seeds]
        cells = [name, f"`{' '.join(CONFIGS[name]) or '-'}`", str(runs[0]["mixed_precision"]),
                 *([f"{100 * run['test_accuracy']:.2f}" for run in runs] if several else []),
                 f"{100 * row['test_accuracy']:.2f}", f"{row['diff_pp']:+.2f}",
                 *([f"{row['accuracy_std_pp']:.2f}", f"{row['diff_se_pp']:.2f}"] if several else []),
                 f"{statistics.fmean(run['train_seconds'] for run in runs) / 60:.1f}",
                 f"{statistics.fmean(run['samples_per_second'] for run in runs):.0f}",
                 "yes" if row["parity"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    meta = result["meta"]
    rule = (f"Rule (written before the runs): parity iff within {meta['tolerance_pp']} pp of the baseline's test top-1 "
            "(10,000 images, every block)")
    rule += (", applied to the mean of the paired differences (each seed against the same seed's baseline)."
             if several else ". One seed.")
    reused = (f" Reused from {meta['reused']} (not retrained): {', '.join(meta['reused_runs'])}."
              if meta.get("reused_runs") else "")
    return "\n".join([
        f"# Accuracy parity of the training configurations ({meta['model']}, {meta['epochs']} epochs)", "",
        *lines, "", rule,
        f"Data: {meta['data']} (5,000 training images carved out for validation), seeds {', '.join(map(str, seeds))}."
        + reused,
        f"Machine: {meta['machine']}. Train time and img/s are over the whole run (mean over seeds), beside whatever "
        "else ran; benchmarks/train_speed.py is the timing.",
        f"Command: `{meta['command']}`", ""])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--model", default="cifar:resnet38")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="one seed or several (the rule over seeds)")
    parser.add_argument("--runs", default=str(REPO.parent / "runs"), help="where the run folders go (outside)")
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=DEFAULT_ONLY)
    parser.add_argument("--reuse", default=None,
                        help="an earlier train_parity.json: its rows stand for the seeds and configurations it holds "
                             "(not retrained); the others are trained")
    parser.add_argument("--extra", default="", help="more train_backbone flags, e.g. '--max-steps 2' for a smoke run")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if "baseline" not in args.only:
        parser.error("--only must include baseline: every configuration is compared with it")
    if len(set(args.seed)) != len(args.seed):
        parser.error(f"--seed names a seed twice: {args.seed}")
    if args.reuse and not Path(args.reuse).is_file():
        parser.error(f"--reuse {args.reuse}: no such report (an earlier run's train_parity.json)")
    reused = load_reused(args.reuse)
    runs_root = Path(args.runs)
    runs_root.mkdir(parents=True, exist_ok=True)
    runs: dict[int, dict[str, dict]] = {}
    for seed in args.seed:
        runs[seed] = {}
        for name in args.only:
            if name in reused.get(seed, {}):
                runs[seed][name] = reused[seed][name]
                print(f"[parity] {name} seed {seed}: reused from {args.reuse}", flush=True)
                continue
            run = run_folder(runs_root, name, seed)
            if args.dry_run:
                print(f"python recipes/train_backbone.py {' '.join(flags_for(name, args, seed))} --output {run}")
                continue
            # each in a new process: Accelerate's mixed precision is set once per process
            run_or_reuse("train_backbone", run, flags_for(name, args, seed), runs_root / "parity.log", "parity",
                         fresh_process=True)
            runs[seed][name] = run_row(run, name, args.data)
            print(f"[parity] {name} seed {seed}: test top-1 {100 * runs[seed][name]['test_accuracy']:.2f} %",
                  flush=True)
    if args.dry_run:
        return 0
    rows = summarize({seed: {name: row["test_accuracy"] for name, row in by_name.items()}
                      for seed, by_name in runs.items()})
    for name, row in rows.items():
        row["flags"] = CONFIGS[name]
    import torch

    result = {"rows": rows, "runs": {str(seed): by_name for seed, by_name in runs.items()}, "meta": {
        "model": args.model, "epochs": args.epochs, "seeds": args.seed, "data": args.data,
        "tolerance_pp": TOLERANCE_PP, "reused": args.reuse,
        "reused_runs": [f"{name} seed {seed}" for seed in args.seed for name in args.only
                        if name in reused.get(seed, {})],
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": "python -m benchmarks.train_parity " + " ".join(argv if argv is not None else sys.argv[1:]),
    }}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "train_parity.json", json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    write_atomic(out / "train_parity.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
