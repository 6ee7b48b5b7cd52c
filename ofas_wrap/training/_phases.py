"""The three training phases of the recipes, as importable functions (the ``recipes/*.py`` scripts call them).

- :func:`train_backbone`: plain supervised training of the backbone (SGD + momentum, cosine or step schedule,
  optional label smoothing); the run folder holds it as an OFAS model at T = 0 (every block runs).
- :func:`e2e_finetune`: backbone + a fresh OFAS head trained end to end with straight-through gates (Section
  IV-A), plain cross-entropy plus an optional computation penalty (``--skip-weight``).
- :func:`rl_finetune`: the RL phase of Section IV-B (Eq. 5-10), see :mod:`ofas_wrap.rl`.

Each takes ``argv`` like the command line and returns the run summary (also in ``OUTPUT/metrics.json``).

Example:
    >>> from ofas_wrap import training
    >>> args = training.rl_parser().parse_args(["--init", "runs/e2e", "--output", "runs/rl"])
    >>> args.flip_prob, args.gamma1, args.gamma2, args.keep_weight, args.policy_loss
    (0.1, 0.3, 0.9, 0.9, 'paper')
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._config import OFASConfig, check_threshold
from .._costs import COST_KINDS, gate_costs, read_block_table
from .._factory import create_model
from .._gating import sampled_straight_through_gates, straight_through_gates
from .._model import OFASModel, adaptify
from ..data import DataInfo, make_loader
from . import rl
from ._errors import RunError
from ._evaluate import evaluate_classifier
from ._flags import build_parser
from ._objectives import distillation_loss, gate_information, rate_hinge_loss, target_rate_loss
from ._runs import read_run
from ._schedule import ramp_factor
from ._speed import StochasticDepth, recalibrate_batchnorm
from ._trainer import Trainer

__all__ = [
    "backbone_parser",
    "e2e_parser",
    "rl_parser",
    "train_backbone",
    "e2e_finetune",
    "rl_finetune",
    "DEFAULT_SKIP_WEIGHT",
    "DEFAULT_FREEZE_BN",
    "DEFAULT_RL_HEAD_LR",
]

# Defaults chosen by measurement (docs/training.md gives the numbers and the commands).
DEFAULT_SKIP_WEIGHT = 0.3
DEFAULT_FREEZE_BN = False
DEFAULT_RL_HEAD_LR = None


# ---------------------------------------------------------------------------------------------- parsers
def _add_head_args(parser: argparse.ArgumentParser, threshold: float) -> None:
    group = parser.add_argument_group("OFAS head")
    group.add_argument("--variant", choices=OFASConfig.VARIANTS, default=OFASConfig.variant,
                       help="OFAS-I (2 FC) or OFAS-II (3 FC); auto = II above 50 layers, as in the paper")
    group.add_argument("--threshold", type=float, default=threshold, help="T of Eq. 1 used while training, in [0, 1)")
    group.add_argument("--no-gate-downsample", action="store_true",
                       help="leave the blocks with a projection shortcut always on")
    group.add_argument("--hidden-act", choices=OFASConfig.HIDDEN_ACTS, default=OFASConfig.hidden_act,
                       help="activation between the head's FC layers (none in the paper)")
    group.add_argument("--gate-bias-init", type=float, default=OFASConfig.gate_bias_init,
                       help="initial bias of the head's last FC (e.g. 2 opens every gate at first)")
    group.add_argument("--head-pool-grid", type=int, default=OFASConfig.pool_grid, metavar="G",
                       help="the head pools the stem's output on a G x G grid (1: the paper's global pool; 2 gives "
                            "the head 4x the inputs: benchmarks/head_probe.py measures what each holds)")


def _add_user_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("your own model (docs/training.md#bring-your-own-resnet)")
    group.add_argument("--model-kwargs", type=_json_object, default=None,
                       help="keyword arguments of the --model factory, a JSON object (e.g. '{\"depth\": 56}')")
    group.add_argument("--weights", default=None,
                       help="trained weights for --model: .safetensors, or a torch.save state dict (read with "
                            "weights_only=True; 'state_dict'/'model' wrappers and a 'module.' prefix are handled)")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--model-kwargs is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--model-kwargs must be a JSON object, got {text}")
    return value


def _build_user_model(args: argparse.Namespace, info: DataInfo, **adaptify_kwargs: Any) -> OFASModel:
    """``--model`` (+ ``--model-kwargs``, ``--weights``) at the dataset's image size; errors are RunErrors."""
    adaptify_kwargs.setdefault("input_size", (info.channels, *info.image_size))
    try:
        model = create_model(args.model, num_classes=info.num_classes, in_chans=info.channels,
                             backbone_kwargs=args.model_kwargs, checkpoint_path=args.weights, **adaptify_kwargs)
    except (ValueError, TypeError) as exc:
        raise RunError(f"--model {args.model}: {exc}") from exc
    _check_classes(model, info)
    return model


