"""A user's released 200-epoch ResNet-56 against the same repository's released ResNet-20/32/44, through
``ofas_wrap.compare`` (issues 15 and 25).

A thin script over :func:`ofas_wrap.compare.compare`, on ``../shared/data/pretrained/akamaster-cifar10/`` (the
user's class and checkpoints, option-A shortcuts) and the lossless ``cifar10-png.tar.gz``:

* ``original``: the released ResNet-56, given as the user gives it (``--model resnet.py:resnet56 --weights``);
* ``static_resnetD``: the released shallower ResNets (``--static-depths``), as released, and with
  ``--static-finetune`` also fine-tuned like the other methods (``static_resnetD_ft``);
* compare's fine-tuned methods from the ResNet-56, at one budget (``--epochs`` of fine-tuning) with distillation
  from it for every one (``--distill-weight``, ``--distill-tau``): ``depth_prune``, ``channel_prune`` (with
  Torch-Pruning), ``ofas_e2e`` / ``ofas_rl`` (``--method-args``, then RL with ``--rl-args`` for ``--rl-share`` of the
  budget) with the controls ``fixed_subset`` / ``shuffled`` / ``random_rates``, and ``early_exit``;
* the latency targets: the released ResNet-44's and ResNet-32's batch-1 latency (``--targets-static``), judged as
  measured in the same interleaved timing as every row.

Held-out data (issue 15 item 7): the released models saw all 50,000 training images, so every choice (T, blocks,
pruning ratio, exit threshold) is made on a fixed, seeded half of the test split (``--val-from test --val-size 0.5``)
and everything is reported on the other half. Latency: batch 1 and a server batch, ``--runtime torchscript`` (the
option-A ``LambdaLayer`` is scripted through its ``torch.fx`` trace; a model that still does not script is timed
eager and its row says so in ``runtime``) or ``eager``, ``--threads`` intra-op threads, interleaved rounds. Keep the
machine otherwise idle while it runs (pause a background training with ``kill -STOP``).

    python -m benchmarks.pretrained --work ../runs/pretrained --out docs/results                  # 1 epoch, 3 seeds
    python -m benchmarks.pretrained --epochs 5 --static-finetune --int8 --work ../runs/compare56 --out docs/results \\
        --name compare_resnet56                                                                      # issue 25 item 5
    python -m benchmarks.pretrained --smoke --work /tmp/w --out /tmp/o                               # the plumbing

Writes ``OUT/NAME.json`` (compare's rows: ``method``, ``target``, ``seed``, ``threshold``, ``top1``, ``latency_ms``,
``chosen``, ``adaptive_gates``, ...; ``meta`` with the verdict per target), ``OUT/NAME.md`` and ``OUT/NAME.png``
(``--name``, default ``pretrained``). Run folders in ``--work`` are reused when complete, so a stopped run continues.

Changed when it became a script over compare (issue 25): T is chosen per latency target instead of at
``--target-cut`` of the FLOPs (gone); RL always runs (``--rl-args`` gives its flags, ``--rl-share`` its part of the
budget); ``--common-args`` is gone (``--lr``, ``--distill-weight`` and ``--distill-tau`` hold for every fine-tuned
method; ``--freeze-bn`` is in the default ``--method-args``); the ``original_finetuned`` row and ``--skip
finetune_control`` are gone (depth pruning and the fine-tuned static networks get the same fine-tune; ``--skip``
leaves out compare's methods); ``--static-finetune`` rows are ``static_resnetD_ft``; ``--control-val-images`` is gone;
the rows carry compare's keys (no ``mflops``, ``train_seconds`` or ``timed_as``; ``runtime`` instead).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
RELEASED = REPO.parent / "shared" / "data" / "pretrained" / "akamaster-cifar10"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-png.tar.gz"
CHECKPOINTS = {20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th", 44: "resnet44-014dd654.th",
               56: "resnet56-4bfd9763.th"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # what these checkpoints were trained with (their README)
# OFAS's recipe on a fully trained model (issue 10's terms), fixed before the runs it was judged by: BatchNorm
# statistics protected, sampled gates pulled to a 60 % execution rate per gate, an information term against a fixed
# pattern (the learning rate and the distillation are compare's, the same for every method)
METHOD_ARGS = ("--freeze-bn --gate-sampling bernoulli --gate-bias-init 1.5 --head-lr 0.05 --skip-weight 0 "
               "--target-rate 0.6 --info-weight 0.05")
SKIPPABLE = ("depth_prune", "channel_prune", "ofas", "early_exit")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--released", default=str(RELEASED), help="folder of resnet.py and the .th checkpoints")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--work", default=str(REPO.parent / "runs" / "pretrained"))
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    parser.add_argument("--name", default="pretrained", help="the report's files: OUT/NAME.json, .md, .png")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=1.0,
                        help="the fine-tune budget of every method, in epochs of the training images")
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--eval-subset", type=int, default=None, help="held-out / test images each (all: 5,000)")
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tune learning rate of every method")
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="bf16",
                        help="every fine-tune's autocast (with channels_last, the kept backbones' recipe; bf16 falls "
                             "back to fp32 where the CPU has no native bf16 kernels)")
    parser.add_argument("--distill-weight", type=float, default=1.0)
    parser.add_argument("--distill-tau", type=float, default=4.0)
    parser.add_argument("--method-args", default=METHOD_ARGS, help="OFAS's e2e flags")
    parser.add_argument("--rl-args", default="", help="OFAS's RL flags (e.g. '--policy-loss blockdrop')")
    parser.add_argument("--rl-share", type=float, default=0.2, help="share of the budget's steps for RL")
    parser.add_argument("--thresholds", default=None, help="OFAS's T sweep (default: compare's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latency-samples", type=int, default=40)
    parser.add_argument("--latency-runs", type=int, default=15)
    parser.add_argument("--latency-rounds", type=int, default=3,
                        help="every row is timed once per round, the order rotating; a row's latency is the median "
                             "over the rounds (slow stretches of the machine fall on every row alike)")
    parser.add_argument("--runtime", choices=["torchscript", "eager"], default="torchscript",
                        help="what is timed: the TorchScript export (a deployment's runtime) or the eager model")
    parser.add_argument("--skip", nargs="*", default=[], choices=SKIPPABLE, help="leave compare's methods out")
    parser.add_argument("--static-depths", type=int, nargs="+", default=[20, 32, 44], choices=[20, 32, 44],
                        help="the released shallower ResNets")
    parser.add_argument("--targets-static", type=int, nargs="+", default=None, choices=[20, 32, 44],
                        help="the released ResNets whose measured latency are the targets (default: 44 and 32 of "
                             "--static-depths, else the deepest of them)")
    parser.add_argument("--static-finetune", action="store_true",
                        help="also fine-tune the released ResNet-20/32/44 like the other methods (static_resnetD_ft; "
                             "the rule's curve stays the released models')")
    parser.add_argument("--int8", action="store_true",
                        help="INT8 rows beside the float ones (compare --int8: onnxruntime, batch 1, calibrated on "
                             "--calib-images training images)")
    parser.add_argument("--calib-images", type=int, default=256)
    parser.add_argument("--smoke", action="store_true",
                        help="a plumbing check of a minute: a few steps, 64 images, 1 seed, the ResNet-20 alone as "
                             "the static network and the target")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.train_subset, args.eval_subset = args.seeds[:1], 64, 64
        args.thresholds, args.latency_samples, args.latency_runs, args.latency_rounds = "0.3,0.5,0.7", 2, 2, 1
        args.static_depths, args.targets_static = [20], None
    if args.epochs <= 0:
        parser.error(f"--epochs must be positive, got {args.epochs}")
    if not 0.0 < args.rl_share < 1.0:
        parser.error(f"--rl-share must be in (0, 1), got {args.rl_share}")
    if args.targets_static is None:
        args.targets_static = [d for d in (44, 32) if d in args.static_depths] or [max(args.static_depths)]
    missing = [d for d in args.targets_static if d not in args.static_depths]
    if missing:
        parser.error(f"--targets-static {missing}: name released ResNets of --static-depths {args.static_depths}")
    return args


def compare_argv(args: argparse.Namespace) -> list[str]:
    """The one ``compare`` command of the journey."""
    released = Path(args.released)
    argv = ["--model", f"{released}/resnet.py:resnet56", "--weights", str(released / CHECKPOINTS[56]),
            "--trust-remote-code", "--mean", *map(str, MEAN), "--std", *map(str, STD), "--in-chans", "3",
            "--dataset", args.data, "--val-from", "test", "--val-size", "0.5", "--split-seed", "0",
            "--lr", str(args.lr), "--mixed-precision", args.mixed_precision,
            "--distill-weight", str(args.distill_weight), "--distill-tau", str(args.distill_tau),
            "--seeds", *map(str, args.seeds), f"--ofas-e2e-args={args.method_args}", f"--ofas-rl-args={args.rl_args}",
            "--ofas-rl-share", str(args.rl_share), "--runtime", args.runtime, "--threads", str(args.threads),
            "--latency-samples", str(args.latency_samples), "--latency-runs", str(args.latency_runs),
            "--latency-rounds", str(args.latency_rounds),
            "--methods", "original", "static", *[m for m in SKIPPABLE if m not in args.skip],
            "--targets-static", *[f"resnet{d}" for d in args.targets_static],
            "--output", args.out, "--report-name", args.name, "--work", str(Path(args.work).resolve())]
    for depth in args.static_depths:
        argv += ["--static", f"resnet{depth}={released}/resnet.py:resnet{depth}@{released / CHECKPOINTS[depth]}"]
    if args.static_finetune:
        argv.append("--finetune-static")
    if args.int8:
        argv += ["--int8", "--calib-images", str(args.calib_images)]
    for flag, value in (("--train-subset", args.train_subset), ("--eval-subset", args.eval_subset),
                        ("--thresholds", args.thresholds)):
        if value:
            argv += [flag, str(value)]
    if args.smoke:
        argv += ["--budget-steps", "2", "--batch-size", "32", "--server-batch", "4", "--choice-images", "32",
                 "--exit-thresholds", "0:1:0.5", "--no-progress"]
    else:
        argv += ["--budget-epochs", str(args.epochs)]
    return argv


def main(argv: Optional[list[str]] = None) -> int:
    try:
        from benchmarks._runner import run_compare
    except ModuleNotFoundError as error:  # run as a script: its own folder is on sys.path, not the repository root
        if error.name != "benchmarks":
            raise
        from _runner import run_compare

    args = parse_args(argv)
    argv = compare_argv(args)
    return run_compare("pretrained", argv)


if __name__ == "__main__":
    sys.exit(main())
