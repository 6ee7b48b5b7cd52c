"""``compare``: what should I deploy? Every method at one fine-tune budget, timed as deployed, judged per target.

    python recipes/compare.py --init runs/base --dataset DATA --budget-epochs 5 --targets 0.75 0.6 \\
        --static resnet20=cifar:resnet20@r20.safetensors --output runs/compare

From one trained model (``--init RUN``, or ``--model SPEC|FILE.py:FACTORY --weights FILE``) it builds, at the same
budget (``--budget-epochs`` / ``--budget-steps``, the same number of optimizer steps for every fine-tuned method)
and with the same teacher (distillation from the original for every fine-tuned method, or, with
``--distill-weight 0``, for none):

- ``original``: the model as given;
- ``static_NAME``: each static network the user names, as given, and ``static_NAME_ft`` fine-tuned like the others
  (``--finetune-static``);
- ``depth_prune``: for each latency target, the gated blocks to remove chosen on held-out images by measured cost
  (``_depth``), physically removed (``ofas_wrap.prune_blocks``), fine-tuned;
- ``channel_prune``: for each target, the inner-channel ratio found by bisection on measured latency (``_channel``,
  Torch-Pruning), fine-tuned;
- ``ofas_e2e`` / ``ofas_rl``: the project's best recipe (e2e, then RL for ``--ofas-rl-share`` of the budget), T chosen
  per target on held-out images; and its controls at ``ofas_rl``'s T: ``fixed_subset``, ``shuffled``,
  ``random_rates`` (same cost, no input dependence);
- ``early_exit``: BranchyNet-style exits after each stage (``_baselines.EarlyExitResNet``), the network and its exits
  fine-tuned together (``_early_exit``), the entropy threshold chosen per target on held-out images;
- with ``--int8``, ``METHOD_int8`` beside the original, each static network (as given) and each depth-pruned
  network: the same network quantized by onnxruntime's static INT8 quantization (``_int8``, calibrated on
  ``--calib-images`` training images, never test), run by onnxruntime at batch 1 as deployed; and
  ``ofas_rl_int8``, OFAS (RL) quantized once, its T chosen per target on the INT8 graph's measured latency (the stem
  and the head stay float32, so the gates are the float head's decisions).

Every choice (T, blocks, ratio) is made on the held-out split (``--val-size`` carved from train, or with ``--val-from
test`` the seeded first part of test); accuracy is reported on the rest of test. Every row is timed as deployed
(TorchScript, or the eager fallback named in ``runtime``) in interleaved rounds at batch 1 and at ``--server-batch``.
Per target, the verdict names the method to deploy: the most accurate row (mean over seeds) whose measured batch-1
latency is at or under the target. Writes ``OUTPUT/compare.{json,md,png}``; run folders go to ``--work`` (default
``OUTPUT/runs``) and a complete one is reused, a partial one resumed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .._atomic import atomic_path, write_atomic
from .._bench import latency_over_images
from .._factory import create_model
from .._model import OFASModel
from .._prune import prune_blocks
from ..training._errors import RunError
from ..training._evaluate import adaptivity, check_int8_request, parse_thresholds
from ._baselines import EarlyExitResNet, SkipNetStyle
from ._channel import INSTALL_HINT, channel_ratio_for_target, prune_channels
from ._depth import choose_keep, removal_harm
from ._early_exit import choose_exit, exit_sweep, finetune_early_exit, load_early_exit, parse_fractions
from ._int8 import INT8_RUNTIME, int8_row, quantize_for_rows, score_int8
from ._timing import InterleavedTimer, control_patterns, deployed, set_threshold
from ._verdict import decide, sentence

__all__ = ["METHODS", "compare_parser", "compare", "deploy_decision", "main"]

METHODS = ("original", "static", "depth_prune", "channel_prune", "ofas", "early_exit", "skipnet_style")
# the e2e recipe that reached the best CIFAR-10 trade-off (docs/results.md): sampled gates opened at the start, a fast
# head and a strong cost
OFAS_E2E_ARGS = "--gate-sampling bernoulli --gate-bias-init 2 --head-lr 0.1 --skip-weight 1.0"
CONTROLS = ("fixed_subset", "shuffled", "random_rates")


# ---------------------------------------------------------------------------------------------- flags
def compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare", description="What should I deploy? OFAS beside depth pruning, channel pruning, early exit and "
        "smaller networks, at one fine-tune budget, timed as deployed.")
    model = parser.add_argument_group("the trained model")
    model.add_argument("--init", default=None, help="run folder (or saved OFAS model) of the trained model")
    model.add_argument("--model", default=None, help="or a spec / FILE.py:FACTORY (with --weights)")
    model.add_argument("--weights", default=None, help="trained weights for --model")
    model.add_argument("--model-kwargs", type=json.loads, default=None, help="JSON object for the --model factory")
    model.add_argument("--trust-remote-code", action="store_true")
    data = parser.add_argument_group("data (choices on the held-out split, results on test)")
    data.add_argument("--dataset", required=True)
    data.add_argument("--in-chans", default="auto")
    data.add_argument("--val-size", type=float, default=0.1, help="held-out images: a fraction or a count")
    data.add_argument("--val-from", choices=["train", "test"], default="train")
    data.add_argument("--split-seed", type=int, default=0)
    data.add_argument("--train-subset", type=int, default=None)
    data.add_argument("--eval-subset", type=int, default=None)
    data.add_argument("--mean", type=float, nargs="+", default=None)
    data.add_argument("--std", type=float, nargs="+", default=None)
    budget = parser.add_argument_group("the one budget")
    budget.add_argument("--budget-epochs", type=float, default=None)
    budget.add_argument("--budget-steps", type=int, default=None)
    budget.add_argument("--batch-size", type=int, default=128)
    budget.add_argument("--lr", type=float, default=0.01, help="fine-tune learning rate of every method")
    budget.add_argument("--mixed-precision", choices=("no", "bf16"), default="no")
    budget.add_argument("--seeds", type=int, nargs="+", default=[0])
    budget.add_argument("--distill-weight", type=float, default=1.0,
                        help="distillation from the original for every fine-tuned method (0: none for any)")
    budget.add_argument("--distill-tau", type=float, default=4.0)
    what = parser.add_argument_group("what to compare")
    what.add_argument("--targets", type=float, nargs="+", default=None,
                      help="latency targets as fractions of the original's measured batch-1 latency")
    what.add_argument("--targets-ms", type=float, nargs="+", default=None, help="or in milliseconds")
    what.add_argument("--targets-static", nargs="+", default=None, metavar="NAME",
                      help="or the measured batch-1 latency of these --static networks (e.g. resnet32 resnet44)")
    what.add_argument("--static", action="append", default=[], metavar="NAME=SPEC[@WEIGHTS]|NAME=RUN",
                      help="a static network to compare (repeat): a spec with its weights, or a run folder")
    what.add_argument("--finetune-static", action="store_true",
                      help="also fine-tune each static network with the same teacher and budget (static_NAME_ft)")
    what.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                      help="default: all (channel_prune only where Torch-Pruning is installed)")
    what.add_argument("--ofas-runs", nargs=2, default=None, metavar=("E2E_RUN", "RL_RUN"),
                      help="OFAS already trained from this model at the same budget (e2e and RL run folders): used "
                           "for the ofas rows instead of training them (one seed)")
    what.add_argument("--ofas-e2e-args", default=OFAS_E2E_ARGS)
    what.add_argument("--ofas-rl-args", default="")
    what.add_argument("--ofas-rl-share", type=float, default=0.2, help="share of the budget's steps for RL")
    what.add_argument("--thresholds", default="0.02:0.98:0.02")
    what.add_argument("--exit-thresholds", default="0:1:0.05",
                      help="early exit's entropy thresholds swept on the held-out images, as fractions of "
                           "log(classes), the largest entropy (0: never leave early; 1: leave at the first exit)")
    what.add_argument("--calibrate-head", action=argparse.BooleanOptionalAction, default=True,
                      help="before the sweep, fold into each OFAS head the temperature that spreads its outputs "
                           "over (0.05, 0.95), chosen on the held-out images (ofas_wrap.calibrate_head): a head whose "
                           "outputs sit in a narrow band otherwise leaves the sweep one or two usable thresholds")
    what.add_argument("--choice-images", type=int, default=2000, help="held-out images that rank the blocks")
    what.add_argument("--no-controls", action="store_true")
    what.add_argument("--control-images", type=int, default=None,
                      help="held-out images on which fixed_subset's greedy search runs (default: all): the search "
                           "evaluates the held-out images about gates^2/2 times, hours on a 54-gate ResNet-110")
    what.add_argument("--int8", action="store_true",
                      help="also an INT8 row (onnxruntime, batch 1) beside the original, the static networks, depth "
                           "pruning and OFAS (RL): needs the onnx extra")
    what.add_argument("--calib-images", type=int, default=256,
                      help="training images that calibrate each INT8 row (never the test images)")
    timing = parser.add_argument_group("timing (as deployed)")
    timing.add_argument("--runtime", choices=("torchscript", "eager"), default="torchscript")
    timing.add_argument("--latency-samples", type=int, default=32, help="test images timed at batch 1")
    timing.add_argument("--latency-runs", type=int, default=5)
    timing.add_argument("--latency-rounds", type=int, default=3)
    timing.add_argument("--server-batch", type=int, default=32, help="the batch size a server would use (0: none)")
    timing.add_argument("--threads", type=int, default=1)
    out = parser.add_argument_group("output")
    out.add_argument("--output", required=True, help="folder of compare.json / .md / .png")
    out.add_argument("--work", default=None, help="run folders of the fine-tunes (default OUTPUT/runs)")
    out.add_argument("--report-name", default="compare", help="the report's files: OUTPUT/NAME.json, .md and .png")
    out.add_argument("--no-progress", action="store_true")
    return parser


def _parse_static(text: str) -> tuple[str, str, Optional[str]]:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise RunError(f"--static {text!r}: write NAME=SPEC[@WEIGHTS] (e.g. resnet20=cifar:resnet20@r20.safetensors) "
                       "or NAME=RUN_FOLDER")
    spec, _, weights = rest.partition("@")
    return name, spec, weights or None


def _check_args(args: argparse.Namespace) -> list[str]:
    """Every flag checked before anything runs; returns the methods to run."""
    if bool(args.init) == bool(args.model):
        raise RunError("give the trained model: --init RUN, or --model SPEC with --weights FILE")
    if args.init and args.weights:
        raise RunError("--init already holds the weights: leave out --weights")
    if (args.budget_epochs is None) == (args.budget_steps is None):
        raise RunError("give one budget: --budget-epochs E or --budget-steps S (the same for every method)")
    if (args.budget_epochs is not None and args.budget_epochs <= 0) or (args.budget_steps is not None
                                                                        and args.budget_steps < 1):
        raise RunError("the budget must be positive")
    if sum(t is not None for t in (args.targets, args.targets_ms, args.targets_static)) != 1:
        raise RunError("give the latency targets one way: --targets 0.75 0.6 (fractions of the original's latency), "
                       "--targets-ms 2.4 1.7, or --targets-static resnet32 (the latency of a --static network)")
    if args.targets is not None and not all(0 < t <= 1 for t in args.targets):
        raise RunError(f"--targets are fractions of the original's latency in (0, 1], got {args.targets}")
    if args.targets_ms is not None and not all(t > 0 for t in args.targets_ms):
        raise RunError(f"--targets-ms must be positive, got {args.targets_ms}")
    if not 0 < args.ofas_rl_share < 1:
        raise RunError(f"--ofas-rl-share must be in (0, 1), got {args.ofas_rl_share}")
    if args.distill_weight < 0 or args.distill_tau <= 0:
        raise RunError("--distill-weight must be >= 0 and --distill-tau > 0")
    if min(args.latency_samples, args.latency_runs, args.latency_rounds, args.threads) < 1:
        raise RunError("--latency-samples, --latency-runs, --latency-rounds and --threads must be >= 1")
    if args.ofas_runs:
        missing = [run for run in args.ofas_runs if not (Path(run) / "config.json").is_file()]
        if missing:
            raise RunError(f"--ofas-runs: {missing} hold no saved OFAS model (config.json)")
        if len(args.seeds) > 1:
            raise RunError("--ofas-runs gives one trained OFAS model: use one --seeds value with it")
    statics = [_parse_static(s) for s in args.static]
    if len({s[0] for s in statics}) != len(statics):
        raise RunError(f"--static names must differ, got {[s[0] for s in statics]}")
    unknown = [name for name in args.targets_static or () if name not in {s[0] for s in statics}]
    if unknown:
        raise RunError(f"--targets-static {unknown}: name networks given with --static (given: "
                       f"{[s[0] for s in statics] or 'none'})")
    if args.targets_static and len(set(args.targets_static)) != len(args.targets_static):
        raise RunError(f"--targets-static names a network twice: {args.targets_static}")
    if args.int8:
        check_int8_request(args.calib_images)
    if args.control_images is not None and args.control_images < 1:
        raise RunError(f"--control-images must be >= 1 (or left out for every held-out image), got "
                       f"{args.control_images}")
    if not args.report_name or any(c in args.report_name for c in "/\\") or args.report_name.startswith("."):
        raise RunError(f"--report-name {args.report_name!r}: give a plain file name stem, e.g. cifar10")
    try:
        parse_fractions(args.exit_thresholds)
    except ValueError as exc:
        raise RunError(f"--exit-thresholds: {exc}") from None
    methods = list(args.methods or METHODS)
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        if args.methods and "channel_prune" in args.methods:
            raise RunError(INSTALL_HINT) from None
        methods = [m for m in methods if m != "channel_prune"]
    if "skipnet_style" in methods and "ofas" not in methods:
        raise RunError("skipnet_style times SkipNet-style per-block gates at OFAS + RL's own decisions: add ofas to "
                       "--methods")
    if "static" in methods and not statics:
        methods.remove("static")
    args.statics = statics
    return methods


# ---------------------------------------------------------------------------------------------- building blocks
def _load_original(args: argparse.Namespace, info: Any) -> OFASModel:
    if args.init:
        return OFASModel.from_pretrained(args.init, trust_remote_code=args.trust_remote_code)
    try:
        return create_model(args.model, num_classes=info.num_classes, in_chans=info.channels,
                            backbone_kwargs=args.model_kwargs, checkpoint_path=args.weights,
                            input_size=(info.channels, *info.image_size))
    except (ValueError, TypeError) as exc:
        raise RunError(f"--model {args.model}: {exc}") from exc


def _load_static(name: str, spec: str, weights: Optional[str], info: Any, args: argparse.Namespace) -> nn.Module:
    try:
        if Path(spec).is_dir():
            model = OFASModel.from_pretrained(spec, trust_remote_code=args.trust_remote_code)
        else:
            model = create_model(spec, num_classes=info.num_classes, in_chans=info.channels, checkpoint_path=weights,
                                 input_size=(info.channels, *info.image_size))
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise RunError(f"--static {name}: {exc}") from exc
    return model.unwrap().eval()


def _check_same_task(name: str, module: nn.Module, size: Sequence[int], classes: int) -> None:
    try:
        with torch.no_grad():
            out = module.eval()(torch.zeros(1, *size))
    except Exception as exc:
        raise RunError(f"--static {name} does not take the model's input {tuple(size)}: {type(exc).__name__}: "
                       f"{exc}") from None
    if out.shape[-1] != classes:
        raise RunError(f"--static {name} predicts {out.shape[-1]} classes, the model {classes}: compare networks of "
                       "the same task")


def _accuracy(module: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    module.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch):
            correct += int((module(images[start:start + batch]).argmax(1) == labels[start:start + batch]).sum())
    return correct / max(len(labels), 1)


def _tensors(split: Any, limit: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data import make_loader

    images, labels = [], []
    for x, y in make_loader(split, 500):
        images.append(x)
        labels.append(y)
    x, y = torch.cat(images), torch.cat(labels)
    return (x[:limit], y[:limit]) if limit else (x, y)


def _ms(module: nn.Module, images: torch.Tensor, args: argparse.Namespace, threshold: Optional[float] = None) -> float:
    """A choice's latency: the deployed module on held-out images (one quick measurement, not the report's)."""
    timed, _ = deployed(module, args.runtime)
    if threshold is not None:
        set_threshold(timed, threshold)
    return latency_over_images(timed, images, runs=args.latency_runs, threads=args.threads)[0]


class _Runs:
    """Fine-tunes through the recipes' functions, one run folder each; a complete run is reused, a partial resumed."""

    def __init__(self, args: argparse.Namespace, work: Path, steps: int, normalization: dict[str, list[float]]):
        self.args, self.work, self.steps = args, work, steps
        self.common = ["--dataset", args.dataset, "--in-chans", str(args.in_chans), "--val-size",
                       _number(args.val_size), "--val-from", args.val_from, "--split-seed", str(args.split_seed),
                       "--batch-size", str(args.batch_size), "--mixed-precision", args.mixed_precision,
                       "--mean", *map(str, normalization["mean"]), "--std", *map(str, normalization["std"]),
                       "--log-every", "50"]
        if args.train_subset:
            self.common += ["--train-subset", str(args.train_subset)]
        if args.eval_subset:
            self.common += ["--eval-subset", str(args.eval_subset)]
        if args.no_progress:
            self.common.append("--no-progress")

    def _folder(self, name: str) -> tuple[Path, list[str]]:
        """The run folder of ``name`` and the flags that continue it: ``--resume`` from its last checkpoint, or
        ``--overwrite`` when a stop came before the first checkpoint (the folder holds its args.json and nothing
        trained; without this the rerun refused it and the comparison stopped there)."""
        from ..training._runs import latest_checkpoint

        run = self.work / name
        flags = ["--output", str(run)]
        if run.is_dir() and not self.complete(run):
            if latest_checkpoint(run) is not None:
                flags.append("--resume")
            elif any(run.iterdir()):
                flags.append("--overwrite")
        return run, flags

    @staticmethod
    def complete(run: Path) -> bool:
        return (run / "metrics.json").is_file() and (run / "model.safetensors").is_file()

    def finetune(self, name: str, module: nn.Module, teacher: nn.Module, seed: int) -> nn.Module:
        """``train_backbone`` on ``module`` (trained in place) with the teacher and the budget; returns it."""
        from ..training import train_backbone

        run, flags = self._folder(name)
        if self.complete(run):
            from safetensors.torch import load_file

            state = load_file(str(run / "model.safetensors"))
            prefix = "backbone."
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            return module.eval()
        argv = [*self.common, *flags, "--max-steps", str(self.steps), "--lr", str(self.args.lr), "--seed", str(seed)]
        if self.args.distill_weight > 0:
            argv += ["--distill-weight", str(self.args.distill_weight), "--distill-tau", str(self.args.distill_tau)]
        train_backbone(argv, model=module, teacher=teacher if self.args.distill_weight > 0 else None)
        return module.eval()

    def early_exit(self, name: str, network: EarlyExitResNet, teacher: nn.Module, seed: int) -> EarlyExitResNet:
        """The early-exit network (trained in place) fine-tuned with the teacher and the budget; returns it."""
        run, flags = self._folder(name)
        if self.complete(run):
            return load_early_exit(network, run)
        argv = [*self.common, *flags, "--max-steps", str(self.steps), "--lr", str(self.args.lr), "--seed", str(seed)]
        if self.args.distill_weight > 0:
            argv += ["--distill-weight", str(self.args.distill_weight), "--distill-tau", str(self.args.distill_tau)]
        finetune_early_exit(argv, network, teacher if self.args.distill_weight > 0 else None)
        return network.eval()

    def _load_ofas(self, run: Path, original: OFASModel) -> OFASModel:
        """An OFAS run folder. One trained here from a copy of the original's backbone records no backbone a registry
        can rebuild (a user's class, or any module handed to the recipe): it is rebuilt on a copy of the original's."""
        recorded = json.loads((run / "config.json").read_text()).get("backbone")
        backbone = copy.deepcopy(original.unwrap()) if recorded is None else None
        return OFASModel.from_pretrained(run, backbone=backbone, trust_remote_code=self.args.trust_remote_code)

    def ofas(self, original: OFASModel, seed: int) -> tuple[OFASModel, OFASModel]:
        """e2e then RL from a copy of the original: (e2e model, RL model), the RL phase ``--ofas-rl-share`` of the
        budget's steps."""
        from ..training import e2e_finetune, rl_finetune

        if self.args.ofas_runs:
            e2e_run, rl_run = self.args.ofas_runs
            return tuple(self._load_ofas(Path(run), original).eval() for run in (e2e_run, rl_run))
        rl_steps = max(1, round(self.steps * self.args.ofas_rl_share))
        e2e_steps = max(1, self.steps - rl_steps)
        e2e_run, e2e_flags = self._folder(f"ofas_e2e-seed{seed}")
        if self.complete(e2e_run):
            e2e = self._load_ofas(e2e_run, original)
        else:
            argv = [*self.common, *e2e_flags, "--max-steps", str(e2e_steps), "--lr", str(self.args.lr), "--seed",
                    str(seed), *self.args.ofas_e2e_args.split()]
            if self.args.distill_weight > 0:
                argv += ["--distill-weight", str(self.args.distill_weight), "--distill-tau",
                         str(self.args.distill_tau)]
            e2e = e2e_finetune(argv, model=copy.deepcopy(original.unwrap()))["model"]
        rl_run, rl_flags = self._folder(f"ofas_rl-seed{seed}")
        if self.complete(rl_run):
            rl = self._load_ofas(rl_run, original)
        else:
            argv = [*self.common, *rl_flags, "--max-steps", str(rl_steps), "--seed", str(seed),
                    *self.args.ofas_rl_args.split()]
            rl = rl_finetune(argv, model=copy.deepcopy(e2e))["model"]
        return e2e.eval(), rl.eval()


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and value >= 1 else str(value)


