"""Controls that tell input-adaptive skipping from its static look-alikes (issue 10), at the same mean cost.

- ``shuffled``: OFAS's own skip patterns permuted across the images: the same distribution of costs and patterns,
  but no dependence on the input.
- ``random_rates``: independent random gates with OFAS's per-gate open rates.
- ``fixed_subset``: the best fixed set of blocks at (at most) OFAS's mean number of executed gates, chosen greedily
  on validation images (close, one at a time, the gate whose closing costs the least validation accuracy): what a
  learned static pruning of the same network gives.

If OFAS is not more accurate than these at the same cost, its decisions do not use the input.

Example:
    >>> import torch
    >>> shuffled_patterns(torch.tensor([[True, False], [False, True]]), seed=0).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["shuffled_patterns", "random_rate_patterns", "accuracy_under_patterns", "greedy_path", "greedy_fixed_subset",
           "control_rows"]


def shuffled_patterns(patterns: Tensor, seed: int = 0) -> Tensor:
    """The rows of ``patterns`` (images, gates) in a seeded random order."""
    order = torch.randperm(patterns.shape[0], generator=torch.Generator().manual_seed(seed))
    return patterns[order]


def random_rate_patterns(patterns: Tensor, seed: int = 0) -> Tensor:
    """Independent Bernoulli gates with the per-gate open rates of ``patterns``."""
    rates = patterns.float().mean(0)
    draws = torch.rand(patterns.shape, generator=torch.Generator().manual_seed(seed))
    return draws < rates


@torch.no_grad()
def accuracy_under_patterns(model: nn.Module, images: Tensor, labels: Tensor, patterns: Tensor,
                            batch_size: int = 256) -> float:
    """Top-1 of ``model`` (eval mode) when image ``i`` runs exactly the gates ``patterns[i]``."""
    model.eval()
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        stop = start + batch_size
        with model.forced_gates(patterns[start:stop]):
            logits = model(images[start:stop])
        correct += int((logits.argmax(1) == labels[start:stop]).sum())
    return correct / max(images.shape[0], 1)


@torch.no_grad()
def greedy_path(model: nn.Module, images: Tensor, labels: Tensor, steps: int, batch_size: int = 256) -> list[Tensor]:
    """Bool (num_gates,) open-gate patterns after closing 1, 2, ..., ``steps`` gates greedily on these images: each
    step closes the gate whose closing costs the least accuracy here (ties go to the first gate)."""
    keep = torch.ones(model.num_gates, dtype=torch.bool)
    path = []
    for _ in range(min(steps, model.num_gates)):
        best, best_accuracy = None, -1.0
        for gate in keep.nonzero().flatten().tolist():
            trial = keep.clone()
            trial[gate] = False
            accuracy = accuracy_under_patterns(model, images, labels, trial.expand(images.shape[0], -1), batch_size)
            if accuracy > best_accuracy:
                best, best_accuracy = gate, accuracy
        keep[best] = False
        path.append(keep.clone())
    return path


def greedy_fixed_subset(model: nn.Module, images: Tensor, labels: Tensor, max_gates: float,
                        batch_size: int = 256) -> Tensor:
    """A bool (num_gates,) pattern with ``round(max_gates)`` open gates, closed greedily on these images."""
    path = greedy_path(model, images, labels, model.num_gates - round(max_gates), batch_size)
    return path[-1] if path else torch.ones(model.num_gates, dtype=torch.bool)


def control_rows(model: nn.Module, threshold: float, test: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor],
                 seeds: Sequence[int] = (0,), batch_size: int = 256) -> list[dict[str, Any]]:
    """The three controls at OFAS's cost at ``threshold``: one row each (per seed for the random ones), with test
    accuracy, executed gates and MFLOPs; ``fixed_subset`` is chosen on ``val``."""
    model.eval()
    images, labels = test
    with torch.no_grad():
        _, probs = model.gate_probabilities(images)
    patterns = (probs >= threshold).cpu()
    mean_gates = float(patterns.float().sum(1).mean())
    rows = []

    def row(method: str, chosen: Tensor, seed: Any) -> dict[str, Any]:
        return {"method": method, "threshold": threshold, "seed": seed,
                "top1": accuracy_under_patterns(model, images, labels, chosen, batch_size),
                "executed_gates": float(chosen.float().sum(1).mean()),
                "mflops": float(model.executed_flops(chosen).double().mean()) / 1e6}

    for seed in seeds:
        rows.append(row("shuffled", shuffled_patterns(patterns, seed), seed))
        rows.append(row("random_rates", random_rate_patterns(patterns, seed), seed))
    subset = greedy_fixed_subset(model, val[0], val[1], mean_gates, batch_size)
    rows.append(row("fixed_subset", subset.expand(images.shape[0], -1), None))
    rows[-1]["pattern"] = subset.tolist()
    return rows
