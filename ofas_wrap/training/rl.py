"""The RL-based training of OFAS (Section IV-B of the paper, Eq. 5-10) as small pure functions.

The OFAS head is the agent; its state is the stem's output, its action the skip state of every gated block.
One training step of ``recipes/rl_finetune.py``:

1. ``g`` = the head's hard gates at the threshold (Eq. 1), ``a = explore_actions(g)`` (Eq. 5);
2. run the network under ``a`` and take ``R_acc = accuracy_reward(logits, y)`` (Eq. 7-8);
3. ``R = gate_rewards(a, R_acc)`` (Eq. 6), computed backwards from the last gate;
4. minimise ``paper_policy_loss(S_L, a, g, R)`` (Eq. 9 with p from Eq. 10), or ``reinforce_loss``.

Not the paper's, an option for input-dependent decisions (issue 10 item 3, after BlockDrop, Wu et al. 2018):
``--policy-loss blockdrop`` samples ``a ~ Bernoulli(bounded_probabilities(S_L, alpha))``, pays each image
``blockdrop_reward`` (the saved cost only when its prediction stays correct, a penalty when it does not) and
minimises ``self_critical_loss`` with the reward of the greedy decisions (the gates at T) as the baseline.

Shapes are checked strictly: every per-gate tensor is ``(batch, n)`` and per-sample tensors are ``(batch,)``,
so a ``(B, 1)`` return can never silently broadcast against a ``(B,)`` log-probability into ``(B, B)``.

Example:
    >>> import torch
    >>> from ofas_wrap import rl
    >>> probs = torch.tensor([[0.8, 0.3]], requires_grad=True)
    >>> gates = probs.detach() >= 0.5
    >>> actions = rl.explore_actions(gates, flip_prob=0.0)
    >>> rewards = rl.gate_rewards(actions, torch.tensor([0.5]))
    >>> loss = rl.paper_policy_loss(probs, actions, gates, rewards)
    >>> loss.backward()
    >>> probs.grad.shape
    torch.Size([1, 2])
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._objectives import bernoulli_entropy

__all__ = [
    "explore_actions",
    "bernoulli_actions",
    "accuracy_reward",
    "gate_rewards",
    "action_weights",
    "action_probabilities",
    "paper_policy_loss",
    "reinforce_loss",
    "bounded_probabilities",
    "blockdrop_reward",
    "self_critical_loss",
    "PolicyRollout",
    "freeze_batchnorm_statistics",
]


def _as_bool(name: str, tensor: Tensor) -> Tensor:
    tensor = torch.as_tensor(tensor)
    if tensor.dtype == torch.bool:
        return tensor
    values = tensor.detach()
    if values.numel() and not bool(((values == 0) | (values == 1)).all()):
        raise ValueError(f"{name} must be a bool or 0/1 tensor (1 = execute the block)")
    return values != 0


def _check_2d(name: str, tensor: Tensor, shape: Optional[torch.Size] = None) -> None:
    if tensor.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, num_gates), got {tuple(tensor.shape)}")
    if shape is not None and tensor.shape != shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)} but the actions have shape {tuple(shape)}; "
                         "every per-gate tensor must be (batch, num_gates)")


def explore_actions(gates: Tensor, flip_prob: float = 0.1, generator: Optional[torch.Generator] = None) -> Tensor:
    """Eq. 5: ``a_i = g_i`` with probability ``1 - flip_prob``, ``1 - g_i`` with probability ``flip_prob``.

    Each gate of each sample is flipped independently. ``gates`` is a bool or 0/1 tensor ``(batch, n)``
    (1 = execute); the result has the same dtype.

    Example:
        >>> g = torch.tensor([[True, False, True]])
        >>> explore_actions(g, flip_prob=1.0).tolist()
        [[False, True, False]]
    """
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
    hard = _as_bool("gates", gates)
    flips = torch.rand(hard.shape, generator=generator, device=hard.device if generator is None else "cpu")
    actions = hard ^ (flips.to(hard.device) < flip_prob)
    return actions if torch.as_tensor(gates).dtype == torch.bool else actions.to(torch.as_tensor(gates).dtype)


def bernoulli_actions(probs: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Classic policy-gradient sampling (not the paper's): ``a_i ~ Bernoulli(S_L(i))``, as a bool tensor.

    Example:
        >>> bernoulli_actions(torch.tensor([[1.0, 0.0]])).tolist()
        [[True, False]]
    """
    draws = torch.rand(probs.shape, generator=generator, device=probs.device if generator is None else "cpu")
    return draws.to(probs.device) < probs.detach()


