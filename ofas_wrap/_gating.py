"""The gate of OFAS as small pure functions (Eq. 1 and Eq. 4 of the paper)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["hard_gates", "straight_through_gates", "sampled_straight_through_gates", "mix_gated", "check_gate_mask",
           "forcing_gates"]


def hard_gates(probs: Tensor, threshold: float) -> Tensor:
    """Eq. 1: ``G_i = 1 if S_L(i) >= T else 0``, as a bool tensor of the shape of ``probs``.

    Example:
        >>> hard_gates(torch.tensor([[0.2, 0.5, 0.9]]), 0.5)
        tensor([[False,  True,  True]])
    """
    return probs >= threshold


def straight_through_gates(probs: Tensor, threshold: float) -> Tensor:
    """Eq. 1 for training: the forward value is the hard 0/1 gate, the gradient is that of ``probs``.

    Example:
        >>> p = torch.tensor([[0.2, 0.7]], requires_grad=True)
        >>> g = straight_through_gates(p, 0.5)
        >>> g.tolist(), torch.autograd.grad(g.sum(), p)[0].tolist()
        ([[0.0, 1.0]], [[1.0, 1.0]])
    """
    hard = (probs >= threshold).to(probs.dtype)
    return hard + probs - probs.detach()


def sampled_straight_through_gates(probs: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Eq. 1 read as a Bernoulli policy, for training: ``G_i ~ Bernoulli(S_L(i))`` forward, the gradient of ``probs``.

    Not in the paper (which thresholds at T while training, :func:`straight_through_gates`). With a fixed T the
    straight-through gradient changes sign where ``S_L`` crosses T, so the head's outputs gather just around T
    and the threshold knob turns into a cliff; a sampled gate sees both states of every block around any ``S_L``,
    so ``S_L`` settles where a block's benefit meets its cost, per input, and the backbone learns to run with
    random blocks skipped (as with stochastic depth). At inference the gate is still ``S_L >= T``.

    Example:
        >>> p = torch.tensor([[0.0, 1.0, 0.5]], requires_grad=True)
        >>> g = sampled_straight_through_gates(p, torch.Generator().manual_seed(0))
        >>> g[0, :2].tolist(), torch.autograd.grad(g.sum(), p)[0].tolist()
        ([0.0, 1.0], [[1.0, 1.0, 1.0]])
    """
    noise = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
    hard = (noise < probs.detach()).to(probs.dtype)
    return hard + probs - probs.detach()


def mix_gated(gate: Tensor, block_out: Tensor, shortcut_out: Tensor) -> Tensor:
    """Eq. 4: ``x_{i+1} = G_i B(x_i) + (1 - G_i) shortcut(x_i)`` with a per-sample gate of shape ``(batch,)``."""
    shape = [gate.shape[0]] + [1] * (block_out.dim() - 1)
    gate = gate.reshape(shape).to(block_out.dtype)
    return gate * block_out + (1.0 - gate) * shortcut_out


def check_gate_mask(mask: Tensor, num_gates: int) -> Tensor:
    """A forced gate pattern as a tensor, checked: bool (True = execute), shape ``(num_gates,)`` or
    ``(batch, num_gates)``. Raises ``TypeError`` for another dtype and ``ValueError`` for another shape.

    Example:
        >>> check_gate_mask(torch.tensor([True, False]), 2).tolist()
        [True, False]
    """
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"forced gate mask must be a bool tensor (True = execute), got dtype {mask.dtype}")
    if mask.dim() not in (1, 2) or mask.shape[-1] != num_gates:
        raise ValueError(
            f"forced gate mask must have shape (num_gates,) or (batch, num_gates) with num_gates={num_gates}, "
            f"got {tuple(mask.shape)}"
        )
    return mask


@contextlib.contextmanager
def forcing_gates(module: Any, mask: Tensor, num_gates: int) -> Iterator[Any]:
    """Inside the ``with`` block, ``module.forced_gate_mask`` is ``mask`` (checked by :func:`check_gate_mask`); the
    previous mask comes back after it, also on an error. The ``forced_gates`` of every gated network here.

    Example:
        >>> holder = type("Holder", (), {"forced_gate_mask": None})()
        >>> with forcing_gates(holder, torch.tensor([True, False]), 2):
        ...     holder.forced_gate_mask.tolist()
        [True, False]
        >>> holder.forced_gate_mask is None
        True
    """
    mask = check_gate_mask(mask, num_gates)
    previous = module.forced_gate_mask
    module.forced_gate_mask = mask
    try:
        yield module
    finally:
        module.forced_gate_mask = previous
