"""Depth pruning for a latency target: which gated blocks to remove, chosen on held-out images by measured cost.

Two measurements and one pure rule:

- :func:`removal_harm`: the held-out cross-entropy increase when each gated block alone is removed (its gate forced
  off, every other block on), the ranking of the depth-pruning pilot (``../shared/pilots``);
- the time each block's removal saves at batch 1, measured on this machine (``ofas_wrap._costs.measure_block_table``,
  the table ``ofas-wrap bench --block-table`` writes): a stage-1 block of a CIFAR ResNet costs more time per FLOP than
  a stage-3 one, so the choice is made by measured cost, not by block count or FLOPs;
- :func:`blocks_to_remove`: remove blocks in the order of harm per millisecond saved until the predicted latency
  (the full network's minus the savings) is at or under the target.

:func:`choose_keep` puts them together and checks the choice by timing the pruned network itself: while it is still
slower than the target, the next block in the order goes too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["removal_harm", "removal_order", "blocks_to_remove", "choose_keep"]


def removal_harm(model: Any, batches: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """Per gated block: the mean cross-entropy on ``batches`` with that block alone removed, minus the full
    network's (the gates forced; eval mode). Shape ``(num_gates,)``; larger is more harmful."""
    model.eval()

    def loss(pattern: Optional[Tensor]) -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for images, labels in batches:
                if pattern is None:
                    logits = model.unwrap()(images)
                else:
                    with model.forced_gates(pattern):
                        logits = model(images)
                total += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
                count += int(labels.numel())
        return total / max(count, 1)

    full = loss(None)
    harms = []
    for gate in range(model.num_gates):
        pattern = torch.ones(model.num_gates, dtype=torch.bool)
        pattern[gate] = False
        harms.append(loss(pattern) - full)
    return torch.tensor(harms, dtype=torch.float64)


def removal_order(harm: Sequence[float], saving_ms: Sequence[float]) -> list[int]:
    """Gate indices, the cheapest removal first: ascending harm per millisecond saved (a block that saves no
    measurable time goes last, by harm).

    Example:
        >>> removal_order([0.5, 0.1, 0.1], [1.0, 1.0, 0.5])
        [1, 2, 0]
    """
    if len(harm) != len(saving_ms):
        raise ValueError(f"harm has {len(harm)} entries but saving_ms has {len(saving_ms)}")

    def key(i: int) -> tuple[int, float]:
        saving = float(saving_ms[i])
        return (0, float(harm[i]) / saving) if saving > 0 else (1, float(harm[i]))
    return sorted(range(len(harm)), key=key)


def blocks_to_remove(harm: Sequence[float], saving_ms: Sequence[float], full_ms: float, target_ms: float) -> list[int]:
    """The fewest blocks, in :func:`removal_order`, whose summed savings bring ``full_ms`` to ``target_ms`` or under.

    Raises ValueError when removing every block still predicts more than ``target_ms`` (the target is out of reach
    of depth pruning).

    Example:
        >>> blocks_to_remove([0.5, 0.1, 0.2], [1.0, 1.0, 1.0], full_ms=5.0, target_ms=3.5)
        [1, 2]
    """
    order = removal_order(harm, saving_ms)
    predicted, removed = float(full_ms), []
    for index in order:
        if predicted <= target_ms:
            break
        removed.append(index)
        predicted -= float(saving_ms[index])
    if predicted > target_ms:
        raise ValueError(f"removing every gated block is predicted to take {predicted:.3f} ms, more than the target "
                         f"{target_ms:.3f} ms: depth pruning cannot reach it")
    return removed


def choose_keep(harm: Sequence[float], saving_ms: Sequence[float], full_ms: float, target_ms: float,
                measure: Callable[[list[bool]], float]) -> tuple[list[bool], float, list[int]]:
    """The keep pattern (True = keep) for ``target_ms``: :func:`blocks_to_remove`, then, while ``measure(keep)``
    (the pruned network's measured latency in ms) is above the target, one more block in the removal order.
    Returns ``(keep, measured_ms, removed)``; the last measurement may stay above the target when every block is
    removed (the caller reports it).

    Where the block table's savings (each block timed alone: noisy on a busy machine) do not add up to the target,
    the number of blocks to remove, in the removal order, is found by measuring instead: the network without every
    gated block first (above the target: the caller is told so), then a bisection.
    """
    order = removal_order(harm, saving_ms)
    try:
        removed = blocks_to_remove(harm, saving_ms, full_ms, target_ms)
    except ValueError:
        removed = order[:_fewest_by_measurement(order, target_ms, measure)]
    while True:
        keep = [i not in removed for i in range(len(harm))]
        measured = measure(keep)
        if measured <= target_ms or len(removed) == len(order):
            return keep, measured, removed
        removed.append(next(i for i in order if i not in removed))


def _fewest_by_measurement(order: list[int], target_ms: float, measure: Callable[[list[bool]], float]) -> int:
    """The fewest blocks of ``order`` (every gated block, in removal order) to remove for ``measure`` to be at or
    under ``target_ms`` (bisection over the count; all of them when even that is above the target)."""
    def fast_enough(removals: int) -> bool:
        gone = set(order[:removals])
        return measure([i not in gone for i in range(len(order))]) <= target_ms

    low, high = 0, len(order)  # the full network is above the target (that is why we are here)
    if not fast_enough(high):
        return high
    while high - low > 1:
        middle = (low + high) // 2
        if fast_enough(middle):
            high = middle
        else:
            low = middle
    return high
