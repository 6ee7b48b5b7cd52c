"""The learning-rate schedule: a factor of the **global** optimizer step (never the step inside the epoch)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["LRSchedule", "make_scheduler", "ramp_factor"]

SCHEDULES = ("cosine", "linear", "step", "constant")


# --------------------------------------------------------------------------------------------- schedule
@dataclass
class LRSchedule:
    """The learning-rate factor as a function of the **global** optimizer step (a picklable ``LambdaLR`` rule).

    Example:
        >>> rule = LRSchedule("cosine", total_steps=10)
        >>> [round(rule(s), 3) for s in (0, 5, 10)]
        [1.0, 0.5, 0.0]
    """

    kind: str
    total_steps: int
    warmup_steps: int = 0
    milestones: Sequence[float] = (0.5, 0.75)

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "linear":
            return 1.0 - progress
        if self.kind == "step":
            return 0.1 ** sum(progress >= m for m in self.milestones)
        raise ValueError(f"unknown schedule {self.kind!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int = 0,
                   milestones: Sequence[float] = (0.5, 0.75)) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per optimizer step; its ``last_epoch`` is the global step (checkpointed)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(kind, total_steps, warmup_steps,
                                                                   tuple(milestones)))


def ramp_factor(step: int, total_steps: int, start: float, end: float) -> float:
    """The weight factor of a penalty switched on over training: 0 before ``start`` (a fraction of ``total_steps``),
    rising linearly to 1 at ``end``, 1 after. ``start == end`` is a step at ``start``.

    Used by ``e2e_finetune --penalty-ramp`` to train OFAS from random initialisation: the network first learns as a
    whole, then the skip cost and rate terms come in (annealed from 0), so a gate is not closed before its block has
    learned anything.

    Example:
        >>> [round(ramp_factor(s, 100, 0.2, 0.6), 3) for s in (0, 20, 40, 60, 100)]
        [0.0, 0.0, 0.5, 1.0, 1.0]
        >>> ramp_factor(30, 100, 0.3, 0.3)
        1.0
    """
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"a ramp needs 0 <= start <= end <= 1 (fractions of training), got {start}, {end}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    progress = step / total_steps
    if progress < start:
        return 0.0
    if progress >= end:
        return 1.0
    return (progress - start) / (end - start)
