"""The gate of OFAS as small pure functions (Eq. 1 and Eq. 4 of the paper)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["hard_gates", "straight_through_gates", "mix_gated"]


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


def mix_gated(gate: Tensor, block_out: Tensor, shortcut_out: Tensor) -> Tensor:
    """Eq. 4: ``x_{i+1} = G_i B(x_i) + (1 - G_i) shortcut(x_i)`` with a per-sample gate of shape ``(batch,)``."""
    shape = [gate.shape[0]] + [1] * (block_out.dim() - 1)
    gate = gate.reshape(shape).to(block_out.dtype)
    return gate * block_out + (1.0 - gate) * shortcut_out
