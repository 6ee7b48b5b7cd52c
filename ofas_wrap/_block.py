"""A residual block that can be skipped (Eq. 4): the unit the surgery cuts a backbone into.

TorchScript-scriptable, like the model that holds it: the gate is a real ``if`` branch for a batch of one and
per-sample routing for larger batches.
"""

from typing import Optional

import torch
from torch import Tensor, nn

from ._gating import mix_gated

__all__ = ["GatedBlock", "CarryNothing"]


class CarryNothing(nn.Module):
    """The link of a plain chain of blocks: nothing is carried across blocks, ``(x, carried)`` pass through.

    Where an outer shortcut spans several blocks, the surgery's links (``torch.fx`` graphs) take and return the
    list ``carried`` instead: the values the backbone computed before a block and adds back after a later one.
    """

    def forward(self, x: Tensor, carried: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        return x, carried


class GatedBlock(nn.Module):
    """A residual block that can be skipped; when skipped its shortcut runs instead (Eq. 4).

    ``block`` is the backbone's own module (not a copy); ``shortcut`` computes what the block's shortcut
    computes (``nn.Identity`` or the projection path); ``after`` is whatever the backbone runs between this
    block and the next one (usually nothing). ``gate_index`` is the column of the head's output that gates
    this block, or -1 for a block that always runs.

    ``link`` is that computation instead when it reads or keeps values across blocks (an outer shortcut's input,
    added back after a later block): ``(x, carried) -> (x, carried)``, run by the model after this block (``after``
    is then the identity); :class:`CarryNothing` in a plain chain.
    """

    def __init__(self, name: str, block: nn.Module, shortcut: nn.Module, gate_index: int,
                 after: Optional[nn.Module] = None, link: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.name = name
        self.block = block
        self.shortcut = shortcut
        self.after = after if after is not None else nn.Identity()
        self.link = link if link is not None else CarryNothing()
        self.gate_index = gate_index
        self.identity_shortcut = isinstance(shortcut, nn.Identity)

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:
        """Training form: ``gate`` is a float ``(batch,)`` tensor (0/1 forward value, straight-through).

        The block computes its own projection; the separate shortcut call (needed for the mix and the gate's
        straight-through gradient) must not update the projection's BatchNorm statistics a second time, so its
        buffers are restored after it. With every gate open and no gradient to the gates, it is not run at all.
        """
        if self.gate_index < 0:
            return self.after(self.block(x))
        block_out = self.block(x)
        if self.identity_shortcut:
            return self.after(mix_gated(gate, block_out, x))
        if not gate.requires_grad and bool((gate == 1).all()):
            return self.after(block_out)
        return self.after(mix_gated(gate, block_out, self._shortcut_keeping_statistics(x)))

    @torch.jit.unused
    def _shortcut_keeping_statistics(self, x: Tensor) -> Tensor:
        # the shortcut runs on throw-away copies of its buffers (running statistics, step counters); the originals
        # are put back untouched (not copied into: autograd may have saved them for the backward pass)
        swapped = []
        for module in self.shortcut.modules():
            for name, buffer in list(module.named_buffers(recurse=False)):
                swapped.append((module, name, buffer))
                setattr(module, name, buffer.clone())
        try:
            return self.shortcut(x)
        finally:
            for module, name, buffer in swapped:
                setattr(module, name, buffer)

    def forward_single(self, x: Tensor, run: bool) -> Tensor:
        """Inference for a batch of one: a plain branch, the skipped block is not computed."""
        if run or self.gate_index < 0:
            return self.after(self.block(x))
        return self.after(self.shortcut(x))

    def forward_routed(self, x: Tensor, run: Tensor, executed: int) -> Tensor:
        """Inference for a batch: ``run`` is a bool ``(batch,)`` tensor on the CPU, ``executed`` its count.

        The block runs only on the samples that execute it (gather, compute, scatter); the others take the
        shortcut. When all or none of the batch execute it, the batch goes through whole.
        """
        if self.gate_index < 0:
            executed = x.shape[0]
        if executed == 0:
            return self.after(self.shortcut(x))
        batch = x.shape[0]
        partial = executed < batch
        inputs = x
        run_index = torch.empty(0, dtype=torch.long)
        if partial:
            run_index = run.nonzero().flatten().to(x.device)
            inputs = x.index_select(0, run_index)
        computed = self.block(inputs)  # the block's only call site keeps the scripted graph small
        if not partial:
            return self.after(computed)
        if self.identity_shortcut:
            out = x.index_copy(0, run_index, computed)
        else:
            skip_index = (~run).nonzero().flatten().to(x.device)
            skipped = self.shortcut(x.index_select(0, skip_index))
            out = computed.new_empty([batch] + list(computed.shape[1:]))
            out.index_copy_(0, skip_index, skipped)
            out.index_copy_(0, run_index, computed)
        return self.after(out)
