"""Training speed options shared by every recipe: mixed precision, ``channels_last``, ``torch.compile`` and
stochastic depth that really skips the dropped blocks.

Measured on the development machines (2 AMD EPYC cores, AVX2 only): ``benchmarks/train_speed.py`` and
``docs/results/train_speed.md``. The recipes turn these into flags (``training.build_parser``); this module holds
the mechanics so the benchmark times exactly what the recipes run.

Example:
    >>> survival_probabilities(4, 0.5)
    [0.875, 0.75, 0.625, 0.5]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

__all__ = [
    "MIXED_PRECISION_CHOICES",
    "bf16_supported",
    "resolve_mixed_precision",
    "as_channels_last",
    "ChannelsLastLoader",
    "compile_units",
    "compile_in_place",
    "uncompile",
    "survival_probabilities",
    "StochasticDepth",
    "recalibrate_batchnorm",
]

MIXED_PRECISION_CHOICES = ("no", "bf16")


# ------------------------------------------------------------------------------------------ mixed precision
def bf16_supported(device: str = "cpu") -> bool:
    """Whether bf16 autocast has native kernels here (CPU: AVX512-BF16 or AMX, as oneDNN reports).

    Without them CPU autocast in bf16 still runs, emulated, and is many times *slower* than fp32 (measured: 10
    against 135 img/s for a ResNet-38 training step on an AVX2-only CPU), so the recipes fall back to fp32.
    """
    if device != "cpu":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def resolve_mixed_precision(requested: Optional[str], device: str = "cpu") -> tuple[str, Optional[str]]:
    """The mixed precision to hand to ``Accelerator`` and a note to print once (or ``None``).

    ``requested`` is the ``--mixed-precision`` flag; ``None`` takes ``accelerate launch --mixed_precision``
    (its ``ACCELERATE_MIXED_PRECISION`` variable), else ``"no"``. bf16 without native support becomes ``"no"``.

    Example:
        >>> resolve_mixed_precision("no")
        ('no', None)
    """
    value = requested if requested is not None else os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    value = value.strip().lower()
    if value == "bf16" and not bf16_supported(device):
        return "no", (f"note: this {device.upper()} has no native bf16 kernels (AVX512-BF16/AMX), where bf16 autocast "
                      "is emulated and several times slower than fp32: training in fp32 instead")
    return value, None


# ------------------------------------------------------------------------------------------- channels_last
def as_channels_last(batch: Any) -> Any:
    """The batch with its 4-d image tensors in ``channels_last`` memory format (labels untouched)."""
    if isinstance(batch, Tensor):
        return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(as_channels_last(item) for item in batch)
    return batch


class ChannelsLastLoader:
    """An evaluation loader whose image batches come in ``channels_last`` (iteration and ``len`` only)."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator:
        return (as_channels_last(batch) for batch in self.loader)

    def __len__(self) -> int:
        return len(self.loader)


# ------------------------------------------------------------------------------------------------ compile
def compile_units(module: nn.Module) -> list[nn.Module]:
    """The modules ``--compile`` compiles in place (``nn.Module.compile``; state-dict keys unchanged).

    A module that routes in Python (:class:`StochasticDepth`) names its static parts with ``compile_units()``, so
    a changing skip pattern never triggers a recompilation; anything else is compiled whole.
    """
    units = getattr(module, "compile_units", None)
    return list(units()) if callable(units) else [module]


def compile_in_place(modules: Sequence[nn.Module]) -> None:
    """``nn.Module.compile`` each module, allowing a recompilation per distinct block shape and mode.

    The blocks of a ResNet share one ``forward``; dynamo keys its cache on that code, and the stages (16, 32, 64
    channels), the projection blocks, train and eval mode and a last partial batch each need a graph: more than
    dynamo's default limit of 8, past which it silently runs the rest eagerly.
    """
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    for module in modules:
        module.compile()


def uncompile(modules: Sequence[nn.Module]) -> None:
    """Undo ``nn.Module.compile`` (the eager fallback when compilation fails on the first step)."""
    for module in modules:
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None


