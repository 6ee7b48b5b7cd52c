"""Early exit as a method of ``compare``: its fine-tune (the recipes' loop, the same budget and teacher as every
fine-tuned method), its threshold sweep on held-out images and the choice of a threshold for a latency target.

- :func:`finetune_early_exit`: trains an :class:`EarlyExitResNet` (the backbone and its exit heads together) with
  BranchyNet's loss, the sum of every exit's cross-entropy, plus, with a teacher, every exit's distillation to it;
  a run folder like the recipes' (``args.json``, ``metrics.json``, checkpoints, ``--resume``), the weights in
  ``model.safetensors``;
- :func:`exit_sweep`: per entropy threshold, the held-out accuracy, how many blocks run and where images leave
  (every exit's logits computed once) and the deployed latency on the choice images (``measure``);
- :func:`choose_exit`: the most accurate threshold on the held-out images among those whose measured latency is at
  or under the target (the cheaper one on a tie), or None.

Thresholds are given as fractions of ``log(num_classes)``, the largest entropy a softmax can have, so one grid
serves any number of classes: 0 never leaves early, 1 leaves at the first exit unless its softmax is exactly uniform.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ._baselines import EarlyExitResNet, early_exit_loss, exit_decisions

__all__ = ["WEIGHTS_NAME", "choose_exit", "early_exit_parser", "exit_sweep", "finetune_early_exit", "load_early_exit",
           "parse_fractions"]

WEIGHTS_NAME = "model.safetensors"


def parse_fractions(text: str) -> list[float]:
    """Exit thresholds as fractions of ``log(num_classes)``: ``"0:1:0.05"`` (start:stop:step, stop included) or
    ``"0,0.5,1"``; values in [0, 1], sorted. Raises ``ValueError`` saying what is wrong.

    Example:
        >>> parse_fractions("0:1:0.5"), parse_fractions("0.9,0.1")
        ([0.0, 0.5, 1.0], [0.1, 0.9])
    """
    from ..training._evaluate import parse_number_range

    try:
        values = parse_number_range(text)
    except ValueError:
        raise ValueError(f"write START:STOP:STEP or a comma list, got {text!r}") from None
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"give fractions of log(classes) in [0, 1], got {text!r}")
    return sorted(set(values))


def early_exit_parser():
    """The flags of the early-exit fine-tune: the recipes' shared flags (data, budget, run folder, optimiser) and
    the distillation of ``train_backbone``."""
    from ..training import build_parser

    parser = build_parser("early_exit", "Fine-tune an early-exit network (BranchyNet-style exits after each stage).",
                          lr=0.01)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    teach = parser.add_argument_group("distillation (every exit from the teacher given in Python)")
    teach.add_argument("--distill-weight", type=float, default=0.0)
    teach.add_argument("--distill-tau", type=float, default=4.0)
    return parser


class _AllExits(nn.Module):
    """The network as the training loop sees it: every exit's logits in training mode (the loss reads them all),
    the last exit's in evaluation mode (the loop's validation accuracy is the full network's)."""

    def __init__(self, model: EarlyExitResNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Any:
        outputs = self.model.forward_all(x)
        return outputs if self.training else outputs[-1]


def finetune_early_exit(argv: Sequence[str], model: EarlyExitResNet,
                        teacher: Optional[nn.Module] = None) -> dict[str, Any]:
    """Fine-tune ``model`` in place with the recipes' loop (``--output``, ``--max-steps``, ``--lr``, ``--seed``, the
    data flags, ``--resume``); returns the loop's summary (also ``metrics.json``).

    ``teacher`` with ``--distill-weight w``: ``w`` times each exit's distillation loss to the frozen teacher at
    ``--distill-tau`` is added to the exits' cross-entropies.
    """
    import torch.nn.functional as F
    from safetensors.torch import save_model

    from ..training import RunError, Trainer, distillation_loss, evaluate_classifier

    if not isinstance(model, EarlyExitResNet):
        raise TypeError(f"finetune_early_exit trains an EarlyExitResNet, got {type(model).__name__}")
    args = early_exit_parser().parse_args(list(argv))
    if args.distill_weight < 0 or args.distill_tau <= 0:
        raise RunError(f"--distill-weight must be >= 0 and --distill-tau > 0, got {args.distill_weight} and "
                       f"{args.distill_tau}")
    if (teacher is None) != (args.distill_weight == 0):
        raise RunError("give a teacher together with --distill-weight > 0, or neither")
    if teacher is not None:
        import copy

        teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
    trainer = Trainer(args, "early_exit")
    if teacher is not None:
        teacher.to(trainer.accelerator.device)
    trainer.load_data()
    network = _AllExits(model)
    trainable = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)

    def step(module: nn.Module, batch) -> dict[str, Any]:
        images, labels = batch
        exits = module(images)
        if args.label_smoothing:
            loss = torch.stack([F.cross_entropy(e, labels, label_smoothing=args.label_smoothing) for e in exits]).sum()
        else:
            loss = early_exit_loss(exits, labels)
        metrics = {}
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(images)
            distill = torch.stack([distillation_loss(e, teacher_logits, args.distill_tau) for e in exits]).sum()
            metrics = {"ce": float(loss.detach()), "distill": float(distill.detach())}
            loss = loss + args.distill_weight * distill
        return {"loss": loss, "logits": exits[-1], "targets": labels, "metrics": metrics}

    def evaluate(module: nn.Module, loader) -> dict[str, float]:
        return evaluate_classifier(trainer.accelerator, module, loader, ofas=False)

    def save(run_dir: Path) -> None:
        save_model(model, str(run_dir / WEIGHTS_NAME))

    summary = trainer.fit(network, optimizer, step, eval_fn=evaluate, save_fn=save,
                          config={"exit_blocks": model.exit_blocks, "num_exits": model.num_exits})
    model.eval()
    return summary


