"""The flags every recipe shares (data, budget, run folder, optimiser, speed): :func:`build_parser`."""

from __future__ import annotations

import argparse
import math
from typing import Union

from ._schedule import SCHEDULES
from ._speed import MIXED_PRECISION_CHOICES

__all__ = ["build_parser"]


# ------------------------------------------------------------------------------------------------ flags
def _val_size(text: str) -> Union[int, float]:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"--val-size must be >= 0, got {text}")
    return value if value < 1 else int(value)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def _in_chans(text: str) -> str:
    if text not in ("auto", "1", "3"):
        raise argparse.ArgumentTypeError(f"--in-chans must be auto, 1 or 3, got {text}")
    return text


def _tracker_name(value: str) -> str:
    """``--report-to``: none, all, or one of accelerate's trackers (``accelerate.utils.LoggerType``)."""
    from accelerate.utils import LoggerType

    names = ["none", *(str(t.value) for t in LoggerType)]
    if value not in names:
        raise argparse.ArgumentTypeError(f"unknown tracker {value!r}; choose from {', '.join(names)} (accelerate's "
                                         "trackers; 'all' = every one installed)")
    return value


def build_parser(phase: str, description: str = "", *, lr: float = 0.1, epochs: int = 30, batch_size: int = 128,
                 weight_decay: float = 5e-4) -> argparse.ArgumentParser:
    """The flags every recipe shares (data, budget, run folder, optimiser); recipes add their own.

    Example:
        >>> args = build_parser("x").parse_args(["--dataset", "fashion-mnist", "--output", "runs/x", "--epochs", "2"])
        >>> args.epochs, args.max_steps, args.resume
        (2, None, False)
    """
    parser = argparse.ArgumentParser(description=description or f"ofas-wrap recipe: {phase}",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=None,
                      help="Hub id, image folder (train/ test/), archive of one, save_to_disk dir, IDX dir, or "
                           "'fashion-mnist' (Debian's package); default: the --init run's dataset")
    data.add_argument("--dataset-config", default=None, help="configuration name of a Hub dataset")
    data.add_argument("--in-chans", type=_in_chans, default=None,
                      help="auto (the images' own), 1 (grey) or 3 (grey expanded); default: auto or the --init run's")
    data.add_argument("--val-size", type=_val_size, default=None,
                      help="validation images carved from train (count, or fraction < 1), used to choose T; "
                           "default 0.1")
    data.add_argument("--val-from", choices=["train", "test"], default=None,
                      help="train: carve --val-size from the training split (default); test: choose on a fixed, "
                           "seeded half of the test split and report on the other half, for a model that saw every "
                           "training image (released checkpoints)")
    data.add_argument("--split-seed", type=int, default=None, help="seed of the validation carve and subsets (0)")
    data.add_argument("--image-size", type=int, default=None, help="resize images to N x N")
    data.add_argument("--train-split", default=None, help="name of the training split (train)")
    data.add_argument("--test-split", default=None, help="name of the test split (test, validation, ...)")
    data.add_argument("--image-column", default=None)
    data.add_argument("--label-column", default=None)
    data.add_argument("--no-augment", action="store_true", help="no pad-4 random crop + flip on the training split")
    data.add_argument("--mean", type=float, nargs="+", default=None,
                      help="input normalisation mean per channel, as the --weights were trained with (default: the "
                           "training split's own, or the --init model's)")
    data.add_argument("--std", type=float, nargs="+", default=None, help="input normalisation std per channel")

    budget = parser.add_argument_group("budget (the same flags in every recipe)")
    budget.add_argument("--epochs", type=_positive, default=epochs)
    budget.add_argument("--max-steps", type=_positive, default=None,
                        help="total optimizer steps; overrides --epochs (the schedule spans exactly these steps)")
    budget.add_argument("--train-subset", type=_positive, default=None, help="use only N training images")
    budget.add_argument("--eval-subset", type=_positive, default=None, help="use only N validation / test images")
    budget.add_argument("--batch-size", type=_positive, default=batch_size, help="per process")
    budget.add_argument("--eval-batch-size", type=_positive, default=256)
    budget.add_argument("--seed", type=int, default=0)

    run = parser.add_argument_group("run folder")
    run.add_argument("--output", required=True, help="run folder: model, args.json, metrics.json, checkpoints/")
    run.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    run.add_argument("--overwrite", action="store_true", help="delete an existing --output first")
    run.add_argument("--checkpoint-every", type=_non_negative, default=200,
                     help="save a checkpoint every N steps (0: only at epoch ends)")
    run.add_argument("--keep-checkpoints", type=_positive, default=2)
    run.add_argument("--stop-at-step", type=_positive, default=None,
                     help="checkpoint and stop after this global step, as if interrupted (the schedule is unchanged)")
    run.add_argument("--report-to", type=_tracker_name, default="none", metavar="TRACKER",
                     help="none, all (every tracker installed), or one of accelerate's: tensorboard, wandb, trackio, "
                          "comet_ml, mlflow, aim, clearml, dvclive, swanlab (local logs go to OUTPUT/logs)")
    run.add_argument("--log-every", type=_positive, default=10, help="record train metrics every N steps")
    run.add_argument("--eval-every-epoch", action=argparse.BooleanOptionalAction, default=True,
                     help="evaluate on the validation split at each epoch end")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--cpu", action="store_true", help="force the CPU even when a GPU is present")
    run.add_argument("--trust-remote-code", action="store_true",
                     help="let an --init folder whose backbone comes from your own factory (file.py:FACTORY) run "
                          "that code to rebuild it")

    optim = parser.add_argument_group("optimiser (SGD with momentum)")
    optim.add_argument("--lr", type=_finite, default=lr)
    optim.add_argument("--momentum", type=_finite, default=0.9)
    optim.add_argument("--weight-decay", type=_finite, default=weight_decay)
    optim.add_argument("--schedule", choices=list(SCHEDULES), default="cosine",
                       help="cosine, linear (to zero), step or constant, over the global optimizer steps")
    optim.add_argument("--milestones", type=float, nargs="+", default=[0.5, 0.75],
                       help="for --schedule step: fractions of the run where the lr is divided by 10")
    optim.add_argument("--warmup-steps", type=_non_negative, default=0)
    optim.add_argument("--grad-clip", type=_finite, default=0.0, help="clip the gradient norm (0: off)")
    optim.add_argument("--gradient-accumulation-steps", type=_positive, default=1, metavar="K",
                       help="one optimizer step per K batches (accelerate's accumulate): the effective batch is K x "
                            "--batch-size x processes; steps, schedules, --max-steps and checkpoints count optimizer "
                            "steps")

    speed = parser.add_argument_group("speed (docs/training.md#speed; benchmarks/train_speed.py measures them)")
    speed.add_argument("--mixed-precision", choices=list(MIXED_PRECISION_CHOICES), default=None,
                       help="bf16 autocast (as accelerate launch --mixed_precision bf16); on a CPU without native "
                            "bf16 kernels the run says so and stays in fp32. Default: accelerate launch's, else no")
    speed.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                       help="channels_last memory format for the model and the batches (same results, faster on "
                            "CPU)")
    speed.add_argument("--compile", action="store_true",
                       help="torch.compile the model for training (on failure: a message and eager)")
    parser.set_defaults(phase=phase)
    return parser
