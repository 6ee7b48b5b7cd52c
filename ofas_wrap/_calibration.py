"""Head temperature: turn the threshold T from a cliff into a knob, without changing the model's decisions at 0.5.

A trained head often puts every output ``S_L`` (Eq. 3) in a narrow band (the paper's recipe on Fashion-MNIST:
p5-p95 = 0.495-0.555), so all gates switch between two neighbouring thresholds and accuracy falls off a cliff.
Dividing the head's last pre-sigmoid activations by one temperature ``t`` (temperature scaling, Guo et al. 2017)
spreads the outputs: gate = ``sigmoid(z / t) >= T`` holds iff ``z >= t * logit(T)``, so

- every decision at T = 0.5 stays exactly as it was (``z >= 0``), and the order of the images under each gate and
  of the gates under each image is unchanged: the set of reachable (accuracy, cost) points is the same;
- a threshold T of the calibrated model is the threshold ``sigmoid(t * logit(T))`` of the uncalibrated one, so the
  transition that used to fit between T = 0.50 and 0.52 is spread over most of (0, 1).

The temperature is one number for all gates, chosen on validation images so that the central ``coverage`` of the
head's pre-sigmoid values lands inside ``[(1 - coverage) / 2, (1 + coverage) / 2]`` after the division. It is folded
into the head's last linear layer, so saved files, TorchScript and ONNX exports need nothing new.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["head_temperature", "fold_head_temperature", "calibrate_head"]

_EPS = 1e-6


def head_temperature(outputs: Tensor, coverage: float = 0.9) -> float:
    """The temperature ``t`` that spreads the central ``coverage`` of head outputs over
    ``[(1 - coverage) / 2, (1 + coverage) / 2]`` while keeping 0.5 fixed (see the module docstring).

    ``outputs`` are sigmoid outputs ``S_L`` in (0, 1), any shape (all gates pooled: one temperature keeps the
    gates' relative order). ``t < 1`` stretches a narrow band, ``t > 1`` compresses saturated outputs.

    Example:
        >>> round(head_temperature(torch.tensor([0.49, 0.5, 0.51])), 3)  # a band of +-0.01 around 0.5
        0.012
    """
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")
    if outputs.numel() == 0:
        raise ValueError("no head outputs to calibrate on: pass at least one batch of validation images")
    logits = torch.logit(outputs.detach().double().flatten().clamp(_EPS, 1 - _EPS))
    if not torch.isfinite(logits).all():
        raise ValueError("the head's outputs contain NaN: calibrate a model whose head works")
    low, high = torch.quantile(logits, torch.tensor([(1 - coverage) / 2, (1 + coverage) / 2], dtype=logits.dtype))
    reach = max(abs(float(low)), abs(float(high)))
    if reach < 1e-9:
        raise ValueError("every head output is 0.5: no temperature can spread them (is the head trained?)")
    return reach / math.log((1 + coverage) / (1 - coverage))  # logit((1 + coverage) / 2)


def _last_linear(head: nn.Module) -> nn.Linear:
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(head).__name__} has no nn.Linear to fold a temperature into")
    return linears[-1]


def fold_head_temperature(head: nn.Module, temperature: float) -> None:
    """Divide the head's last linear layer (weight and bias) by ``temperature``, in place: ``sigmoid(z) ->
    sigmoid(z / temperature)`` for every gate. Decisions at T = 0.5 are unchanged."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    last = _last_linear(head)
    with torch.no_grad():
        last.weight.div_(temperature)
        if last.bias is not None:
            last.bias.div_(temperature)


def calibrate_head(model: nn.Module, batches: Iterable, coverage: float = 0.9) -> float:
    """Choose the head temperature on ``batches`` (validation images, never the test images you report; each an
    image tensor or an ``(images, labels)`` pair) and fold it into ``model.head``. Returns the temperature.

    Example:
        >>> import ofas_wrap
        >>> model = ofas_wrap.adaptify(ofas_wrap.models.cifar_resnet(8)).eval()
        >>> t = ofas_wrap.calibrate_head(model, [torch.randn(8, 3, 32, 32)])
        >>> t > 0
        True
    """
    if not hasattr(model, "gate_probabilities") or not hasattr(model, "head"):
        raise TypeError(f"calibrate_head needs an OFASModel (from ofas_wrap.adaptify), got {type(model).__name__}")
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with torch.no_grad():
            for batch in batches:
                images = batch[0] if isinstance(batch, (tuple, list)) else batch
                outputs.append(model.gate_probabilities(images)[1].float().cpu())
    finally:
        model.train(was_training)
    temperature = head_temperature(torch.cat(outputs) if outputs else torch.zeros(0), coverage)
    fold_head_temperature(model.head, temperature)
    return temperature