def _adapt_given(given: nn.Module, info: DataInfo, **adaptify_kwargs: Any) -> OFASModel:
    """A model object handed to a phase in Python: adapt it at the dataset's size (an OFASModel: its backbone)."""
    if not isinstance(given, nn.Module):
        raise RunError(f"model= must be a torch.nn.Module, got {type(given).__name__}")
    backbone = given.unwrap() if isinstance(given, OFASModel) else given
    adaptify_kwargs.setdefault("input_size", (info.channels, *info.image_size))
    adapted = adaptify(backbone, **adaptify_kwargs)
    if isinstance(given, OFASModel) and given.config.get("backbone"):
        adapted.config["backbone"] = given.config["backbone"]
    _check_classes(adapted, info)
    return adapted


def backbone_parser() -> argparse.ArgumentParser:
    """Flags of ``recipes/train_backbone.py``."""
    parser = build_parser("train_backbone", "Train a backbone with plain supervised learning (no OFAS yet).",
                          lr=0.1, epochs=30)
    parser.add_argument("--model", default="cifar:resnet20",
                        help="backbone spec: cifar:resnetDEPTH, timm:NAME, torchvision:NAME, or your own factory "
                             "path/to/file.py:FACTORY or package.module:FACTORY")
    _add_user_model_args(parser)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--variant", choices=OFASConfig.VARIANTS, default=OFASConfig.variant,
                        help="the (untrained) OFAS head saved with the backbone; e2e_finetune builds its own")
    parser.add_argument("--drop-path", type=float, default=0.0,
                        help="stochastic depth (Huang et al. 2016): block l of L is dropped with probability "
                             "l / L * P; a dropped block is not computed. Trains a backbone that tolerates skips")
    parser.add_argument("--drop-path-mode", choices=["batch", "sample"], default="batch",
                        help="one drop pattern per batch (fastest) or per image")
    teach = parser.add_argument_group("distillation (fine-tuning a smaller network from a trained one)")
    teach.add_argument("--teacher", default=None,
                       help="run folder (or saved OFAS model) of a trained network whose full-depth backbone, "
                            "frozen, is the teacher; needs --distill-weight > 0")
    teach.add_argument("--distill-weight", type=float, default=0.0,
                       help="weight of the KL to the teacher at --distill-tau (x tau^2), added to the cross-entropy")
    teach.add_argument("--distill-tau", type=float, default=4.0)
    return parser


def e2e_parser() -> argparse.ArgumentParser:
    """Flags of ``recipes/e2e_finetune.py``."""
    parser = build_parser("e2e_finetune", "Train backbone + OFAS head end to end (straight-through gates).",
                          lr=0.01, epochs=10)
    parser.add_argument("--init", default=None, help="run folder of train_backbone (or any saved OFAS model)")
    parser.add_argument("--model", default=None,
                        help="backbone when there is no --init: a spec (cifar:resnet56, timm:NAME, ...) or your own "
                             "factory path/to/file.py:FACTORY or package.module:FACTORY; random weights unless "
                             "--weights")
    _add_user_model_args(parser)
    parser.add_argument("--keep-head", action="store_true", help="keep the --init model's OFAS head")
    parser.add_argument("--head-lr", type=float, default=None, help="learning rate of the head (default: --lr)")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--skip-weight", type=float, default=DEFAULT_SKIP_WEIGHT,
                        help="weight of the computation penalty (fraction of gated FLOPs or gates executed); 0 = "
                             "plain cross-entropy as in the reference code")
    parser.add_argument("--gate-sampling", choices=["threshold", "bernoulli"], default="threshold",
                        help="training gates: threshold = S_L >= T with a straight-through gradient (the paper); "
                             "bernoulli = G ~ Bernoulli(S_L), straight-through, and the penalty on the expected "
                             "cost: spreads the head's outputs so T becomes a smooth knob (docs/training.md)")
    _add_cost_table_arg(parser, "what the penalty counts")
    parser.add_argument("--skip-cost", choices=["flops", "gates"], default=None, help=argparse.SUPPRESS)
    extra = parser.add_argument_group("input-dependent gates (issue 10; off by default: the paper's recipe)")
    extra.add_argument("--target-rate", type=float, default=None,
                       help="pull each gate's batch-mean execution rate to this value (ConvNet-AIG)")
    extra.add_argument("--rate-weight", type=float, default=1.0, help="weight of --target-rate / --rate-bounds")
    extra.add_argument("--rate-bounds", type=float, nargs=2, default=None, metavar=("R_MIN", "R_MAX"),
                       help="keep each gate's execution rate inside [R_MIN, R_MAX] (a hinge, free in between)")
    extra.add_argument("--info-weight", type=float, default=0.0,
                       help="reward the mutual information between gates and images (penalises a fixed pattern "
                            "and a cliff); bits, summed over gates")
    extra.add_argument("--distill-weight", type=float, default=0.0,
                       help="distillation from the frozen full-depth starting backbone (KL at --distill-tau)")
    extra.add_argument("--distill-tau", type=float, default=4.0)
    extra.add_argument("--penalty-ramp", type=float, nargs=2, default=None, metavar=("START", "END"),
                       help="switch the gate terms (skip penalty, rate terms, information) on over training: "
                            "weight 0 before START, rising linearly to full at END (fractions of the steps). For "
                            "OFAS trained from random initialisation (--model without --weights), e.g. 0.1 0.5: "
                            "the network learns as a whole before the gates are asked to save")
    extra.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=DEFAULT_FREEZE_BN,
                       help="keep the backbone's BatchNorm layers in eval mode: the running statistics of a trained "
                            "backbone are neither used per batch nor shifted by sampled skip patterns (affine "
                            "weights still train); for fine-tuning a fully trained model")
    _add_head_args(parser, threshold=0.5)
    return parser