def load_early_exit(model: EarlyExitResNet, run: Path) -> EarlyExitResNet:
    """The weights of a finished :func:`finetune_early_exit` run, loaded into ``model`` (strict).

    ``save_model`` stores a tensor shared under several names (a projection shortcut's BatchNorm, held by the block
    and by its shortcut graph) once and records each other name in the file's metadata; the names are resolved with
    :func:`ofas_wrap._hub.save_model_aliases`. Not ``safetensors.torch.load_model``: torch's BatchNorm fills a
    ``num_batches_tracked`` absent from the loaded state itself, which ``load_model`` then reports as an unexpected
    key and refuses.
    """
    from safetensors import safe_open

    from .._hub import save_model_aliases

    path = str(Path(run) / WEIGHTS_NAME)
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
        stored = {name: handle.get_tensor(name) for name in handle.keys()}
    names = list(model.state_dict())
    aliases = save_model_aliases(metadata, names, stored)
    state = {name: stored[aliases.get(name, name)] for name in names if aliases.get(name, name) in stored}
    unused = set(stored) - set(state)
    if unused:
        raise RuntimeError(f"{path} does not fit this early-exit network: unexpected weights {sorted(unused)[:5]}")
    model.load_state_dict(state, strict=True)
    return model.eval()


@torch.no_grad()
def exit_sweep(model: EarlyExitResNet, fractions: Sequence[float], images: Tensor, labels: Tensor,
               measure: Callable[[float], float], batch: int = 500) -> list[dict[str, Any]]:
    """Per threshold on the held-out ``images``/``labels``: ``threshold`` (nats: the fraction times
    ``log(num_classes)``), ``val_top1``, ``blocks`` (mean blocks run), ``exit_rates`` (share leaving at each exit),
    ``adaptive_gates`` (stages after the first that run for 5-95 % of the images: the input-dependent decisions)
    and ``choice_ms`` (``measure(threshold)``, the deployed network's latency at that threshold)."""
    from ..training._evaluate import adaptivity

    model.eval()
    per_batch = [model.forward_all(images[start:start + batch]) for start in range(0, len(labels), batch)]
    exit_logits = [torch.cat([outputs[i] for outputs in per_batch]) for i in range(model.num_exits)]
    blocks = torch.tensor(model.exit_blocks, dtype=torch.float64)
    largest = math.log(model.num_classes)
    sweep = []
    for fraction in fractions:
        threshold = round(float(fraction) * largest, 6)
        taken = exit_decisions(exit_logits, threshold)
        predictions = torch.stack(exit_logits)[taken, torch.arange(len(labels))].argmax(1)
        later = torch.stack([taken >= stage for stage in range(1, model.num_exits)], 1).float()  # stage k runs
        rates = torch.bincount(taken, minlength=model.num_exits).double() / max(len(labels), 1)
        sweep.append({"threshold": threshold, "fraction": float(fraction),
                      "val_top1": float((predictions.cpu() == labels.cpu()).double().mean()),
                      "blocks": float(blocks[taken].mean()), "exit_rates": [round(float(r), 4) for r in rates],
                      "adaptive_gates": adaptivity(later, 0.5)["adaptive_gates"], "choice_ms": measure(threshold)})
    return sweep


def choose_exit(sweep: Sequence[dict[str, Any]], target_ms: float) -> Optional[dict[str, Any]]:
    """The sweep entry to deploy at ``target_ms``: the best ``val_top1`` among those whose ``choice_ms`` is at or
    under it (the larger threshold, which leaves earlier, on a tie); None when none fits.

    Example:
        >>> sweep = [{"threshold": 0.1, "val_top1": 0.9, "choice_ms": 3.0},
        ...          {"threshold": 0.5, "val_top1": 0.8, "choice_ms": 2.0},
        ...          {"threshold": 0.9, "val_top1": 0.8, "choice_ms": 1.5}]
        >>> choose_exit(sweep, 2.5)["threshold"], choose_exit(sweep, 1.0)
        (0.9, None)
    """
    fits = [entry for entry in sweep if entry["choice_ms"] <= target_ms]
    if not fits:
        return None
    return max(fits, key=lambda entry: (entry["val_top1"], entry["threshold"]))
