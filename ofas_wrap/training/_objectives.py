"""Training objectives beside the paper's, for gates whose decisions depend on the input (issue 10).

The paper's e2e penalty is linear in the gate probabilities, so its batch mean and its per-sample form are the
same objective and a fixed subset of blocks is an optimum of it. These terms are not linear in the batch:

- :func:`target_rate_loss`: each gate's batch-mean execution rate pulled to a target ``t`` (ConvNet-AIG, Veit and
  Belongie 2018): ``sum_i (mean_b g_bi - t)^2``.
- :func:`rate_hinge_loss`: each gate's rate kept inside ``[r_min, r_max]``, free in between.
- :func:`gate_information`: the mutual information between each gate and the image, ``H(mean_b p_bi) -
  mean_b H(p_bi)`` in bits: zero for a fixed pattern (every image the same probability) and for a cliff (every
  probability near 0.5), high when the head is sure and disagrees across images. Maximised as a regulariser.
- :func:`distillation_loss`: KL divergence to a frozen full-depth teacher at temperature ``tau`` (Hinton et al.
  2015), scaled by ``tau^2``.

All take ``gates`` or ``probs`` of shape ``(batch, num_gates)`` and return a scalar.

Example:
    >>> import torch
    >>> round(float(target_rate_loss(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), 0.5)), 3)
    0.5
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["target_rate_loss", "rate_hinge_loss", "bernoulli_entropy", "gate_information", "distillation_loss"]

_LOG2 = float(torch.log(torch.tensor(2.0)))


def target_rate_loss(gates: Tensor, target: float) -> Tensor:
    """``sum_i (mean_b gates_bi - target)^2`` (ConvNet-AIG's target-rate loss)."""
    return ((gates.mean(dim=0) - target) ** 2).sum()


def rate_hinge_loss(gates: Tensor, r_min: float, r_max: float) -> Tensor:
    """``sum_i relu(r_min - rate_i)^2 + relu(rate_i - r_max)^2`` with ``rate_i`` the batch-mean of gate ``i``."""
    if not 0.0 <= r_min <= r_max <= 1.0:
        raise ValueError(f"rate bounds must satisfy 0 <= r_min <= r_max <= 1, got {r_min}, {r_max}")
    rate = gates.mean(dim=0)
    return (F.relu(r_min - rate) ** 2 + F.relu(rate - r_max) ** 2).sum()


def bernoulli_entropy(p: Tensor, eps: float = 1e-6, unit: str = "bits") -> Tensor:
    """Entropy of Bernoulli(p), elementwise, in ``"bits"`` (the information terms) or ``"nats"`` (the RL entropy
    bonus, as policy-gradient papers state it)."""
    if unit not in ("bits", "nats"):
        raise ValueError(f"unit must be 'bits' or 'nats', got {unit!r}")
    p = p.clamp(eps, 1.0 - eps)
    nats = -(p * torch.log(p) + (1.0 - p) * torch.log1p(-p))
    return nats / _LOG2 if unit == "bits" else nats


def gate_information(probs: Tensor) -> Tensor:
    """``sum_i [H(mean_b p_bi) - mean_b H(p_bi)]``: the mutual information (bits) between the gates and the images.

    Example:
        >>> import torch
        >>> float(gate_information(torch.full((4, 3), 0.5)))  # a cliff: every image the same undecided 0.5
        0.0
        >>> round(float(gate_information(torch.tensor([[0.0], [1.0]]))), 3)  # sure, and different per image
        1.0
    """
    return (bernoulli_entropy(probs.mean(dim=0)) - bernoulli_entropy(probs).mean(dim=0)).sum()


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """``tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))``, batch mean."""
    if tau <= 0:
        raise ValueError(f"the distillation temperature must be > 0, got {tau}")
    teacher = F.log_softmax(teacher_logits.detach() / tau, dim=1)
    student = F.log_softmax(student_logits / tau, dim=1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * tau * tau