WORK_RECORD = "compare_work.json"  # what made the run folders of a --work folder
CHOICES = "compare_choices.json"  # the blocks and ratios the pruned runs were made for


def _work_record(args: argparse.Namespace, original: OFASModel, steps: int,
                 normalization: dict[str, list[float]]) -> dict[str, Any]:
    """What the fine-tunes of a comparison depend on: the original (its backbone weights' SHA-256; an OFAS head made
    by adaptify differs from run to run and no fine-tune starts from it), the data and split, the
    budget and the training settings. Run folders of one --work are reused only under the same record."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(original.unwrap().state_dict().items()):  # the backbone: the head is not trained on
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"original_sha256": digest.hexdigest(), "dataset": os.path.abspath(str(args.dataset)),
            "in_chans": str(args.in_chans), "normalization": normalization, "val_size": args.val_size,
            "val_from": args.val_from, "split_seed": args.split_seed, "train_subset": args.train_subset,
            "eval_subset": args.eval_subset, "budget_steps": steps, "batch_size": args.batch_size, "lr": args.lr,
            "mixed_precision": args.mixed_precision, "distill_weight": args.distill_weight,
            "distill_tau": args.distill_tau, "ofas_e2e_args": args.ofas_e2e_args, "ofas_rl_args": args.ofas_rl_args,
            "ofas_rl_share": args.ofas_rl_share}


def _claim_work(work: Path, record: dict[str, Any]) -> None:
    """Refuse a --work folder whose run folders another comparison made (they would be reused as if they were this
    one's); mark a new one with ``record``."""
    path = work / WORK_RECORD
    if path.is_file():
        earlier = json.loads(path.read_text())
        differ = sorted(key for key in set(record) | set(earlier) if record.get(key) != earlier.get(key))
        if differ:
            raise RunError(f"--work {work} holds the runs of another comparison ({', '.join(differ)} differ): give "
                           "another --work, or remove that folder to start over")
        return
    if work.is_dir() and any(entry.is_dir() for entry in work.iterdir()):
        raise RunError(f"--work {work} holds run folders but no {WORK_RECORD} (made before ofas-wrap recorded what "
                       "made them, or by another tool), so whether they are this comparison's cannot be checked: give "
                       "another --work, or remove them")
    work.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record, indent=2) + "\n")


