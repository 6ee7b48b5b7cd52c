"""Training speed options shared by every recipe: mixed precision, ``channels_last``, ``torch.compile`` and
stochastic depth that really skips the dropped blocks.

Measured on the development machines (2 AMD EPYC cores, AVX2 only): ``benchmarks/train_speed.py`` and
``docs/results/train_speed.md``. The recipes turn these into flags (``_training.build_parser``); this module holds
the mechanics so the benchmark times exactly what the recipes run.

Example:
    >>> survival_probabilities(4, 0.5)
    [0.875, 0.75, 0.625, 0.5]
"""

from __future__ import annotations

import contextlib
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
    "residual_output_norms",
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


def residual_output_norms(model: nn.Module) -> dict[int, nn.Module]:
    """gate index -> the BatchNorm that ends each gated block's residual branch (the last one registered in the
    block outside its shortcut: ``bn2`` of a BasicBlock, ``bn3`` of a Bottleneck). Scaling its affine parameters
    by ``p`` scales the branch by ``p``, which is Huang et al.'s test-time rule (Eq. 5). Blocks without one are
    left out."""
    found = {}
    for block in model.blocks:
        if block.gate_index < 0:
            continue
        shortcut = {id(m) for m in block.shortcut.modules()}
        norms = [m for m in block.block.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in shortcut and m.affine]
        if norms:
            found[block.gate_index] = norms[-1]
    return found


class StochasticDepth(nn.Module):
    """Train an OFAS model's backbone with stochastic depth; a dropped block is **not computed**.

    In training mode each gated block survives with its probability of :func:`survival_probabilities` (blocks
    that cannot be skipped always run); a dropped block runs its shortcut only, through the model's own skipping
    path (``OFASModel._run_inference``), so the compute is saved. ``mode="batch"`` draws one pattern per batch
    (whole-batch skips, the fastest); ``"sample"`` one per image (the block runs on the gathered survivors).
    Training does not rescale: what the network sees is exactly what an OFAS skip gives it. In eval mode the plain
    backbone runs at full depth with each block's residual branch scaled by its survival probability (Huang et
    al.'s test-time rule, folded into the branch's last BatchNorm while in eval mode, restored exactly for
    training); without it a full-depth network sees larger residual sums than it was trained on (measured on
    a ResNet-38 after 2 epochs at P = 0.5: 27.0 % unscaled, 39.2 % rescaled). :meth:`folded` applies the same
    scaling for saving the trained backbone.

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
        self._saved_affine: Optional[list[tuple[Tensor, Tensor, Tensor, Tensor]]] = None

    def _fold(self) -> None:
        if self._saved_affine is not None:
            return
        saved = []
        with torch.no_grad():
            for index, norm in residual_output_norms(self.model).items():
                saved.append((norm.weight, norm.bias, norm.weight.detach().clone(), norm.bias.detach().clone()))
                norm.weight.mul_(float(self.survival[index]))
                norm.bias.mul_(float(self.survival[index]))
        self._saved_affine = saved

    def _unfold(self) -> None:
        if self._saved_affine is None:
            return
        with torch.no_grad():
            for weight, bias, weight_copy, bias_copy in self._saved_affine:
                weight.copy_(weight_copy)
                bias.copy_(bias_copy)
        self._saved_affine = None

    def train(self, mode: bool = True) -> StochasticDepth:
        """Eval mode folds the survival probabilities into the branches; training mode restores them exactly."""
        super().train(mode)
        if mode:
            self._unfold()
        else:
            self._fold()
        return self

    @contextlib.contextmanager
    def folded(self) -> Iterator[nn.Module]:
        """The backbone with the survival probabilities folded in (for saving), restored afterwards."""
        was_folded = self._saved_affine is not None
        self._fold()
        try:
            yield self.model
        finally:
            if not was_folded:
                self._unfold()

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