def rl_parser() -> argparse.ArgumentParser:
    """Flags of ``recipes/rl_finetune.py``; the RL constants default to the paper's values (Section IV-B)."""
    parser = build_parser("rl_finetune", "RL fine-tuning of the OFAS head (Section IV-B, Eq. 5-10).",
                          lr=0.001, epochs=5)
    parser.add_argument("--init", default=None,
                        help="run folder of e2e_finetune (a saved OFAS model); required on the command line")
    parser.add_argument("--threshold", type=float, default=None, help="T of Eq. 1 (default: the --init model's)")
    parser.add_argument("--head-lr", type=float, default=DEFAULT_RL_HEAD_LR,
                        help="learning rate of the head, l_r of Eq. 9 (default: --lr)")
    group = parser.add_argument_group("RL (paper defaults)")
    group.add_argument("--policy-loss", choices=["paper", "reinforce", "blockdrop"], default="paper",
                       help="paper: Eq. 9 with p of Eq. 10; reinforce: Bernoulli log-likelihood with a baseline; "
                            "blockdrop: per-image reward for saved cost only when the prediction stays correct, "
                            "self-critical baseline (the gates at T), bounded sampling (not the paper's: issue 10)")
    group.add_argument("--sampling", choices=["explore", "bernoulli"], default="explore",
                       help="explore: Eq. 5 (flip each head decision with --flip-prob); bernoulli: a ~ Bernoulli(S_L)")
    group.add_argument("--flip-prob", type=float, default=0.1, help="Eq. 5")
    group.add_argument("--beta", type=float, default=None, help="Eq. 6 step size (default 0.1 / n)")
    group.add_argument("--gamma1", type=float, default=0.3, help="Eq. 6 weight of the accuracy reward")
    group.add_argument("--gamma2", type=float, default=0.9, help="Eq. 6 discount of the next gate's reward")
    group.add_argument("--keep-weight", type=float, default=0.9, help="Eq. 10 p for an unchanged gate")
    group.add_argument("--flip-weight", type=float, default=0.1, help="Eq. 10 p for a flipped gate")
    group.add_argument("--policy-weight", type=float, default=1.0, help="weight of the policy loss")
    group.add_argument("--ce-weight", type=float, default=1.0,
                       help="weight of the backbone's cross-entropy under the sampled actions")
    group.add_argument("--baseline-momentum", type=float, default=0.9,
                       help="reinforce: running-mean baseline per gate")
    bd = parser.add_argument_group("blockdrop policy (--policy-loss blockdrop; Wu et al. 2018)")
    bd.add_argument("--alpha", type=float, default=0.8,
                    help="sample from alpha * S_L + (1 - alpha) * (1 - S_L): probabilities bounded to "
                         "[1 - alpha, alpha], so exploration never stops (1 = no bound)")
    bd.add_argument("--wrong-penalty", type=float, default=1.0,
                    help="reward of an image the sampled pattern gets wrong is -this (a correct one earns "
                         "1 - used_cost^2)")
    bd.add_argument("--entropy-weight", type=float, default=0.0, help="bonus on the policy's entropy (nats)")
    _add_cost_table_arg(bd, "what used_cost counts")
    group.add_argument("--freeze-backbone", action="store_true",
                       help="train only the head (implies --freeze-bn); by default the backbone keeps training with "
                            "cross-entropy under the sampled actions, as in the reference implementation")
    group.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None,
                       help="keep BatchNorm running statistics fixed during RL (random skip patterns shift them); "
                            "default: on for --policy-loss blockdrop, else as the reference code")
    return parser


