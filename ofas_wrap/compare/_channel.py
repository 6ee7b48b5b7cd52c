"""Structured channel pruning through Torch-Pruning (``pip install torch-pruning``), used as a library.

Only the residual blocks' **inner** channels are pruned: the stem, each block's last layer (whose output is added to
the shortcut), every projection shortcut and the classifier are left alone. Pruning every layer breaks the
parameter-free "option A" shortcut of the CIFAR ResNets (it pads channels with zeros, which Torch-Pruning's graph
cannot follow: a shape error at the classifier, seen with Torch-Pruning 1.6.1 on the released ResNet-56), and the
inner channels are where a basic block's FLOPs are. The pruned network is a plain ``nn.Module`` of the backbone's own
class with thinner layers.

:func:`prune_channels` prunes a copy to one ratio; :func:`channel_ratio_for_target` finds, by bisection on the
measured latency, the smallest ratio that reaches a latency target (channel pruning often saves far less time than
MACs: the pilot measured 0.95x the time at 0.53x the MACs).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["require_torch_pruning", "prunable_layers", "prune_channels", "channel_ratio_for_target"]

INSTALL_HINT = "channel pruning needs Torch-Pruning: pip install torch-pruning (or pip install 'ofas-wrap[prune]')"


def require_torch_pruning() -> Any:
    """The ``torch_pruning`` module, or an ImportError with the install hint."""
    try:
        import torch_pruning
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return torch_pruning


def prunable_layers(model: Any) -> list[str]:
    """Qualified names (in the backbone) of the layers whose output channels may be pruned: in each gated block,
    every convolution but the last one, and not the block's shortcut modules."""
    backbone = model.unwrap()
    names = {id(module): name for name, module in backbone.named_modules()}
    prunable = []
    for gated in model.blocks:
        if gated.gate_index < 0:
            continue
        shortcut = {id(m) for m in gated.shortcut.modules()}
        convs = [names[id(m)] for m in gated.block.modules()
                 if isinstance(m, nn.Conv2d) and id(m) not in shortcut and id(m) in names]
        prunable.extend(convs[:-1])
    return prunable


def prune_channels(model: Any, ratio: float, example: torch.Tensor) -> nn.Module:
    """A copy of ``model``'s backbone with ``ratio`` of the inner channels of each gated block removed (L2 magnitude,
    Torch-Pruning's ``MetaPruner``); deterministic for the same weights. The model is not changed."""
    tp = require_torch_pruning()
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"the pruning ratio must be in [0, 1), got {ratio}")
    prunable = set(prunable_layers(model))
    if not prunable:
        raise ValueError("no gated block has an inner convolution to prune (each block has one convolution, or none): "
                         "channel pruning does not apply to this model")
    backbone = copy.deepcopy(model.unwrap()).eval()
    if ratio == 0.0:
        return backbone
    ignored = [module for name, module in backbone.named_modules()
               if isinstance(module, (nn.Conv2d, nn.Linear)) and name not in prunable]
    pruner = tp.pruner.MetaPruner(backbone, example, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=ignored)
    pruner.step()
    return backbone


def channel_ratio_for_target(measure: Callable[[float], float], target_ms: float, max_ratio: float = 0.9,
                             steps: int = 6) -> tuple[float, float]:
    """The smallest pruning ratio whose measured latency (``measure(ratio)``, ms) is at or under ``target_ms``, by
    bisection over ``[0, max_ratio]``; returns ``(ratio, measured_ms)``. Raises ValueError when even ``max_ratio``
    is slower than the target (channel pruning cannot reach it on this machine).

    Example:
        >>> ratio, ms = channel_ratio_for_target(lambda r: 10.0 * (1 - r / 2), target_ms=8.0)
        >>> round(ratio, 2), ms <= 8.0
        (0.41, True)
    """
    top = measure(max_ratio)
    if top > target_ms:
        raise ValueError(f"pruning {max_ratio:.0%} of the inner channels still takes {top:.3f} ms, more than the "
                         f"target {target_ms:.3f} ms: channel pruning cannot reach it")
    low, high, best = 0.0, max_ratio, (max_ratio, top)
    for _ in range(steps):
        middle = (low + high) / 2
        measured = measure(middle)
        if measured <= target_ms:
            high, best = middle, (middle, measured)
        else:
            low = middle
    return best