class _Choices:
    """The pruning choices the run folders of --work were made for (``compare_choices.json``): a rerun of the same
    comparison (after a stop) keeps them, where choosing again on a noisy machine could give another network than
    the one its run folder trained. It also keeps what OFAS's choices were made on: each model's threshold sweep and
    fixed_subset's greedy search, hours a seed on a ResNet-56, which a rerun would otherwise redo."""

    def __init__(self, work: Path) -> None:
        self.path = work / CHOICES
        self.saved = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def get(self, key: str) -> Optional[dict[str, Any]]:
        return self.saved.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.saved[key] = json.loads(json.dumps(value))  # what is written, not the caller's object
        write_atomic(self.path, json.dumps(self.saved, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- the verdict
def deploy_decision(rows: Sequence[dict[str, Any]], target_ms: float) -> dict[str, Any]:
    """The method to deploy at ``target_ms``: the row group (method, target) with the best mean test top-1 over its
    seeds among those whose mean measured batch-1 latency is at or under the target; with the next best method.

    Example:
        >>> rows = [{"method": "a", "target": None, "top1": 0.9, "latency_ms": 2.0},
        ...         {"method": "b", "target": None, "top1": 0.8, "latency_ms": 1.0},
        ...         {"method": "c", "target": None, "top1": 0.95, "latency_ms": 3.0}]
        >>> d = deploy_decision(rows, 2.5)
        >>> d["deploy"], d["next_best"], d["sentence"]
        ('a', 'b', 'at <= 2.500 ms, deploy a: 90.00 % (next best b: 80.00 %)')
    """
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("latency_ms") is None or row.get("top1") is None or row.get("control") or row.get("reference"):
            continue
        groups.setdefault((row["method"], row.get("target")), []).append(row)
    candidates = []
    for (method, target), group in groups.items():
        latency = statistics.fmean(r["latency_ms"] for r in group)
        if latency <= target_ms:
            candidates.append({"method": method, "target": target, "top1": statistics.fmean(r["top1"] for r in group),
                               "latency_ms": latency, "seeds": len(group)})
    candidates.sort(key=lambda c: -c["top1"])
    if not candidates:
        return {"target_ms": target_ms, "deploy": None, "next_best": None, "candidates": [],
                "sentence": f"at <= {target_ms:.3f} ms, no method measured fits"}
    # the next best is another method (the same method at another target's choice says nothing new)
    best, rest = candidates[0], [c for c in candidates[1:] if c["method"] != candidates[0]["method"]]
    text = f"at <= {target_ms:.3f} ms, deploy {best['method']}: {100 * best['top1']:.2f} %"
    text += f" (next best {rest[0]['method']}: {100 * rest[0]['top1']:.2f} %)" if rest else " (nothing else fits)"
    return {"target_ms": target_ms, "deploy": best["method"], "next_best": rest[0]["method"] if rest else None,
            "candidates": candidates, "sentence": text}


# ---------------------------------------------------------------------------------------------- the run
def compare(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run the comparison; returns the report (also ``OUTPUT/compare.json``)."""
    from ..data import load_image_data
    from ..training import control_rows

    args = compare_parser().parse_args(argv)
    methods = _check_args(args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RunError("compare runs in one process (its timings need the whole machine): launch it with python, or "
                       "accelerate launch --num_processes 1")
    started = time.time()
    output = Path(args.output)
    work = Path(args.work) if args.work else output / "runs"
    normalization = {"mean": args.mean, "std": args.std} if args.mean and args.std else None
    if args.init and normalization is None:
        normalization = json.loads((Path(args.init) / "config.json").read_text()).get("normalization")
    val_size = int(args.val_size) if args.val_size >= 1 else args.val_size
    try:
        data = load_image_data(args.dataset, in_chans="auto" if args.in_chans == "auto" else int(args.in_chans),
                               val_size=val_size, train_subset=args.train_subset, eval_subset=args.eval_subset,
                               split_seed=args.split_seed, augment=False, normalization=normalization,
                               val_from=args.val_from)
    except (ValueError, FileNotFoundError) as exc:
        raise RunError(f"--dataset {args.dataset}: {exc}") from exc
    info = data.info
    normalization = {"mean": list(info.mean), "std": list(info.std)}
    original = _load_original(args, info).eval()
    size = tuple(original.config["input_size"])
    with torch.no_grad():
        classes = original.unwrap()(torch.zeros(1, *size)).shape[-1]
    if classes != info.num_classes:
        raise RunError(f"the model predicts {classes} classes but the dataset has {info.num_classes}")
    statics = {name: _load_static(name, spec, weights, info, args) for name, spec, weights in args.statics}
    for name, module in statics.items():
        _check_same_task(name, module, size, classes)
    val_x, val_y = _tensors(data.val)
    test_x, test_y = _tensors(data.test)
    if len(val_y) == 0 or len(test_y) == 0:
        raise RunError("the held-out split or the test split is empty: give --val-size > 0 and a dataset with a test "
                       "split")
    choice_x = val_x[:args.latency_samples]
    control_val = (val_x[:args.control_images], val_y[:args.control_images])  # fixed_subset's greedy search's

    # ---- the targets, and whether they can be reached at all
    full_ms = _ms(original.unwrap(), choice_x, args)
    if args.targets is not None:
        targets = [round(t * full_ms, 4) for t in args.targets]
        names = [f"{f:g}x" for f in args.targets]
    elif args.targets_static is not None:  # a static network's latency, measured here like the original's
        targets = [round(_ms(statics[name], choice_x, args), 4) for name in args.targets_static]
        names = list(args.targets_static)
    else:
        targets = list(args.targets_ms)
        names = [f"{t:g}ms" for t in targets]
    # run folders are named by the target as given (a fraction, a static network or ms), not by this run's
    # measurement, so that a rerun finds them
    labels = dict(zip(targets, names))
    floor_ms = None
    if original.num_gates:
        floor_ms = _floor_ms(original, choice_x, args)
        unreachable = [t for t in targets if t < floor_ms]
        if unreachable:
            raise RunError(f"target(s) {unreachable} ms are below {floor_ms:.3f} ms, the original with every gated "
                           f"block removed (its full depth takes {full_ms:.3f} ms here): give larger targets")
    steps_per_epoch = math.ceil(len(data.train) / args.batch_size)
    steps = args.budget_steps or max(1, round(args.budget_epochs * steps_per_epoch))
    runs = _Runs(args, work, steps, normalization)
    _claim_work(work, _work_record(args, original, steps, normalization))  # before any run folder is made or reused
    choices = _Choices(work)
    teacher = original.unwrap()
    rows: list[dict[str, Any]] = []
    timer = InterleavedTimer(test_x[:args.latency_samples], runs=args.latency_runs, threads=args.threads,
                             rounds=args.latency_rounds, server_batch=args.server_batch)
    runtimes: dict[str, str] = {}

    def add_row(key: str, module: Any, row: dict[str, Any], threshold: Optional[float] = None,
                patterns: Optional[torch.Tensor] = None, timed: Optional[Any] = None) -> None:
        if timed is None:
            timed, runtimes[key] = deployed(module, args.runtime)
        else:
            runtimes[key] = runtimes.get(row["method"], "torchscript")
        timer.add(key, timed, threshold, patterns)
        rows.append({"seed": None, "target": None, "threshold": None, "chosen": True, "adaptive_gates": None,
                     "precision": "fp32", **row, "_timing": key})

    def log(text: str) -> None:
        print(f"[compare] {text}", flush=True)

    calibration = None
    if args.int8:  # the images ofas-wrap export and evaluate.py calibrate on: a seeded sample of the training split
        from .._quantize import calibration_sample

        try:
            calibration = calibration_sample(data.train, args.calib_images, seed=args.split_seed)
        except ValueError as exc:
            raise RunError(f"--calib-images: {exc}") from None

    def add_int8_row(key: str, runner: Any, threshold: Optional[float], row: dict[str, Any], measured: Any) -> None:
        """Register ``runner`` (an INT8 graph) for batch-1 timing and add ``row`` with what ``measured`` scored."""
        timer.add(key, runner, threshold, server=False)
        runtimes[key] = INT8_RUNTIME
        rows.append({**row, "precision": "int8", "top1": measured.top1, "server_ms": None,
                     "gates_equal_float": measured.gates_equal_float,
                     "max_logit_difference_on_calibration": measured.max_logit_difference_on_calibration,
                     "_timing": key})

    def add_int8(module: nn.Module, row: dict[str, Any]) -> None:
        """The INT8 twin of the float row just added (``row``): the same network, at the same T."""
        if not args.int8:
            return
        method = f"{row['method']}_int8"
        try:
            measured = int8_row(module if isinstance(module, OFASModel) else _as_ofas(module, size), calibration,
                                row.get("threshold") or 0.0, test_x, test_y, threads=args.threads)
        except (RuntimeError, ValueError, TypeError) as exc:  # a network onnxruntime cannot export or quantize
            log(f"{method}: {exc}")
            rows.append(_note_row(method, row.get("target"), row.get("seed"), f"no INT8 row: {exc}", "int8"))
            return
        add_int8_row(f"{row['_timing']}-int8", measured.runner, None,
                     {**{k: v for k, v in row.items() if k not in ("val_top1", "choice_ms")}, "method": method},
                     measured)

    def add_ofas_int8(model: OFASModel, sweep: list[dict[str, Any]], seed: int) -> None:
        """OFAS (RL) in INT8 with its own T per target: the INT8 graph's latency measured at every T of the sweep on
        the held-out images; the held-out accuracy is the float sweep's (the INT8 graph takes the float head's gates;
        INT8 cost the kept models <= 0.06 pp, docs/results/int8.md)."""
        try:
            runner = quantize_for_rows(model, calibration, threads=args.threads)
        except (RuntimeError, ValueError, TypeError) as exc:
            log(f"ofas_rl_int8: {exc}")
            rows.extend(_note_row("ofas_rl_int8", t, seed, f"no INT8 row: {exc}", "int8") for t in targets)
            return
        int8_sweep = []
        for point in sweep:
            runner.threshold = point["threshold"]
            int8_sweep.append({**point, "choice_ms": latency_over_images(runner, choice_x, runs=args.latency_runs,
                                                                         threads=args.threads)[0]})
        for target in targets:
            fits = [p for p in int8_sweep if p["choice_ms"] <= target]
            if not fits:
                rows.append(_note_row("ofas_rl_int8", target, seed, "no threshold of the INT8 graph reaches the "
                                      "target on the held-out images", "int8"))
                continue
            best = max(fits, key=lambda p: (p["val_top1"], p["threshold"]))
            measured = score_int8(runner, model, best["threshold"], test_x, test_y)
            add_int8_row(f"ofas_rl_int8-{target}-{seed}", runner, best["threshold"], {
                "method": "ofas_rl_int8", "target": target, "seed": seed, "threshold": best["threshold"],
                "val_top1_float": best["val_top1"], "chosen": True, "adaptive_gates": best["adaptive_gates"],
                "distinct_patterns": best["distinct_patterns"], "blocks": measured.executed_gates,
                "choice_ms": best["choice_ms"]}, measured)

    log(f"original {full_ms:.3f} ms at batch 1 here; targets {targets} ms; budget {steps} steps")
    if "original" in methods:
        add_row("original", original.unwrap(), {"method": "original", "top1": _accuracy(original.unwrap(), test_x,
                                                                                      test_y)})
        add_int8(original, rows[-1])
    for name, module in statics.items():
        add_row(f"static_{name}", module, {"method": f"static_{name}", "top1": _accuracy(module, test_x, test_y)})
        add_int8(module, rows[-1])
        if args.finetune_static:
            for seed in args.seeds:
                tuned = runs.finetune(f"static_{name}_ft-seed{seed}", copy.deepcopy(module), teacher, seed)
                add_row(f"static_{name}_ft-{seed}", tuned, {"method": f"static_{name}_ft", "seed": seed,
                                                            "top1": _accuracy(tuned, test_x, test_y)})

    if "depth_prune" in methods and original.num_gates:
        from .._costs import measure_block_table

        harm = saving = None
        for target in targets:
            saved = choices.get(f"depth_prune-{labels[target]}")
            if saved is not None:  # the run folders below were made for this choice: a rerun keeps it
                keep, measured, removed = saved["keep"], saved["measured_ms"], saved["removed"]
                log(f"depth_prune at {target} ms: the choice of an earlier run of this comparison (--work)")
            else:
                if harm is None:
                    log("depth_prune: ranking the blocks on held-out images, timing what each removal saves")
                    harm = removal_harm(original, list(zip(val_x[:args.choice_images].split(250),
                                                           val_y[:args.choice_images].split(250))))
                    table = measure_block_table(original, choice_x[:1], runs=max(10, 4 * args.latency_runs),
                                                warmup=3, threads=args.threads)
                    saving = [float(b["saved_ms"]) for b in table["blocks"]]
                try:
                    keep, measured, removed = choose_keep(
                        harm.tolist(), saving, full_ms, target,
                        lambda pattern: _ms(prune_blocks(original, pattern), choice_x, args))
                except ValueError as exc:  # the block table's savings do not add up to the target (a noisy machine)
                    log(f"depth_prune at {target} ms: {exc}")
                    rows.append(_note_row("depth_prune", target, None, str(exc)))
                    continue
            log(f"depth_prune at {target} ms: remove {len(removed)} blocks, measured {measured:.3f} ms")
            if not any(keep) or measured > target:
                note = (f"with every gated block removed it still takes {measured:.3f} ms" if measured > target else
                        "it would remove every gated block")
                rows.append(_note_row("depth_prune", target, None, f"depth pruning cannot reach the target: {note}"))
                continue
            choices.put(f"depth_prune-{labels[target]}", {"keep": keep, "measured_ms": measured, "removed": removed})
            for seed in args.seeds:
                tuned = runs.finetune(f"depth_prune-{labels[target]}-seed{seed}", prune_blocks(original, keep),
                                      teacher, seed)
                add_row(f"depth_prune-{target}-{seed}", tuned, {
                    "method": "depth_prune", "target": target, "seed": seed, "top1": _accuracy(tuned, test_x, test_y),
                    "kept_blocks": keep, "blocks": sum(keep), "choice_ms": measured})
                add_int8(tuned, rows[-1])

    if "channel_prune" in methods and original.num_gates:
        example = choice_x[:1]
        for target in targets:
            saved = choices.get(f"channel_prune-{labels[target]}")
            if saved is not None:  # the run folders below were made for this ratio: a rerun keeps it
                ratio, measured = saved["ratio"], saved["measured_ms"]
            else:
                try:
                    ratio, measured = channel_ratio_for_target(
                        lambda r: _ms(prune_channels(original, r, example), choice_x, args), target)
                except ValueError as exc:
                    log(f"channel_prune at {target} ms: {exc}")
                    rows.append(_note_row("channel_prune", target, None, str(exc)))
                    continue
                choices.put(f"channel_prune-{labels[target]}", {"ratio": ratio, "measured_ms": measured})
            log(f"channel_prune at {target} ms: ratio {ratio:.3f}, measured {measured:.3f} ms")
            for seed in args.seeds:
                tuned = runs.finetune(f"channel_prune-{labels[target]}-seed{seed}",
                                      prune_channels(original, ratio, example), teacher, seed)
                add_row(f"channel_prune-{target}-{seed}", tuned, {
                    "method": "channel_prune", "target": target, "seed": seed, "ratio": round(ratio, 4),
                    "top1": _accuracy(tuned, test_x, test_y), "choice_ms": measured})

    ofas_rows: dict[float, list[dict[str, Any]]] = {t: [] for t in targets}
    control_list: dict[float, list[dict[str, Any]]] = {t: [] for t in targets}
    if "ofas" in methods and original.num_gates:
        thresholds = parse_thresholds(args.thresholds)
        for seed in args.seeds:
            e2e, rl = runs.ofas(original, seed)
            for method, model in (("ofas_e2e", e2e), ("ofas_rl", rl)):
                if args.calibrate_head:
                    from .._calibration import calibrate_head

                    calibrate_head(model, val_x[:args.choice_images].split(250))
                scripted, runtimes[method] = deployed(model, args.runtime)  # once: the sweep's and the report's
                # a rerun after a stop keeps the sweep (the choices' data) and fixed_subset's greedy search, which
                # together took hours a seed on the ResNet-56's held-out half
                saved_sweep = choices.get(f"sweep-{method}-seed{seed}")
                if saved_sweep is not None and saved_sweep["thresholds"] == list(thresholds):
                    # its accuracies are kept; its latencies are measured again, beside the targets measured in this
                    # run: a sweep timed in an earlier session on a VM 1.5x faster or slower picked a T for another
                    # machine (issue 25's ResNet-56 rerun of session 21)
                    sweep = _retimed(saved_sweep["sweep"], scripted, choice_x, args)
                    log(f"{method} seed {seed}: the threshold sweep of an earlier run of this comparison (--work), "
                        "its latencies measured again")
                else:
                    sweep = _sweep(model, scripted, thresholds, val_x, val_y, choice_x, args)
                    choices.put(f"sweep-{method}-seed{seed}", {"thresholds": list(thresholds), "sweep": sweep})
                search: list = []  # fixed_subset's greedy search, shared by the targets (it extends in place)
                path_key = f"fixed_subset_path-seed{seed}"
                saved_path = choices.get(path_key) if method == "ofas_rl" else None
                if saved_path is not None and saved_path["images"] == len(control_val[1]):
                    search += [torch.tensor(pattern, dtype=torch.bool) for pattern in saved_path["path"]]
                skipnet = (_skipnet_style(model, seed, args, log) if method == "ofas_rl" and "skipnet_style" in methods
                           else None)
                if isinstance(skipnet, tuple):
                    runtimes["skipnet_style"] = skipnet[2]
                for target in targets:
                    fits = [s for s in sweep if s["choice_ms"] <= target]
                    if not fits:
                        rows.append(_note_row(method, target, seed,
                                              "no threshold reaches the target on the held-out images"))
                        continue
                    best = max(fits, key=lambda s: (s["val_top1"], s["threshold"]))
                    model.threshold = best["threshold"]
                    row = {"method": method, "target": target, "seed": seed, "threshold": best["threshold"],
                           "top1": _accuracy(model, test_x, test_y), "val_top1": best["val_top1"],
                           "adaptive_gates": best["adaptive_gates"], "distinct_patterns": best["distinct_patterns"],
                           "blocks": best["blocks"], "choice_ms": best["choice_ms"]}
                    add_row(f"{method}-{target}-{seed}", model, row, threshold=best["threshold"],
                            timed=scripted)
                    if method == "ofas_rl":
                        ofas_rows[target].append(rows[-1])
                        if skipnet is not None:
                            _add_skipnet_row(skipnet, model, row, test_x, test_y, timer.images, add_row, rows)
                        if not args.no_controls:
                            _controls(model, best["threshold"], target, seed, (test_x, test_y), control_val,
                                      timer.images, scripted, add_row, control_list, control_rows, search)
                if method == "ofas_rl" and search:
                    choices.put(path_key, {"images": len(control_val[1]), "path": [p.tolist() for p in search]})
                if method == "ofas_rl" and args.int8:
                    add_ofas_int8(model, sweep, seed)

    if "early_exit" in methods:
        try:
            EarlyExitResNet(original)  # the exits this model can have (shares its modules, changes nothing)
        except ValueError as exc:
            log(f"early_exit: {exc}")
            rows += [_note_row("early_exit", target, None, f"early exit cannot be built: {exc}") for target in targets]
        else:
            fractions = parse_fractions(args.exit_thresholds)
            for seed in args.seeds:
                network = runs.early_exit(f"early_exit-seed{seed}", EarlyExitResNet(copy.deepcopy(original)),
                                          teacher, seed)
                scripted, runtimes["early_exit"] = deployed(network, args.runtime)

                def measure(threshold: float, timed: Any = scripted) -> float:
                    set_threshold(timed, threshold)
                    return latency_over_images(timed, choice_x, runs=args.latency_runs, threads=args.threads)[0]
                # the threshold is chosen on the held-out split only; test images are read once it is fixed
                sweep = exit_sweep(network, fractions, val_x, val_y, measure)
                for target in targets:
                    best = choose_exit(sweep, target)
                    if best is None:
                        rows.append(_note_row("early_exit", target, seed,
                                              "no exit threshold reaches the target on the held-out images"))
                        continue
                    network.threshold = best["threshold"]
                    add_row(f"early_exit-{target}-{seed}", network, {
                        "method": "early_exit", "target": target, "seed": seed, "threshold": best["threshold"],
                        "top1": _accuracy(network, test_x, test_y), "val_top1": best["val_top1"],
                        "adaptive_gates": best["adaptive_gates"], "blocks": best["blocks"],
                        "exit_rates": best["exit_rates"], "threshold_fraction": best["fraction"],
                        "choice_ms": best["choice_ms"]}, threshold=best["threshold"], timed=scripted)
    log(f"timing {len(timer.jobs)} rows in {args.latency_rounds} interleaved rounds")
    results = timer.run()
    for row in rows:
        key = row.pop("_timing", None)
        if key is not None:
            row.update({k: round(v, 4) for k, v in results[key].items()})
            row["runtime"] = runtimes.get(key, runtimes.get(row["method"], "torchscript"))
    # a fractional target is judged against the original's latency in the same interleaved timing as every row (the
    # choices' quick measurements run under other conditions: the report's are the ones compared)
    reported = next((r["latency_ms"] for r in rows if r["method"] == "original" and r.get("latency_ms")), None)
    judged_targets = ([round(f * reported, 4) for f in args.targets] if args.targets is not None and reported
                      else list(targets))
    if args.targets_static is not None:  # the static network's own latency in the same interleaved timing
        measured = {r["method"]: r.get("latency_ms") for r in rows}
        judged_targets = [round(measured.get(f"static_{name}") or target, 4)
                          for name, target in zip(args.targets_static, targets)]
    decisions = []
    for choice_target, target_ms in zip(targets, judged_targets):
        decision = deploy_decision(rows, target_ms)
        decision["choice_target_ms"] = choice_target
        decisions.append(decision)
    verdict: dict[str, Any] = {"per_target": decisions}
    # the static curve: the networks as given (the original among them), not the fine-tuned copies
    static_points = sorted((r["latency_ms"], r["top1"]) for r in rows if r.get("latency_ms") is not None and (
        r["method"] == "original" or (r["method"].startswith("static_") and not r["method"].endswith("_ft")))
        and r.get("precision", "fp32") == "fp32")
    if any(r["method"].startswith("static_") for r in rows) and any(ofas_rows.values()):
        verdict["rule"] = {}
        for target, judged in ofas_rows.items():
            if judged:
                rule = decide(static_points, judged, control_list[target], "ofas_rl")
                verdict["rule"][str(target)] = {**rule, "sentence": sentence(rule)}
    for decision in decisions:
        depth = next((c for c in decision["candidates"] if c["method"] == "depth_prune"), None)
        ofas = next((c for c in decision["candidates"] if c["method"] == "ofas_rl"), None)
        if depth and ofas:
            decision["ofas_minus_depth_prune_pp"] = round(100 * (ofas["top1"] - depth["top1"]), 3)
    meta = {"model": args.init or args.model, "dataset": args.dataset, "budget_steps": steps,
            "budget_epochs": args.budget_epochs if args.budget_epochs is not None else steps / steps_per_epoch,
            "targets_ms": targets, "judged_targets_ms": judged_targets, "target_labels": list(labels.values()),
            "full_ms": full_ms, "floor_ms": floor_ms, "seeds": args.seeds,
            "methods": methods, "distill_weight": args.distill_weight, "distill_tau": args.distill_tau,
            "held_out": {"from": args.val_from, "images": len(val_y)}, "test_images": len(test_y),
            "timing": {"runtime": args.runtime, "threads": args.threads, "samples": int(min(args.latency_samples,
                                                                                            len(test_y))),
                       "runs": args.latency_runs, "rounds": args.latency_rounds, "server_batch": args.server_batch},
            "ofas_e2e_args": None if args.ofas_runs else args.ofas_e2e_args, "ofas_rl_share": args.ofas_rl_share,
            "ofas_runs": args.ofas_runs, "calibrate_head": args.calibrate_head,
            "control_images": None if args.no_controls else len(control_val[1]),
            "exit_thresholds": args.exit_thresholds if "early_exit" in methods else None,
            "int8": {"calibration_images": int(calibration.shape[0]), "from": "train", "runtime": INT8_RUNTIME,
                     "batch": 1} if args.int8 else None,
            "seconds": round(time.time() - started, 1), "verdict": verdict,
            "machine": _machine(), "command": _command(argv),
            "not_compared": ["a trained SkipNet (ofas_wrap.compare.SkipNetStyle's gate networks have no training "
                             "recipe here; " + ("the skipnet_style rows time its controller at OFAS's decisions)"
                                                if "skipnet_style" in methods else
                                                "--methods skipnet_style times its controller at OFAS's decisions)")]}
    report = {"rows": rows, "meta": meta}
    _write(report, output, args.report_name)
    for decision in decisions:
        log(decision["sentence"])
    return report


def _note_row(method: str, target: Optional[float], seed: Optional[int], note: str,
              precision: str = "fp32") -> dict[str, Any]:
    """The row of a method that has no network at a target, with every key of a measured row and why."""
    return {"method": method, "target": target, "seed": seed, "threshold": None, "top1": None, "latency_ms": None,
            "chosen": False, "adaptive_gates": None, "precision": precision, "note": note}


def _as_ofas(module: nn.Module, size: Sequence[int]) -> OFASModel:
    """A plain network (static, depth-pruned) as an OFAS model at T = 0: every gate open, so its ONNX export (and
    INT8 graph) computes the same network, plus the tiny head and one ``If`` per block."""
    from .._model import adaptify

    return adaptify(copy.deepcopy(module).eval(), input_size=tuple(size), threshold=0.0).eval()


def _floor_ms(original: OFASModel, images: torch.Tensor, args: argparse.Namespace) -> float:
    """The original with every gated block removed: no method that removes or skips its blocks gets under this."""
    return _ms(prune_blocks(original, [False] * original.num_gates), images, args)


def _sweep(model: OFASModel, timed: Any, thresholds: Sequence[float], val_x: torch.Tensor, val_y: torch.Tensor,
           choice_x: torch.Tensor, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per T on the held-out split: top-1, blocks, adaptivity, and the latency of ``timed``, the deployed model (the
    choices' data)."""
    from ..training import predictions_under_patterns

    model.eval()
    with torch.no_grad():
        _, probs = model.gate_probabilities(val_x)
    # each image's class under its own gates at T; from one T to the next only the images whose gates changed run
    # again (the same forward, with those gates forced): on the ResNet-56's 5,000 held-out images with saturated
    # heads the whole-split pass per T took about 30 s, 25 minutes for one model's 49 thresholds (session 19)
    predicted = torch.full((val_x.shape[0],), -1, dtype=torch.long)
    made_with: Optional[torch.Tensor] = None
    sweep = []
    for threshold in thresholds:
        model.threshold = threshold
        gates = probs >= threshold
        changed = torch.ones(len(gates), dtype=torch.bool) if made_with is None else (gates != made_with).any(1)
        if bool(changed.any()):
            predicted[changed] = predictions_under_patterns(model, val_x[changed], gates[changed], 500)
        made_with = gates
        sweep.append({"threshold": threshold, "val_top1": int((predicted == val_y).sum()) / max(len(val_y), 1),
                      "blocks": float(gates.float().sum(1).mean()), **adaptivity(probs, threshold)})
    return _retimed(sweep, timed, choice_x, args)  # each T's latency, timed once its accuracy is known


def _retimed(sweep: Sequence[dict[str, Any]], timed: Any, choice_x: torch.Tensor,
             args: argparse.Namespace) -> list[dict[str, Any]]:
    """``sweep`` with each threshold's ``choice_ms`` measured now on ``timed``, the deployed model: the latencies a
    T is chosen by must come from the same machine state as the targets they are compared with."""
    retimed = []
    for point in sweep:
        set_threshold(timed, point["threshold"])
        retimed.append({**point, "choice_ms": latency_over_images(timed, choice_x, runs=args.latency_runs,
                                                                  threads=args.threads)[0]})
    return retimed


SKIPNET_NOTE = ("SkipNet-style per-block gates (FFGate-I sized, untrained) forced to OFAS + RL's decisions on each "
                "image: the cost of deciding block by block; its accuracy is OFAS's at those decisions")


def _skipnet_style(model: OFASModel, seed: int, args: argparse.Namespace, log: Any) -> Any:
    """``(SkipNetStyle wrapping model, its deployed module, runtime)``, or a string saying why it cannot be built."""
    torch.manual_seed(seed)  # the gate networks' initial weights: they are timed, never trained
    try:
        wrapper = SkipNetStyle(model).eval()
    except ValueError as exc:  # outer shortcuts that carry values across blocks
        log(f"skipnet_style: {exc}")
        return f"SkipNet-style gates cannot wrap this model: {exc}"
    timed, runtime = deployed(wrapper, args.runtime)
    return wrapper, timed, runtime


def _add_skipnet_row(skipnet: Any, model: OFASModel, ofas_row: dict[str, Any], test_x: torch.Tensor,
                     test_y: torch.Tensor, timed_images: torch.Tensor, add_row: Any, rows: list) -> None:
    """The skipnet_style row beside an ofas_rl row: the SkipNet-style controller at OFAS's decisions (at the row's T)
    on every test image (accuracy, measured) and every timed image (latency)."""
    target, seed, threshold = ofas_row["target"], ofas_row["seed"], ofas_row["threshold"]
    if isinstance(skipnet, str):
        rows.append(_note_row("skipnet_style", target, seed, skipnet))
        return
    from ..training import accuracy_under_patterns

    wrapper, timed, _ = skipnet

    def decisions(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model.gate_probabilities(chunk)[1] >= threshold for chunk in images.split(500)]).cpu()
    row = {"method": "skipnet_style", "target": target, "seed": seed, "threshold": threshold,
           "top1": accuracy_under_patterns(wrapper, test_x, test_y, decisions(test_x), 500),
           "blocks": ofas_row.get("blocks"),
           "adaptive_gates": ofas_row.get("adaptive_gates"), "reference": True, "note": SKIPNET_NOTE}
    add_row(f"skipnet_style-{target}-{seed}", wrapper, row, patterns=decisions(timed_images), timed=timed)


def _controls(model, threshold, target, seed, test, val, timed_images, scripted, add_row, control_list,
              control_rows, search: list) -> None:
    """fixed_subset / shuffled / random_rates at OFAS's T: same cost, no input dependence; timed with their gates
    forced on ``timed_images`` (the timer's), one pattern per image."""
    with torch.no_grad():
        _, probs = model.gate_probabilities(timed_images)
    own = probs >= threshold
    for control in control_rows(model, threshold, test, val, seeds=(seed,), path=search):
        patterns = control_patterns(control, own)
        row = {"method": control["method"], "target": target, "seed": seed, "threshold": threshold,
               "top1": control["top1"], "control": True}
        add_row(f"{control['method']}-{target}-{seed}", model, row, threshold=threshold, patterns=patterns,
                timed=scripted)
        control_list[target].append(row)


# ---------------------------------------------------------------------------------------------- the report
def _write(report: dict[str, Any], output: Path, name: str = "compare") -> None:
    output.mkdir(parents=True, exist_ok=True)
    write_atomic(output / f"{name}.json", json.dumps(report, indent=2, default=_jsonable) + "\n")
    write_atomic(output / f"{name}.md", _markdown(report))
    _plot(report, output / f"{name}.png")


def _machine() -> str:
    import platform

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def _command(argv: Optional[Sequence[str]]) -> str:
    import shlex
    import sys

    return "compare " + shlex.join(list(argv) if argv is not None else sys.argv[1:])


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _markdown(report: dict[str, Any]) -> str:
    meta, timing = report["meta"], report["meta"]["timing"]
    lines = [f"# What to deploy: {meta['model']} on {meta['dataset']}", "",
             f"Budget: {meta['budget_steps']} fine-tune steps ({meta['budget_epochs']:.3g} epochs) for every method, "
             f"distillation weight {meta['distill_weight']}; seeds {meta['seeds']}. Choices on "
             f"{meta['held_out']['images']} held-out images ({meta['held_out']['from']}), results on "
             f"{meta['test_images']} test images. Latency: {timing['runtime']}, {timing['threads']} thread(s), batch 1 "
             f"(mean over {timing['samples']} images of each one's median, {timing['rounds']} interleaved rounds) and "
             f"batch {timing['server_batch']}. The original takes {meta['full_ms']:.3f} ms here.", "", "## Verdict", ""]
    for decision in meta["verdict"]["per_target"]:
        extra = decision.get("ofas_minus_depth_prune_pp")
        lines.append(f"- {decision['sentence']}" + ("" if extra is None else
                                                     f"; OFAS (RL) - depth pruning: {extra:+.2f} pp"))
    for target, rule in meta["verdict"].get("rule", {}).items():
        lines.append(f"- At the {target} ms target, by the rule of docs/results.md: {rule['sentence']}")
    lines += ["", "## Rows", "",
              f"| method | target (ms) | seed | T | test top-1 | batch-1 ms | batch-{timing['server_batch']} ms | "
              "blocks | adaptive gates | runtime or note |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def cell(value: Any, fmt: str = "{}", scale: float = 1.0) -> str:
        return "" if value is None else fmt.format(value * scale if scale != 1.0 else value)
    for row in report["rows"]:
        lines.append(" | ".join([
            f"| {row['method']}", cell(row.get("target")), cell(row.get("seed")), cell(row.get("threshold"), "{:.2f}"),
            cell(row.get("top1"), "{:.2f} %", 100.0), cell(row.get("latency_ms"), "{:.3f}"),
            cell(row.get("server_ms"), "{:.2f}"), cell(row.get("blocks"), "{:.1f}"), cell(row.get("adaptive_gates")),
            f"{cell(row.get('runtime') or row.get('note'))} |"]))
    if any(row["method"] == "skipnet_style" for row in report["rows"]):
        lines += ["", f"`skipnet_style`: {SKIPNET_NOTE}. A reference for the paper's Table I, never a method to deploy "
                      "(left out of the verdict)."]
    if meta.get("int8"):
        lines += ["", f"INT8 rows (`_int8`): onnxruntime static quantization calibrated on "
                      f"{meta['int8']['calibration_images']} training images, the stem and the head in float32 (so "
                      "the gates are the float head's decisions; `gates_equal_float` in the JSON says on what share of "
                      "the test images they were), run by onnxruntime at batch 1 only (no server batch)."]
    if meta.get("not_compared"):
        lines += ["", "Not compared here: " + "; ".join(meta["not_compared"]) + "."]
    if meta.get("machine"):
        lines += ["", f"Machine: {meta['machine']}. Command: `{meta['command']}`"]
    return "\n".join(lines) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.5, 4.5))
    axes = figure.add_subplot()
    methods = sorted({r["method"] for r in report["rows"] if r.get("latency_ms") is not None})
    colours, markers = matplotlib.colormaps["tab20"].colors, "os^DvP<X>*h"  # 220 distinct pairs: ~20 methods
    for index, method in enumerate(methods):
        points = [(r["latency_ms"], 100 * r["top1"]) for r in report["rows"]
                  if r["method"] == method and r.get("latency_ms") is not None and r.get("top1") is not None]
        if points:
            xs, ys = zip(*sorted(points))
            axes.plot(xs, ys, "" if len(points) == 1 or method.startswith("static") else "-", label=method,
                      marker=markers[index % len(markers)], color=colours[index % len(colours)])
    for target in report["meta"].get("judged_targets_ms") or report["meta"]["targets_ms"]:
        axes.axvline(target, color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel(f"batch-1 latency (ms, {report['meta']['timing']['runtime']})")
    axes.set_ylabel("test top-1 (%)")
    axes.set_title("What to deploy: accuracy against measured latency")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: never over a point
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=120)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..training import main_guard

    return main_guard(compare, argv)