# ---------------------------------------------------------------------------------------------- helpers
def _sgd(groups: Sequence[tuple[Sequence[nn.Parameter], float]], args: argparse.Namespace) -> torch.optim.SGD:
    param_groups = [{"params": [p for p in params if p.requires_grad], "lr": lr} for params, lr in groups]
    param_groups = [g for g in param_groups if g["params"]]
    if not param_groups:
        raise RunError("nothing to train: every parameter is frozen")
    return torch.optim.SGD(param_groups, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def _save(model: OFASModel, info: DataInfo) -> Any:
    datasets = [info.source] if info.kind == "hub" else None

    def save(run_dir: Path) -> None:
        model.save_pretrained(run_dir, class_names=info.class_names,
                              normalization={"mean": info.mean, "std": info.std}, datasets=datasets)
    return save


def _load_init(path: str, trust_remote_code: bool = False) -> tuple[OFASModel, dict[str, Any]]:
    run = read_run(path)
    run["path"] = Path(os.path.abspath(path))  # recorded in args.json: evaluate.py follows the chain from anywhere
    model = OFASModel.from_pretrained(run["path"], trust_remote_code=trust_remote_code)
    return model, run


def _check_classes(model: OFASModel, info: DataInfo) -> None:
    size = model.config["input_size"]
    model.eval()
    with torch.no_grad():
        out = model.unwrap()(torch.zeros(1, *size))
    if out.shape[-1] != info.num_classes:
        raise RunError(f"the --init model predicts {out.shape[-1]} classes but the dataset has {info.num_classes}")


class SampledGateForward(nn.Module):
    """One e2e forward with Bernoulli gates (``--gate-sampling bernoulli``), as a single ``nn.Module`` call so that
    DDP syncs head and backbone. Returns ``(logits, probs, gates)``; ``gates`` are the float straight-through
    samples of :func:`~ofas_wrap._gating.sampled_straight_through_gates`.
    """

    def __init__(self, model: OFASModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features, probs = self.model.gate_probabilities(x)
        gates = sampled_straight_through_gates(probs)
        self.model.last_probs, self.model.last_gates = probs.detach(), gates.detach() > 0.5
        return self.model.forward_from_stem(features, gates), probs, gates


def _ofas_eval(trainer: Trainer):
    def evaluate(module: nn.Module, loader) -> dict[str, float]:
        target = module.model if isinstance(module, (rl.PolicyRollout, SampledGateForward)) else module
        return evaluate_classifier(trainer.accelerator, target, loader)
    return evaluate


def _head_params(model: OFASModel) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    head = {id(p) for p in model.head.parameters()}
    rest = [p for p in model.parameters() if id(p) not in head]
    return list(model.head.parameters()), rest


# ----------------------------------------------------------------------------------------------- phases
BN_CALIBRATION_BATCHES = 50  # training batches that re-estimate BatchNorm statistics after stochastic depth


def _calibration_batches(trainer: Trainer):
    """Augmented training batches in a fixed order (their own seed: the run's RNG streams are not touched)."""
    return make_loader(trainer.data.train, trainer.args.batch_size, shuffle=True, seed=trainer.args.seed + 7919)


def train_backbone(argv: Optional[Sequence[str]] = None, model: Optional[nn.Module] = None,
                   teacher: Optional[nn.Module] = None) -> dict[str, Any]:
    """Plain supervised training of ``--model`` on ``--dataset``; saves it as an OFAS model at T = 0.

    ``model``: train this backbone (a plain ``nn.Module`` or an ``OFASModel``) instead of building ``--model``;
    its weights are trained in place. The returned summary holds the adapted model under ``"model"``.

    ``teacher`` (or ``--teacher RUN``) with ``--distill-weight w``: the loss is the cross-entropy plus ``w`` times
    the distillation loss to the frozen teacher (its full-depth backbone for an ``OFASModel``) at ``--distill-tau``:
    the fine-tune that ``ofas_wrap.compare`` gives every smaller network made from a trained one (a depth-pruned or
    channel-pruned copy, a static network).

    Example (the command line): ``python recipes/train_backbone.py --model cifar:resnet20 --dataset
    fashion-mnist --in-chans 1 --epochs 2 --output runs/base``
    """
    args = backbone_parser().parse_args(argv)
    if not 0.0 <= args.drop_path < 1.0:
        raise RunError(f"--drop-path must be in [0, 1), got {args.drop_path}")
    if args.distill_weight < 0 or args.distill_tau <= 0:
        raise RunError(f"--distill-weight must be >= 0 and --distill-tau > 0, got {args.distill_weight} and "
                       f"{args.distill_tau}")
    if teacher is not None and args.teacher:
        raise RunError("teacher= already gives the teacher: leave out --teacher")
    if (teacher is not None or args.teacher) and args.distill_weight == 0:
        raise RunError("a teacher is given but --distill-weight is 0: give --distill-weight (e.g. 1), or no teacher")
    if args.distill_weight > 0 and teacher is None and not args.teacher:
        raise RunError("--distill-weight needs a teacher: --teacher RUN (a trained run folder)")
    if args.teacher:
        teacher, _ = _load_init(args.teacher, args.trust_remote_code)
        args.teacher = str(Path(os.path.abspath(args.teacher)))
    if teacher is not None:
        teacher = (teacher.unwrap() if isinstance(teacher, OFASModel) else teacher)
        teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
    trainer = Trainer(args, "train_backbone", find_unused_parameters=args.drop_path > 0)
    if teacher is not None:
        teacher.to(trainer.accelerator.device)
    info = trainer.load_data().info
    user_model = model
    if user_model is None:
        model = _build_user_model(args, info, variant=args.variant, threshold=0.0)
    else:
        model = _adapt_given(user_model, info, variant=args.variant, threshold=0.0)
    backbone = model.unwrap()
    optimizer = _sgd([(list(backbone.parameters()), args.lr)], args)
    trained: nn.Module = backbone
    if args.drop_path > 0:
        if model.num_gates == 0:
            raise RunError(f"--drop-path: {args.model} has no block that can be skipped")
        trained = StochasticDepth(model, args.drop_path, mode=args.drop_path_mode, seed=args.seed,
                                  rank=trainer.accelerator.process_index)

    def step(module: nn.Module, batch) -> dict[str, Any]:
        images, labels = batch
        logits = module(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=args.label_smoothing)
        metrics = {}
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(images)
            distill = distillation_loss(logits, teacher_logits, args.distill_tau)
            metrics = {"ce": float(loss.detach()), "distill": float(distill.detach())}
            loss = loss + args.distill_weight * distill
        return {"loss": loss, "logits": logits, "targets": labels, "metrics": metrics}

    def evaluate(module: nn.Module, loader) -> dict[str, float]:
        if isinstance(module, StochasticDepth):  # full depth, BatchNorm statistics re-estimated at full depth
            full = recalibrate_batchnorm(copy.deepcopy(module.model.unwrap()), _calibration_batches(trainer),
                                         BN_CALIBRATION_BATCHES)
            return evaluate_classifier(trainer.accelerator, full, loader, ofas=False)
        return evaluate_classifier(trainer.accelerator, module, loader, ofas=False)

    model.threshold = 0.0
    save = _save(model, info)
    if isinstance(trained, StochasticDepth):
        plain_save = save

        def save(run_dir: Path) -> None:  # the saved backbone: BatchNorm statistics of the full-depth network
            recalibrate_batchnorm(backbone, _calibration_batches(trainer), BN_CALIBRATION_BATCHES)
            plain_save(run_dir)
    summary = trainer.fit(trained, optimizer, step, eval_fn=evaluate, save_fn=save,
                          config={"num_classes": info.num_classes})
    return {**summary, "model": model}


def _add_cost_table_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--cost-table", default="flops", metavar="{uniform,flops,PATH}",
                        help=f"{what}: uniform (every gate the same: the paper), flops (what a skip saves in FLOPs, "
                             "from the plan) or a block table PATH.json measured on the target device with "
                             "`ofas-wrap bench MODEL --block-table PATH.json` (milliseconds a skip saves)")


def _cost_table_arg(args: argparse.Namespace) -> Any:
    """The --cost-table value, its file read and checked before anything is written (--skip-cost: old name)."""
    if getattr(args, "skip_cost", None) is not None:
        warnings.warn("--skip-cost is deprecated: use --cost-table flops or --cost-table uniform (= gates)",
                      FutureWarning, stacklevel=3)
        args.cost_table = {"gates": "uniform"}.get(args.skip_cost, args.skip_cost)
    if args.cost_table in COST_KINDS:
        return args.cost_table
    try:
        return read_block_table(args.cost_table)
    except ValueError as error:
        raise RunError(str(error)) from None


def _gate_costs(model: OFASModel, cost: Any) -> Tensor:
    try:
        return gate_costs(model, cost)
    except ValueError as error:
        raise RunError(str(error)) from None


def e2e_finetune(argv: Optional[Sequence[str]] = None, model: Optional[nn.Module] = None) -> dict[str, Any]:
    """Train the backbone and a fresh OFAS head end to end with straight-through gates (Section IV-A).

    Loss: cross-entropy of the gated network (training mode: the hard 0/1 gates of Eq. 1 forward, the head's
    gradient through the straight-through estimator) plus ``--skip-weight`` times the executed fraction of the
    gated FLOPs (or gates), also straight-through. With ``--gate-sampling bernoulli`` the training gates are
    sampled, ``G ~ Bernoulli(S_L)`` (straight-through), and the penalty is the expected cost ``sum S_L * cost``.

    ``model``: start from this model object instead of ``--init`` / ``--model`` (a plain backbone, adapted with a
    fresh head, or an ``OFASModel``, whose head is kept with ``--keep-head``); trained in place. The returned
    summary holds the OFAS model under ``"model"``.

    Example: ``python recipes/e2e_finetune.py --init runs/base --variant I --epochs 2 --output runs/e2e``
    """
    args = e2e_parser().parse_args(argv)
    user_model = model
    try:
        check_threshold(args.threshold, "--threshold")
    except ValueError as exc:
        raise RunError(str(exc)) from None
    if args.skip_weight < 0:
        raise RunError(f"--skip-weight must be >= 0, got {args.skip_weight}")
    if args.target_rate is not None and not 0.0 <= args.target_rate <= 1.0:
        raise RunError(f"--target-rate must be in [0, 1], got {args.target_rate}")
    if args.rate_bounds is not None and not 0.0 <= args.rate_bounds[0] <= args.rate_bounds[1] <= 1.0:
        raise RunError(f"--rate-bounds must satisfy 0 <= R_MIN <= R_MAX <= 1, got {args.rate_bounds}")
    if min(args.rate_weight, args.info_weight, args.distill_weight) < 0 or args.distill_tau <= 0:
        raise RunError("--rate-weight, --info-weight and --distill-weight must be >= 0 and --distill-tau > 0")
    if args.penalty_ramp is not None and not 0.0 <= args.penalty_ramp[0] <= args.penalty_ramp[1] <= 1.0:
        raise RunError(f"--penalty-ramp must satisfy 0 <= START <= END <= 1 (fractions of training), got "
                       f"{args.penalty_ramp[0]} {args.penalty_ramp[1]}")
    if args.distill_weight > 0 and not (args.init or args.weights or user_model is not None):
        raise RunError("--distill-weight distils from the starting backbone, but --model without --weights starts "
                       "from random weights: give --init RUN or --weights FILE, or leave out --distill-weight")
    cost_table = _cost_table_arg(args)
    base, init = (None, None)
    if user_model is not None and (args.init or args.model):
        raise RunError("model= already gives the model: leave out --init / --model")
    if user_model is not None:
        if not isinstance(user_model, nn.Module):
            raise RunError(f"model= must be a torch.nn.Module, got {type(user_model).__name__}")
        base = user_model if isinstance(user_model, OFASModel) else None
    elif args.init:
        base, init = _load_init(args.init, args.trust_remote_code)
        args.init = str(init["path"])
    elif not args.model:
        raise RunError("give --init RUN (a trained backbone) or --model SPEC (with --weights FILE for trained "
                       "weights; random otherwise)")
    if args.init and (args.model or args.weights):
        raise RunError("--init already holds the model: leave out --model / --weights, or leave out --init")
    trainer = Trainer(args, "e2e_finetune", init_args=init.get("args") if init else None)
    channels = base.config["input_size"][0] if base is not None else None
    info = trainer.load_data(channels, base.config.get("normalization") if base is not None else None).info
    size = (info.channels, *info.image_size)
    head_kwargs = dict(variant=args.variant, threshold=args.threshold, gate_downsample=not args.no_gate_downsample,
                       hidden_act=args.hidden_act, gate_bias_init=args.gate_bias_init, input_size=size,
                       pool_grid=args.head_pool_grid)
    if user_model is not None and base is None:
        model = _adapt_given(user_model, info, **head_kwargs)
    elif base is None:
        model = _build_user_model(args, info, **head_kwargs)
    else:
        _check_classes(base, info)
        if args.keep_head:
            model = base
            model.threshold = args.threshold
        else:
            model = adaptify(base.unwrap(), **head_kwargs)
            model.config["backbone"] = base.config.get("backbone")
    model.train()
    head, rest = _head_params(model)
    optimizer = _sgd([(rest, args.lr), (head, args.head_lr or args.lr)], args)
    costs = _gate_costs(model, cost_table)
    teacher = None
    if args.distill_weight > 0:  # the starting backbone at full depth, frozen
        teacher = copy.deepcopy(model.unwrap()).eval().requires_grad_(False)

    sampled = args.gate_sampling == "bernoulli"

    def step(module: nn.Module, batch) -> dict[str, Any]:
        images, labels = batch
        if sampled:
            logits, probs, _ = module(images)
        else:
            logits = module(images)
        ce = F.cross_entropy(logits, labels, label_smoothing=args.label_smoothing)
        loss = ce
        metrics = {"ce": float(ce.detach())}
        # bernoulli: the expected cost (exact gradient); threshold: the executed cost, straight-through
        gates = probs if sampled else straight_through_gates(model.last_probs, model.gate_threshold)
        ramp = 1.0
        if args.penalty_ramp is not None:
            ramp = ramp_factor(trainer.state.global_step, trainer.total_steps, *args.penalty_ramp)
            metrics["penalty_ramp"] = ramp
        if args.skip_weight > 0:
            cost = (gates * costs.to(gates.device)).sum(dim=1).mean()
            loss = loss + ramp * args.skip_weight * cost
            metrics["cost"] = float(cost.detach())
        if args.target_rate is not None:
            rate = target_rate_loss(gates, args.target_rate)
            loss = loss + ramp * args.rate_weight * rate
            metrics["rate_loss"] = float(rate.detach())
        if args.rate_bounds is not None:
            hinge = rate_hinge_loss(gates, *args.rate_bounds)
            loss = loss + ramp * args.rate_weight * hinge
            metrics["rate_hinge"] = float(hinge.detach())
        if args.info_weight > 0:
            info = gate_information(probs if sampled else model.last_probs)
            loss = loss - ramp * args.info_weight * info
            metrics["gate_info_bits"] = float(info.detach())
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(images)
            distill = distillation_loss(logits, teacher_logits, args.distill_tau)
            loss = loss + args.distill_weight * distill
            metrics["distill"] = float(distill.detach())
        skip = 1.0 - float(model.last_gates.float().mean()) if model.num_gates else 0.0
        return {"loss": loss, "logits": logits, "targets": labels, "skip": skip, "metrics": metrics}

    summary = trainer.fit(SampledGateForward(model) if sampled else model, optimizer, step,
                          eval_fn=_ofas_eval(trainer), save_fn=_save(model, info),
                          train_mode_fn=rl.freeze_batchnorm_statistics if args.freeze_bn else None,
                          config={"num_classes": info.num_classes, "num_gates": model.num_gates,
                                  "variant": model.config["variant"]})
    return {**summary, "model": model}


class RunningMean:
    """A per-gate exponential moving average (the REINFORCE baseline), checkpointable."""

    def __init__(self, size: int, momentum: float) -> None:
        self.value = torch.zeros(size)
        self.momentum = momentum
        self.initialised = False

    def update(self, batch_mean: Tensor) -> None:
        batch_mean = batch_mean.detach().cpu().to(self.value.dtype)
        if not self.initialised:
            self.value = batch_mean.clone()
            self.initialised = True
        else:
            self.value = self.momentum * self.value + (1 - self.momentum) * batch_mean

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "initialised": self.initialised}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.initialised = state["value"], state["initialised"]