# ------------------------------------------------------------------------------------------ stochastic depth
def survival_probabilities(num_blocks: int, drop_path: float) -> list[float]:
    """Huang et al. (2016), Eq. 4: block l of L survives with ``p_l = 1 - l / L * P`` (linear decay to 1 - P)."""
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"--drop-path must be in [0, 1), got {drop_path}")
    return [1.0 - (index + 1) / num_blocks * drop_path for index in range(num_blocks)]


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, batches: Iterable, num_batches: int) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics as the cumulative average over ``num_batches`` batches of
    ``batches`` (images, ...) run through ``module`` in training mode without gradients ("precise BN"); the
    module is left in eval mode, its weights unchanged.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
        >>> _ = recalibrate_batchnorm(net, [(torch.randn(4, 1, 3, 3),)], 1)
        >>> net.training
        False
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: every batch weighs the same
    module.train()
    try:
        for index, batch in enumerate(batches):
            if index >= num_batches:
                break
            module(batch[0] if isinstance(batch, (list, tuple)) else batch)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        module.eval()
    return module


class StochasticDepth(nn.Module):
    """Train an OFAS model's backbone with stochastic depth; a dropped block is **not computed**.

    In training mode each gated block survives with its probability of :func:`survival_probabilities` (blocks
    that cannot be skipped always run); a dropped block runs its shortcut only, through the model's own skipping
    path (``OFASModel._run_inference``), so the compute is saved. ``mode="batch"`` draws one pattern per batch
    (whole-batch skips, the fastest); ``"sample"`` one per image (the block runs on the gathered survivors).
    Training does not rescale: what the network sees is exactly what an OFAS skip gives it. In eval mode the plain
    backbone runs at full depth. Its BatchNorm running statistics were gathered with blocks dropped, which a
    full-depth pass does not match: :func:`recalibrate_batchnorm` re-estimates them at full depth before evaluating
    and saving (measured on a ResNet-38 after 6 of 30 epochs at P = 0.5, 2,000 validation images: 55.8 % as
    trained, 60.7 % with Huang et al.'s test-time rescaling of the branches, 68.5 % recalibrated, 68.1 % both).

    The draws come from a generator seeded by ``seed`` and a counter saved in the state dict, so a resumed run
    draws the same patterns as an uninterrupted one, and every DDP process draws the same batch pattern.
    """

    def __init__(self, model: nn.Module, drop_path: float, mode: str = "batch", seed: int = 0, rank: int = 0) -> None:
        super().__init__()
        if mode not in ("batch", "sample"):
            raise ValueError(f"stochastic depth mode must be 'batch' or 'sample', got {mode!r}")
        self.model = model
        self.mode = mode
        self.seed = int(seed) + (1_000_003 * rank if mode == "sample" else 0)
        survival = survival_probabilities(len(model.blocks), drop_path)
        per_gate = torch.ones(model.num_gates)
        for position, block in enumerate(model.blocks):
            if block.gate_index >= 0:
                per_gate[block.gate_index] = survival[position]
        self.register_buffer("survival", per_gate, persistent=False)
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64))

    def compile_units(self) -> list[nn.Module]:
        parts: list[nn.Module] = [self.model.stem, self.model.tail]
        for block in self.model.blocks:
            parts.append(block.block)
            if not isinstance(block.shortcut, nn.Identity):
                parts.append(block.shortcut)
        return parts

    def sample_keep(self, batch: int) -> Tensor:
        """The bool ``(batch, num_gates)`` keep pattern of the next training step (advances the counter)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_033 + int(self.draws))
        self.draws += 1
        rows = 1 if self.mode == "batch" else batch
        keep = torch.rand(rows, self.survival.numel(), generator=generator) < self.survival.cpu()
        return keep.expand(batch, -1)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return self.model.unwrap()(x)
        keep = self.sample_keep(x.shape[0])
        self.model.last_gates = keep
        return self.model._run_inference(self.model.stem(x), keep)
