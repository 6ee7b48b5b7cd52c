"""The paper's Table III setting on CIFAR-10, scaled to the machine: OFAS beside what a user picks instead, through
``ofas_wrap.compare``.

A thin script over :func:`ofas_wrap.compare.compare`. It finds (``--weights``: the kept backbones of
``benchmarks/weights/cifar10``) or trains (``recipes/train_backbone.py``, reused when complete) the backbones, then
runs one comparison:

* ``original``: the backbone ``cifar:resnetDEPTH`` (``--depth``, default 38; with ``--weights`` the kept
  ``resnetDEPTH+SUFFIX``, or ``--backbone NAME``);
* ``static_resnetD``: the shallower plain ResNets of ``--static-depths``, trained like the original: the static curve,
  and by default the latency targets (``--targets-static``: "at ResNet-32's measured latency, deploy ...");
* compare's fine-tuned methods, all from the original at one budget (``--e2e-epochs`` + ``--rl-epochs`` epochs of
  fine-tuning, the same steps, learning rate and teacher for every method): ``depth_prune``, ``channel_prune``
  (with Torch-Pruning installed), ``ofas_e2e`` / ``ofas_rl`` (``--e2e-args``, then RL for ``--rl-epochs`` of the
  budget) with the controls ``fixed_subset`` / ``shuffled`` / ``random_rates``, and ``early_exit``;
* every choice (T, blocks, ratio, exit threshold) per target on the validation carve (``--val-size`` images of
  train, never test); every row timed as deployed (TorchScript) in interleaved rounds; per target the method to
  deploy and the decision rule of docs/results.md (``meta.verdict.per_target`` / ``meta.verdict.rule``).

Writes ``OUT/cifar10.json`` (compare's rows: ``method``, ``target``, ``seed``, ``threshold``, ``top1``,
``latency_ms``, ``chosen``, ``adaptive_gates``, ...; ``meta``), ``OUT/cifar10.md`` and ``OUT/cifar10.png``. Run
folders go to ``WORK`` (the trained backbones) and ``WORK/runs`` (compare's fine-tunes); complete ones are reused, so
an interrupted benchmark continues where it stopped.

    python benchmarks/cifar10.py --weights benchmarks/weights/cifar10 --work runs/cifar10 --out docs/results
    python benchmarks/cifar10.py --epochs 200 --e2e-epochs 50 --rl-epochs 20 ...   # a GPU user's full schedule
    python benchmarks/cifar10.py --smoke --data DIR --work /tmp/w --out /tmp/o     # a seconds-long check

Changed when it became a script over compare (issue 25): T is chosen per latency target (the static networks'
latency, or ``--targets`` fractions of the original's) instead of within ``--max-drop`` points (gone); RL always
runs (``--skip rl`` is gone) and the paper's e2e recipe is no row of its own (``--paper-e2e-args`` and ``--skip
paper_e2e`` are gone: give ``--e2e-args ''`` for it); ``--skip`` leaves out compare's methods; ``--lr`` is the
learning rate of the backbones trained here and ``--finetune-lr`` that of every fine-tune (early exit included: it
fine-tunes the original instead of training from scratch); ``--distill-weight`` (default 0, none) distils every
fine-tuned method from the original; ``--control-val-images`` is gone; the rows have no ``train_seconds`` or
``mflops`` any more; the verdict is ``meta.verdict.rule`` per target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
# the lossless copy: published CIFAR-10 numbers are comparable on it (the JPEG copy costs about 10 pp; old tables
# used it: --data ../shared/data/cifar10-jpeg.tar.gz reproduces them)
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-png.tar.gz"
# What worked best on CIFAR-10 (docs/results.md): sampled gates, opened at the start, a fast head and a strong
# computation penalty (compare's default OFAS recipe)
E2E_ARGS = "--gate-sampling bernoulli --gate-bias-init 2 --head-lr 0.1 --skip-weight 1.0"
SKIPPABLE = ("static", "depth_prune", "channel_prune", "ofas", "early_exit")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR-10 imagefolder or its .tar.gz")
    parser.add_argument("--work", default="runs/cifar10", help="folder of the training runs (reused when complete)")
    parser.add_argument("--weights", default=None,
                        help="folder of kept trained backbones (benchmarks/weights/cifar10): resnetD, resnetD_sd, ... "
                             "are used instead of training the original and the static ResNets")
    parser.add_argument("--backbone", default=None,
                        help="which kept backbone is the original (default resnetDEPTH+SUFFIX; e.g. resnet38_sd)")
    parser.add_argument("--weights-suffix", default="",
                        help="with --weights: the kept backbones' name suffix, for the original's default name and "
                             "the static ResNets (e.g. _e60: resnet38_e60 against resnet20_e60, resnet26_e60, ...)")
    parser.add_argument("--out", default="docs/results", help="where cifar10.json / .md / .png go")
    parser.add_argument("--depth", type=int, default=38, help="the original, cifar:resnetDEPTH")
    parser.add_argument("--static-depths", type=int, nargs="*", default=[20, 26, 32])
    parser.add_argument("--targets", type=float, nargs="+", default=None,
                        help="latency targets as fractions of the original's (default: the static networks' latency)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of the backbones trained here")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate of the backbones trained here")
    parser.add_argument("--e2e-epochs", type=float, default=3)
    parser.add_argument("--rl-epochs", type=float, default=1)
    parser.add_argument("--finetune-lr", type=float, default=0.01, help="learning rate of every fine-tune")
    parser.add_argument("--distill-weight", type=float, default=0.0,
                        help="distillation from the original for every fine-tuned method (default 0: none)")
    parser.add_argument("--train-subset", type=int, default=None, help="training images (after the carve)")
    parser.add_argument("--val-size", type=int, default=5000, help="images carved from train for every choice")
    parser.add_argument("--eval-subset", type=int, default=None, help="validation / test images used")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="bf16",
                        help="every training's --mixed-precision; bf16 becomes fp32 where the CPU has no native bf16")
    parser.add_argument("--e2e-args", default=E2E_ARGS, help="flags of OFAS's e2e fine-tune")
    parser.add_argument("--rl-args", default="", help="extra flags of OFAS's RL fine-tune")
    parser.add_argument("--thresholds", default=None, help="OFAS's T sweep (default: compare's)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads while timing")
    parser.add_argument("--latency-samples", type=int, default=64)
    parser.add_argument("--latency-runs", type=int, default=5)
    parser.add_argument("--latency-rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of every fine-tuned method (the rule needs 2 or more)")
    parser.add_argument("--skip", nargs="*", default=[], choices=SKIPPABLE, help="leave compare's methods out")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long budget that checks the pipeline")
    args = parser.parse_args(argv)
    if args.weights_suffix and not args.weights:
        parser.error("--weights-suffix names kept backbones: give --weights too (e.g. --weights "
                     "benchmarks/weights/cifar10 --weights-suffix _e60)")
    if args.smoke:
        args.depth, args.static_depths, args.epochs, args.e2e_epochs, args.rl_epochs = 14, [8], 1, 1, 1
        args.train_subset, args.val_size, args.eval_subset, args.batch_size = 64, 32, 32, 32
        args.latency_samples, args.latency_runs, args.latency_rounds = 2, 3, 1
        args.thresholds, args.seeds = args.thresholds or "0.3,0.5,0.7", args.seeds[:1]
        # fp32: a smoke run checks the pipeline, and in a process that trained before (the test suite) Accelerate
        # keeps the first run's precision
        args.mixed_precision = "no"
    if ("static" in args.skip or not args.static_depths) and args.targets is None:
        parser.error("without static networks there are no static latencies to aim at: give --targets (fractions "
                     "of the original's latency, e.g. --targets 0.75 0.5)")
    return args


# ------------------------------------------------------------------------------------------------ the backbones
def _kept(args: argparse.Namespace, name: str) -> Optional[Path]:
    """A kept trained backbone of ``--weights`` (a run folder without checkpoints), or None without --weights."""
    if not args.weights:
        return None
    folder = Path(args.weights).resolve() / name
    if not ((folder / "metrics.json").is_file() and (folder / "model.safetensors").is_file()):
        raise SystemExit(f"--weights {args.weights}: {folder} is not a complete run folder (config.json, "
                         "model.safetensors, metrics.json); see benchmarks/weights/cifar10/README.md")
    return folder


def _trained(args: argparse.Namespace, depth: int, run: Path) -> Path:
    """``cifar:resnetDEPTH`` trained into ``run`` with ``recipes/train_backbone.py``'s function (reused when complete,
    resumed when partial)."""
    from ofas_wrap.training import main_guard, train_backbone

    if (run / "metrics.json").is_file() and (run / "model.safetensors").is_file():
        print(f"[cifar10] reuse {run}", flush=True)
        return run
    argv = ["--model", f"cifar:resnet{depth}", "--dataset", args.data, "--val-size", str(args.val_size),
            "--batch-size", str(args.batch_size), "--mixed-precision", args.mixed_precision, "--lr", str(args.lr),
            "--weight-decay", "5e-4", "--epochs", str(args.epochs), "--output", str(run), "--no-progress"]
    for flag, value in (("--train-subset", args.train_subset), ("--eval-subset", args.eval_subset)):
        if value:
            argv += [flag, str(value)]
    if (run / "checkpoints").is_dir():
        argv.append("--resume")
    print(f"[cifar10] recipes/train_backbone.py {' '.join(argv)}", flush=True)
    if main_guard(train_backbone, argv) != 0:
        raise SystemExit(f"training cifar:resnet{depth} into {run} failed (see above)")
    return run


def backbones(args: argparse.Namespace) -> tuple[Path, dict[str, Path]]:
    """The original's run folder and the static networks' (name -> folder): kept, or trained into ``--work``."""
    work = Path(args.work).resolve()
    original = _kept(args, args.backbone or f"resnet{args.depth}{args.weights_suffix}")
    if original is None:
        original = _trained(args, args.depth, work / "original")
    statics = {}
    if "static" not in args.skip:
        for depth in args.static_depths:
            statics[f"resnet{depth}"] = (_kept(args, f"resnet{depth}{args.weights_suffix}")
                                         or _trained(args, depth, work / f"static_resnet{depth}"))
    return original, statics


def compare_argv(args: argparse.Namespace, original: Path, statics: dict[str, Path]) -> list[str]:
    """The one ``compare`` command of the benchmark."""
    budget = args.e2e_epochs + args.rl_epochs
    argv = ["--init", str(original), "--dataset", args.data, "--val-size", str(args.val_size),
            "--budget-epochs", str(budget), "--ofas-rl-share", str(args.rl_epochs / budget),
            "--batch-size", str(args.batch_size), "--lr", str(args.finetune_lr),
            "--mixed-precision", args.mixed_precision, "--distill-weight", str(args.distill_weight),
            "--seeds", *map(str, args.seeds), f"--ofas-e2e-args={args.e2e_args}", f"--ofas-rl-args={args.rl_args}",
            "--threads", str(args.threads), "--latency-samples", str(args.latency_samples),
            "--latency-runs", str(args.latency_runs), "--latency-rounds", str(args.latency_rounds),
            "--methods", "original", *[m for m in SKIPPABLE if m not in args.skip],
            "--output", args.out, "--report-name", "cifar10", "--work", str(Path(args.work).resolve() / "runs")]
    argv += ["--targets", *map(str, args.targets)] if args.targets else ["--targets-static", *statics]
    for name, run in statics.items():
        argv += ["--static", f"{name}={run}"]
    for flag, value in (("--train-subset", args.train_subset), ("--eval-subset", args.eval_subset),
                        ("--thresholds", args.thresholds)):
        if value:
            argv += [flag, str(value)]
    if args.smoke:
        argv += ["--server-batch", "4", "--choice-images", "32", "--exit-thresholds", "0:1:0.5", "--no-progress"]
    return argv


def main(argv: Optional[list[str]] = None) -> int:
    try:
        from benchmarks._runner import run_compare
    except ModuleNotFoundError as error:  # run as a script: its own folder is on sys.path, not the repository root
        if error.name != "benchmarks":
            raise
        from _runner import run_compare

    args = parse_args(argv)
    original, statics = backbones(args)
    argv = compare_argv(args, original, statics)
    return run_compare("cifar10", argv)


if __name__ == "__main__":
    sys.exit(main())