def rl_finetune(argv: Optional[Sequence[str]] = None, model: Optional[OFASModel] = None) -> dict[str, Any]:
    """The RL phase of Section IV-B: exploration (Eq. 5), per-gate rewards (Eq. 6-8), policy loss (Eq. 9-10).

    Each step: the head's gates ``g`` at T, actions ``a`` = ``g`` with each gate flipped with probability
    ``--flip-prob``, the network run under ``a``; the head minimises the policy loss, and (unless
    ``--freeze-backbone``) the backbone minimises the cross-entropy under ``a``.

    ``model``: fine-tune this ``OFASModel`` object instead of loading ``--init`` (trained in place; then
    ``--dataset`` is needed). The returned summary holds it under ``"model"``.

    Example: ``python recipes/rl_finetune.py --init runs/e2e --epochs 1 --output runs/rl``
    """
    args = rl_parser().parse_args(argv)
    for name in ("flip_prob", "keep_weight", "flip_weight"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise RunError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    blockdrop = args.policy_loss == "blockdrop"
    if not 0.5 <= args.alpha <= 1.0 or args.wrong_penalty < 0 or args.entropy_weight < 0:
        raise RunError(f"--alpha must be in [0.5, 1], --wrong-penalty and --entropy-weight >= 0; got {args.alpha}, "
                       f"{args.wrong_penalty}, {args.entropy_weight}")
    if args.freeze_bn is None:
        args.freeze_bn = True if blockdrop else DEFAULT_FREEZE_BN
    if blockdrop and not (args.freeze_bn or args.freeze_backbone):
        raise RunError("--policy-loss blockdrop runs a second, greedy forward per batch for its baseline: it needs "
                       "frozen BatchNorm statistics; leave out --no-freeze-bn")
    cost_table = _cost_table_arg(args) if blockdrop else None
    if model is not None:
        if args.init:
            raise RunError("model= already gives the model: leave out --init")
        if not isinstance(model, OFASModel):
            raise RunError(f"model= must be an OFASModel (adapted and e2e-trained), got {type(model).__name__}")
        init: dict[str, Any] = {}
    elif not args.init:
        raise RunError("give --init RUN (an e2e_finetune run folder)")
    else:
        model, init = _load_init(args.init, args.trust_remote_code)
        args.init = str(init["path"])
    trainer = Trainer(args, "rl_finetune", init_args=init.get("args"))
    info = trainer.load_data(model.config["input_size"][0], model.config.get("normalization")).info
    _check_classes(model, info)
    if args.threshold is not None:
        model.threshold = args.threshold
    if model.num_gates == 0:
        raise RunError("the --init model has no gate to train")
    freeze_bn = args.freeze_bn or args.freeze_backbone
    head, rest = _head_params(model)
    if args.freeze_backbone:
        for p in rest:
            p.requires_grad_(False)
    model.train()
    optimizer = _sgd([(rest, args.lr), (head, args.head_lr or args.lr)], args)
    if blockdrop:
        costs = _gate_costs(model, cost_table)
        rollout = rl.PolicyRollout(model, sampling="bernoulli", alpha=args.alpha, greedy=True)
    else:
        rollout = rl.PolicyRollout(model, flip_prob=args.flip_prob, sampling=args.sampling)
    baseline = RunningMean(model.num_gates, args.baseline_momentum)

    def blockdrop_step(module: nn.Module, batch) -> dict[str, Any]:
        images, labels = batch
        logits, probs, gates, actions, greedy_logits = module(images)
        ce = F.cross_entropy(logits, labels)
        cost = costs.to(probs.device)
        rewards = rl.blockdrop_reward(logits.argmax(1) == labels, (actions.float() * cost).sum(1), args.wrong_penalty)
        greedy = rl.blockdrop_reward(greedy_logits.argmax(1) == labels, (gates.float() * cost).sum(1),
                                     args.wrong_penalty)
        policy = rl.self_critical_loss(probs, actions, rewards, greedy, args.entropy_weight)
        loss = args.policy_weight * policy
        if not args.freeze_backbone:
            loss = loss + args.ce_weight * ce
        metrics = {"ce": float(ce.detach()), "policy": float(policy.detach()), "reward": float(rewards.mean()),
                   "greedy_reward": float(greedy.mean()), "head_skip": 1.0 - float(gates.float().mean())}
        return {"loss": loss, "logits": logits, "targets": labels, "skip": 1.0 - float(actions.float().mean()),
                "metrics": metrics}

    def step(module: nn.Module, batch) -> dict[str, Any]:
        if blockdrop:
            return blockdrop_step(module, batch)
        images, labels = batch
        logits, probs, gates, actions = module(images)
        ce = F.cross_entropy(logits, labels, reduction="none")
        r_acc = rl.accuracy_reward(logits, labels)
        rewards = rl.gate_rewards(actions, r_acc, beta=args.beta, gamma1=args.gamma1, gamma2=args.gamma2)
        if args.policy_loss == "paper":
            policy = rl.paper_policy_loss(probs, actions, gates, rewards, args.keep_weight, args.flip_weight)
        else:
            base = baseline.value.to(rewards.device) if baseline.initialised else None
            policy = rl.reinforce_loss(probs, actions, rewards, base)
            baseline.update(rewards.mean(dim=0))
        loss = args.policy_weight * policy
        if not args.freeze_backbone:
            loss = loss + args.ce_weight * ce.mean()
        skip = 1.0 - float(actions.float().mean())
        metrics = {"ce": float(ce.detach().mean()), "policy": float(policy.detach()),
                   "reward": float(rewards.mean()), "head_skip": 1.0 - float(gates.float().mean())}
        return {"loss": loss, "logits": logits, "targets": labels, "skip": skip, "metrics": metrics}

    train_mode = rl.freeze_batchnorm_statistics if freeze_bn else None
    extra = (baseline,) if args.policy_loss == "reinforce" else ()
    summary = trainer.fit(rollout, optimizer, step, eval_fn=_ofas_eval(trainer), save_fn=_save(model, info),
                          train_mode_fn=train_mode, extra_state=extra,
                          config={"num_classes": info.num_classes, "num_gates": model.num_gates,
                                  "threshold": model.threshold, "freeze_bn_effective": freeze_bn})
    return {**summary, "model": model}
