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

from collections.abc import Iterator, Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

__all__ = ["shuffled_patterns", "random_rate_patterns", "accuracy_under_patterns", "predictions_under_patterns",
           "greedy_path", "greedy_fixed_subset", "control_rows"]


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
    return _correct_under_patterns(model, images, labels, patterns, batch_size) / max(images.shape[0], 1)


def _correct_under_patterns(model: nn.Module, images: Tensor, labels: Tensor, patterns: Tensor,
                            batch_size: int) -> int:
    return int((predictions_under_patterns(model, images, patterns, batch_size) == labels).sum())


@torch.no_grad()
def predictions_under_patterns(model: nn.Module, images: Tensor, patterns: Tensor, batch_size: int = 256) -> Tensor:
    """The top-1 class of ``model`` (eval mode) for each image when image ``i`` runs exactly the gates
    ``patterns[i]``."""
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        stop = start + batch_size
        with model.forced_gates(patterns[start:stop]):
            out.append(model(images[start:stop]).argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def greedy_path(model: nn.Module, images: Tensor, labels: Tensor, steps: int, batch_size: int = 256,
                path: Optional[list[Tensor]] = None) -> list[Tensor]:
    """Bool (num_gates,) open-gate patterns after closing 1, 2, ..., ``steps`` gates greedily on these images: each
    step closes the gate whose closing costs the least accuracy here (ties go to the first gate).

    ``path``: what an earlier call returned for the same model and images; it is extended in place where it is
    shorter (a greedy search's first steps do not depend on how many follow, so the targets of one model share one
    search).

    Each step tries every open gate. On an OFASModel the blocks before a tried gate are the step's own, so they run
    once per step and batch, and each trial runs only from its gate on (the same operations on the same batches as
    running each trial whole: the same counts, :func:`_trials_whole` is the reference); on ResNet-110's 54 gates
    that is about half the work of the search.
    """
    from .._model import OFASModel

    trials = _trials_from_shared_prefix if isinstance(model, OFASModel) else _trials_whole
    path = [] if path is None else path
    keep = path[-1].clone() if path else torch.ones(model.num_gates, dtype=torch.bool)
    steps = min(steps, model.num_gates)
    model.eval()
    while len(path) < steps:
        candidates = keep.nonzero().flatten().tolist()
        correct = trials(model, images, labels, keep, candidates, batch_size)
        keep[candidates[correct.index(max(correct))]] = False
        path.append(keep.clone())
    return path[:steps]


def _closed(keep: Tensor, gate: int) -> Tensor:
    trial = keep.clone()
    trial[gate] = False
    return trial


def _trials_whole(model: nn.Module, images: Tensor, labels: Tensor, keep: Tensor, candidates: list[int],
                  batch_size: int) -> list[int]:
    """Correct predictions on ``images`` with ``keep`` less each candidate gate, each trial a whole forward."""
    return [_correct_under_patterns(model, images, labels, _closed(keep, gate).expand(images.shape[0], -1),
                                    batch_size) for gate in candidates]


def _trials_from_shared_prefix(model: nn.Module, images: Tensor, labels: Tensor, keep: Tensor,
                               candidates: list[int], batch_size: int) -> list[int]:
    """:func:`_trials_whole` on an OFASModel, each trial run from the state before its gate's block under ``keep``."""
    correct = [0] * len(candidates)
    for start in range(0, images.shape[0], batch_size):
        answers = labels[start:start + batch_size]
        for index, logits in enumerate(_trial_logits(model, images[start:start + batch_size], keep, candidates)):
            correct[index] += int((logits.argmax(1) == answers).sum())
    return correct


def _trial_logits(model: nn.Module, images: Tensor, keep: Tensor, candidates: list[int]) -> Iterator[Tensor]:
    """The logits of one batch under ``keep`` less each candidate gate, in turn: the blocks before the gate run once
    under ``keep`` (the inference path of ``OFASModel._blocks_inference``: entry, each block's single or routed
    form, links) and each trial from there on."""
    position = {block.gate_index: i for i, block in enumerate(model.blocks) if block.gate_index >= 0}
    features = model.stem(images)
    carried: list[Tensor] = []
    if model.carries:
        features, carried = model.entry(features, carried)
    states: list[tuple[Tensor, list[Tensor]]] = []
    _run_blocks(model, features, carried, keep.expand(images.shape[0], -1), 0, states)
    for gate in candidates:
        features, carried = states[position[gate]]
        trial = _closed(keep, gate).expand(images.shape[0], -1)
        yield model.tail(_run_blocks(model, features, list(carried), trial, position[gate]))


def _run_blocks(model: nn.Module, features: Tensor, carried: list[Tensor], decisions: Tensor, first: int,
                states: Any = None) -> Tensor:
    """Blocks ``first``.. of ``model`` as ``OFASModel._blocks_inference`` runs them; ``states`` (a list) collects the
    (features, carried) entering each block."""
    counts: list[int] = decisions.sum(0).tolist()
    row: list[bool] = decisions[0].tolist()
    for block in list(model.blocks)[first:]:
        if states is not None:
            states.append((features, list(carried)))
        if features.shape[0] == 1:
            features = block.forward_single(features, block.gate_index < 0 or row[block.gate_index])
        else:
            index = max(block.gate_index, 0)
            features = block.forward_routed(features, decisions[:, index], counts[index])
        if model.carries:
            features, carried = block.link(features, carried)
    return features


def greedy_fixed_subset(model: nn.Module, images: Tensor, labels: Tensor, max_gates: float,
                        batch_size: int = 256, path: Optional[list[Tensor]] = None) -> Tensor:
    """A bool (num_gates,) pattern with ``round(max_gates)`` open gates, closed greedily on these images (``path``:
    an earlier search on the same model and images, see :func:`greedy_path`)."""
    path = greedy_path(model, images, labels, model.num_gates - round(max_gates), batch_size, path)
    return path[-1] if path else torch.ones(model.num_gates, dtype=torch.bool)


def control_rows(model: nn.Module, threshold: float, test: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor],
                 seeds: Sequence[int] = (0,), batch_size: int = 256,
                 path: Optional[list[Tensor]] = None) -> list[dict[str, Any]]:
    """The three controls at OFAS's cost at ``threshold``: one row each (per seed for the random ones), with test
    accuracy, executed gates and MFLOPs; ``fixed_subset`` is chosen on ``val`` (``path``: the greedy search of an
    earlier call on the same model and ``val``, extended in place; see :func:`greedy_path`)."""
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
    subset = greedy_fixed_subset(model, val[0], val[1], mean_gates, batch_size, path)
    rows.append(row("fixed_subset", subset.expand(images.shape[0], -1), None))
    rows[-1]["pattern"] = subset.tolist()
    return rows