def accuracy_reward(logits: Tensor, targets: Tensor) -> Tensor:
    """Eq. 7-8: ``R_acc(x) = sum(y * -log N(x, a(x)))``, the per-sample cross-entropy, shape ``(batch,)``.

    ``targets`` are class indices ``(batch,)`` or one-hot / soft labels ``(batch, classes)``. The smaller, the
    better; it is a detached quantity (a reward, not a loss). The paper's example: predicted probabilities
    [0.1, 0.2, 0.3, 0.4] and label 3 give 0.916.

    Example:
        >>> logits = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).log()
        >>> round(float(accuracy_reward(logits, torch.tensor([3]))[0]), 3)
        0.916
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (batch, classes), got {tuple(logits.shape)}")
    with torch.no_grad():
        if targets.dim() == 2:
            if targets.shape != logits.shape:
                raise ValueError(f"one-hot targets {tuple(targets.shape)} must match logits {tuple(logits.shape)}")
            return -(targets.to(logits.dtype) * F.log_softmax(logits, dim=1)).sum(dim=1)
        if targets.shape != logits.shape[:1]:
            raise ValueError(f"targets must have shape ({logits.shape[0]},), got {tuple(targets.shape)}")
        return F.cross_entropy(logits, targets, reduction="none")


def gate_rewards(actions: Tensor, r_acc: Tensor, beta: Optional[float] = None, gamma1: float = 0.3,
                 gamma2: float = 0.9) -> Tensor:
    """Eq. 6: ``R_i = beta * ((1 - a_i) - gamma1 * R_acc + gamma2 * R_{i+1})``, ``R_{n+1} = 0``, from the last gate.

    Args:
        actions: ``(batch, n)`` bool or 0/1, 1 = the block was executed (so ``1 - a_i`` rewards a skip).
        r_acc: ``(batch,)`` accuracy reward of each sample (Eq. 7-8); ``(batch, 1)`` is accepted and reshaped
            explicitly, anything else is an error (no silent broadcasting).
        beta: step size; ``None`` means the paper's ``0.1 / n``.
        gamma1, gamma2: the paper's discount factors (0.3 and 0.9).

    Returns:
        ``(batch, n)`` float rewards, detached.

    Example (n = 2, beta = 0.5: R_2 = 0.5 * (1 - 0.3) = 0.35, R_1 = 0.5 * (0 - 0.3 + 0.9 * 0.35) = 0.0075):
        >>> gate_rewards(torch.tensor([[1, 0]]), torch.tensor([1.0]), beta=0.5)
        tensor([[0.0075, 0.3500]])
    """
    hard = _as_bool("actions", actions)
    _check_2d("actions", hard)
    batch, n = hard.shape
    r_acc = torch.as_tensor(r_acc).detach()
    if r_acc.dim() == 2 and r_acc.shape == (batch, 1):
        r_acc = r_acc.reshape(batch)
    if r_acc.shape != (batch,):
        raise ValueError(f"r_acc must have shape ({batch},) (one value per sample), got {tuple(r_acc.shape)}")
    if n == 0:
        return torch.zeros(batch, 0, dtype=r_acc.dtype if r_acc.is_floating_point() else torch.float32)
    beta = 0.1 / n if beta is None else float(beta)
    dtype = r_acc.dtype if r_acc.is_floating_point() else torch.float32
    skipped = (~hard).to(dtype)
    r_acc = r_acc.to(dtype).to(hard.device)
    rewards = torch.zeros(batch, n, dtype=dtype, device=hard.device)
    following = torch.zeros(batch, dtype=dtype, device=hard.device)
    for i in range(n - 1, -1, -1):
        following = beta * (skipped[:, i] - gamma1 * r_acc + gamma2 * following)
        rewards[:, i] = following
    return rewards


def action_weights(actions: Tensor, gates: Tensor, keep: float = 0.9, flip: float = 0.1) -> Tensor:
    """Eq. 10: ``p_i = 0.9`` where the action kept the head's gate (``a_i = g_i``), ``0.1`` where it was flipped.

    Example:
        >>> action_weights(torch.tensor([[1, 0, 1]]), torch.tensor([[1, 1, 1]]))
        tensor([[0.9000, 0.1000, 0.9000]])
    """
    hard_a, hard_g = _as_bool("actions", actions), _as_bool("gates", gates)
    _check_2d("actions", hard_a)
    _check_2d("gates", hard_g, hard_a.shape)
    same = hard_a == hard_g
    return torch.where(same, torch.full_like(same, keep, dtype=torch.float32),
                       torch.full_like(same, flip, dtype=torch.float32))


def action_probabilities(probs: Tensor, actions: Tensor) -> Tensor:
    """The head's probability of the action taken: ``S_L(i)`` where ``a_i = 1``, ``1 - S_L(i)`` where ``a_i = 0``.

    Example:
        >>> action_probabilities(torch.tensor([[0.8, 0.8]]), torch.tensor([[1, 0]]))
        tensor([[0.8000, 0.2000]])
    """
    hard = _as_bool("actions", actions)
    _check_2d("probs", probs)
    _check_2d("actions", hard, probs.shape)
    return torch.where(hard, probs, 1.0 - probs)


def paper_policy_loss(probs: Tensor, actions: Tensor, gates: Tensor, rewards: Tensor, keep: float = 0.9,
                      flip: float = 0.1) -> Tensor:
    """Eq. 9: ``J = sum_i (1/m) sum_j -p_i(j) * R_i(j)`` with ``p`` from Eq. 10, as a differentiable scalar.

    Reading of Eq. 9. As printed, ``p`` is the constant 0.9 or 0.1 and ``R`` does not depend on the head's
    weights, so the loss has no gradient path to the head at all. This implementation takes ``p`` as the
    constant 0.9 / 0.1 **in value** while carrying the gradient of the head's probability of the action taken,
    ``pi = S_L`` if executed else ``1 - S_L`` (a straight-through estimator: ``p + pi - pi.detach()``). The
    gradient of the loss with respect to ``S_L(i)`` is therefore ``-R_i / m`` for an executed gate and
    ``+R_i / m`` for a skipped one: gates whose action earned a positive reward become more likely to take
    it again, as in a policy gradient without the log. The learning rate ``l_r`` of Eq. 9 is the optimiser's.

    Args:
        probs: ``S_L``, the head's sigmoid output ``(batch, n)``, with gradient.
        actions: the taken actions ``(batch, n)`` (Eq. 5), 1 = execute.
        gates: the head's own decisions ``g`` ``(batch, n)``.
        rewards: ``R`` of Eq. 6 ``(batch, n)``; it is detached here.
        keep, flip: the two values of Eq. 10.

    Example:
        >>> probs = torch.tensor([[0.8, 0.3]], requires_grad=True)
        >>> loss = paper_policy_loss(probs, torch.tensor([[1, 1]]), torch.tensor([[1, 0]]),
        ...                          torch.tensor([[0.2, -0.1]]))
        >>> round(float(loss.detach()), 4), probs.grad is None
        (-0.17, True)
        >>> loss.backward(); probs.grad
        tensor([[-0.2000,  0.1000]])
    """
    _check_2d("probs", probs)
    _check_2d("rewards", rewards, probs.shape)
    weights = action_weights(actions, gates, keep, flip).to(probs.device, probs.dtype)
    taken = action_probabilities(probs, actions)
    p = weights + taken - taken.detach()
    return (-p * rewards.detach().to(probs.dtype)).mean(dim=0).sum()


def reinforce_loss(probs: Tensor, actions: Tensor, rewards_or_returns: Tensor,
                   baseline: Union[Tensor, float, None] = None, eps: float = 1e-6) -> Tensor:
    """REINFORCE with a baseline: ``-sum_i (1/m) sum_j (R_i(j) - b_i) * log pi(a_i(j))``, a Bernoulli policy.

    ``pi(a) = S_L`` for ``a = 1`` and ``1 - S_L`` for ``a = 0`` (clamped to ``[eps, 1 - eps]``). ``baseline`` is
    a float, a ``(n,)`` per-gate or a ``(batch, n)`` tensor; ``None`` uses the batch mean per gate (which is zero
    information for a batch of one: pass a running mean there, as ``rl_finetune.py`` does).

    Example:
        >>> probs = torch.tensor([[0.5], [0.5]], requires_grad=True)
        >>> loss = reinforce_loss(probs, torch.tensor([[1], [0]]), torch.tensor([[1.0], [0.0]]))
        >>> loss.backward(); probs.grad.flatten().tolist()
        [-0.5, -0.5]
    """
    _check_2d("probs", probs)
    _check_2d("rewards_or_returns", rewards_or_returns, probs.shape)
    returns = rewards_or_returns.detach().to(probs.dtype)
    if baseline is None:
        base = returns.mean(dim=0, keepdim=True)
    else:
        base = torch.as_tensor(baseline, dtype=probs.dtype, device=probs.device).detach()
        if base.dim() == 1:
            if base.shape != probs.shape[1:]:
                raise ValueError(f"a per-gate baseline must have shape ({probs.shape[1]},), got {tuple(base.shape)}")
            base = base.unsqueeze(0)
        elif base.dim() == 2:
            _check_2d("baseline", base, probs.shape)
        elif base.dim() != 0:
            raise ValueError(f"baseline must be a float, (n,) or (batch, n), got shape {tuple(base.shape)}")
    taken = action_probabilities(probs, actions).clamp(eps, 1.0 - eps)
    return (-(returns - base) * taken.log()).mean(dim=0).sum()


def bounded_probabilities(probs: Tensor, alpha: float = 0.8) -> Tensor:
    """``alpha * p + (1 - alpha) * (1 - p)``: sampling probabilities kept inside ``[1 - alpha, alpha]``.

    BlockDrop's bound (Wu et al. 2018, Section 3.3): exploration never stops, however sure the head is;
    ``alpha = 1`` is no bound.

    Example:
        >>> [[round(p, 4) for p in row] for row in bounded_probabilities(torch.tensor([[1.0, 0.0, 0.5]]), 0.8).tolist()]
        [[0.8, 0.2, 0.5]]
    """
    if not 0.5 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0.5, 1] (1 = no bound), got {alpha}")
    return alpha * probs + (1.0 - alpha) * (1.0 - probs)


def blockdrop_reward(correct: Tensor, used_cost: Tensor, wrong_penalty: float = 1.0) -> Tensor:
    """Per-image reward ``1 - used_cost^2`` when the prediction is correct, ``-wrong_penalty`` when it is not.

    BlockDrop's reward (Wu et al. 2018, Eq. 3) with ``used_cost`` the executed fraction of the cost (the blocks'
    share of a ``gate_costs`` model, in [0, 1]; BlockDrop counts blocks): a skip pays only on images it does not
    break, which is what makes the decisions depend on the input. Shapes ``(batch,)``.

    Example:
        >>> blockdrop_reward(torch.tensor([True, True, False]), torch.tensor([1.0, 0.5, 0.1]), 2.0).tolist()
        [0.0, 0.75, -2.0]
    """
    correct = torch.as_tensor(correct)
    if correct.dim() != 1 or used_cost.shape != correct.shape:
        raise ValueError(f"correct and used_cost must both have shape (batch,), got {tuple(correct.shape)} and "
                         f"{tuple(used_cost.shape)}")
    if wrong_penalty < 0:
        raise ValueError(f"wrong_penalty must be >= 0, got {wrong_penalty}")
    used = used_cost.detach().float()
    return torch.where(correct.bool(), 1.0 - used ** 2, torch.full_like(used, -float(wrong_penalty)))


def self_critical_loss(probs: Tensor, actions: Tensor, rewards: Tensor, baseline_rewards: Tensor,
                       entropy_weight: float = 0.0, eps: float = 1e-6) -> Tensor:
    """``-mean_b (R_b - R^greedy_b) * sum_i log pi(a_bi) - entropy_weight * mean_b sum_i H(pi_bi)``.

    A per-image policy gradient whose baseline is the reward of the greedy decisions on the same image
    (self-critical training, Rennie et al. 2017, as BlockDrop uses it): a sampled pattern is reinforced only
    when it does better than what the head would do at test time. ``probs`` are the sampling probabilities
    ``(batch, n)``; ``rewards`` and ``baseline_rewards`` are ``(batch,)``; the entropy (nats) bonus keeps the
    policy from collapsing early.

    Example:
        >>> probs = torch.tensor([[0.5, 0.5]], requires_grad=True)
        >>> loss = self_critical_loss(probs, torch.tensor([[1, 0]]), torch.tensor([1.0]), torch.tensor([0.0]))
        >>> loss.backward(); probs.grad.tolist()
        [[-2.0, 2.0]]
    """
    _check_2d("probs", probs)
    if rewards.shape != probs.shape[:1] or baseline_rewards.shape != probs.shape[:1]:
        raise ValueError(f"rewards and baseline_rewards must have shape ({probs.shape[0]},), got "
                         f"{tuple(rewards.shape)} and {tuple(baseline_rewards.shape)}")
    advantage = (rewards - baseline_rewards).detach().to(probs.dtype)
    log_taken = action_probabilities(probs, actions).clamp(eps, 1.0 - eps).log().sum(dim=1)
    loss = -(advantage * log_taken).mean()
    if entropy_weight:
        entropy = bernoulli_entropy(probs, eps, unit="nats").sum(dim=1).mean()
        loss = loss - entropy_weight * entropy
    return loss


class PolicyRollout(nn.Module):
    """One RL forward in a single ``nn.Module`` call (so DDP syncs the gradients of head and backbone).

    ``forward(x)`` runs the stem and the head, takes the hard gates at ``threshold`` (Eq. 1), samples actions
    (Eq. 5 with ``flip_prob``, or ``Bernoulli(S_L)`` with ``sampling="bernoulli"``) and runs the blocks under
    the actions with the training-mode mix of Eq. 4. Returns ``(logits, probs, gates, actions)``.

    Example:
        >>> import ofas_wrap
        >>> model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
        >>> logits, probs, gates, actions = PolicyRollout(model)(torch.randn(1, 3, 16, 16))
        >>> logits.shape, probs.shape, actions.dtype
        (torch.Size([1, 10]), torch.Size([1, 3]), torch.bool)
    """

    def __init__(self, model: nn.Module, flip_prob: float = 0.1, sampling: str = "explore",
                 threshold: Optional[float] = None, alpha: float = 1.0, greedy: bool = False) -> None:
        super().__init__()
        if sampling not in ("explore", "bernoulli"):
            raise ValueError(f"sampling must be 'explore' (Eq. 5) or 'bernoulli', got {sampling!r}")
        bounded_probabilities(torch.zeros(1), alpha)  # checks alpha
        self.model = model
        self.flip_prob = flip_prob
        self.sampling = sampling
        self.threshold = threshold
        self.alpha = alpha
        self.greedy = greedy

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """``(logits, probs, gates, actions)``; with ``greedy=True`` also the logits under the gates at T.

        With ``sampling="bernoulli"`` and ``alpha < 1`` the returned ``probs`` are the bounded sampling
        probabilities (the distribution the actions were drawn from, which the policy gradient needs).
        The greedy forward runs without gradient; BatchNorm layers should be in eval mode (frozen statistics),
        or it shifts their running statistics a second time.
        """
        features, probs = self.model.gate_probabilities(x)
        threshold = self.model.threshold if self.threshold is None else self.threshold
        gates = probs.detach() >= threshold
        if self.sampling == "explore":
            actions = explore_actions(gates, self.flip_prob)
        else:
            if self.alpha < 1.0:
                probs = bounded_probabilities(probs, self.alpha)
            actions = bernoulli_actions(probs)
        logits = self.model.forward_from_stem(features, actions.to(features.dtype))
        if not self.greedy:
            return logits, probs, gates, actions
        with torch.no_grad():
            greedy_logits = self.model.forward_from_stem(features.detach(), gates.to(features.dtype))
        return logits, probs, gates, actions, greedy_logits


def freeze_batchnorm_statistics(module: nn.Module) -> int:
    """Put every BatchNorm layer of ``module`` in eval mode: running statistics stay fixed, affine weights train.

    Call it after ``module.train()`` (which switches them back). Returns how many layers were frozen.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
        >>> freeze_batchnorm_statistics(net), net[1].training
        (1, False)
    """
    count = 0
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.eval()
            count += 1
    return count
