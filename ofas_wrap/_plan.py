"""The surgery plan: what adaptify found and inserted, with shapes and FLOPs per sample."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["BlockPlan", "OuterShortcutPlan", "SurgeryPlan", "count_flops", "FLOPS_NOTE"]

# said once under every table that prints FLOPs: torchvision and many papers list multiply-adds (ResNet-50: 4.09
# "GFLOPS"), torch.utils.flop_counter counts 2 per multiply-add (8,178 MFLOPs for the same network)
FLOPS_NOTE = "FLOPs = 2 x multiply-adds (torch.utils.flop_counter); tables that list multiply-adds show half"


def count_flops(module: nn.Module, *inputs: Tensor) -> tuple[int, Tensor]:
    """FLOPs of one forward of ``module`` (``torch.utils.flop_counter``: 2 per multiply-add) and its output."""
    with FlopCounterMode(display=False) as counter:
        output = module(*inputs)
    return int(counter.get_total_flops()), output


def _executed_flops(fixed: float, blocks: Iterable[tuple[bool, int, float, float]], gates: Tensor) -> Tensor:
    """FLOPs per sample under bool ``gates`` of shape (batch, num_gates) or (num_gates,): ``fixed`` (stem, head,
    tail), each ungated block's ``flops``, and each gated block's ``flops`` when its gate runs it, ``skip_flops``
    when it is skipped. ``blocks`` are ``(gated, gate_index, flops, skip_flops)``, from a plan or a saved config.

    Example:
        >>> _executed_flops(10, [(False, -1, 5, 0), (True, 0, 4, 1)], torch.tensor([[True], [False]])).tolist()
        [19.0, 16.0]
    """
    gates = torch.as_tensor(gates).bool()
    if gates.dim() == 1:
        gates = gates.unsqueeze(0)
    total = torch.full((gates.shape[0],), float(fixed), dtype=torch.float64)
    for gated, gate_index, flops, skip_flops in blocks:
        if not gated:
            total += flops
        else:
            run = gates[:, gate_index].to(torch.float64)
            total += run * flops + (1 - run) * skip_flops
    return total


@dataclass
class BlockPlan:
    """One residual block found in the backbone."""

    name: str
    shortcut: str  # "identity" or "projection"
    gated: bool
    gate_index: int  # column of the head's output, -1 when not gated
    flops: int  # per sample, at the plan's input size, when the block runs
    skip_flops: int  # per sample when it is skipped (the projection shortcut; 0 for identity)
    output_shape: tuple[int, ...] = ()
    nested: list[str] = field(default_factory=list)


@dataclass
class OuterShortcutPlan:
    """A residual addition around several blocks (a RoR stage or root shortcut, a long skip, a residual adapter):
    its blocks are gated, it is not; it adds its input back around whatever they did, run or skipped."""

    module: str  # the module whose forward holds the addition ("" for the model's own forward)
    add: str  # the addition's node in the traced graph
    shortcut: str  # "identity" or "projection"
    blocks: list[str]  # the blocks it spans, in order


@dataclass
class SurgeryPlan:
    """The plan of an adapted model; iterating it yields one :class:`BlockPlan` per block, in order."""

    input_size: tuple[int, int, int]
    stem_nodes: list[str]
    stem_output_shape: tuple[int, ...]
    stem_flops: int
    blocks: list[BlockPlan]
    tail_flops: int
    head_variant: str
    head_params: int
    head_flops: int
    outer_shortcuts: list[OuterShortcutPlan] = field(default_factory=list)

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index):
        return self.blocks[index]

    @property
    def num_gates(self) -> int:
        return sum(1 for b in self.blocks if b.gated)

    @property
    def total_flops(self) -> int:
        """FLOPs per sample with every block executed (head included)."""
        return self.stem_flops + self.head_flops + sum(b.flops for b in self.blocks) + self.tail_flops

    @property
    def backbone_flops(self) -> int:
        return self.total_flops - self.head_flops

    def executed_flops(self, gates: Tensor) -> Tensor:
        """FLOPs per sample under bool ``gates`` of shape (batch, num_gates) or (num_gates,)."""
        return _executed_flops(self.stem_flops + self.head_flops + self.tail_flops,
                               [(b.gated, b.gate_index, b.flops, b.skip_flops) for b in self.blocks], gates)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """The plan as a text table (what ``ofas-wrap inspect`` prints)."""
        c, h, w = self.input_size
        lines = [
            f"input size: {c}x{h}x{w}",
            f"stem: {len(self.stem_nodes)} ops ({', '.join(self.stem_nodes[:6])}"
            f"{', ...' if len(self.stem_nodes) > 6 else ''}) -> {_shape(self.stem_output_shape)}, "
            f"{self.stem_flops / 1e6:.2f} MFLOPs",
            "",
            f"{'#':>3}  {'block':<28} {'shortcut':<10} {'output':<14} {'MFLOPs':>9} {'skip MFLOPs':>11}  gated",
        ]
        for index, block in enumerate(self.blocks):
            gate = f"yes (gate {block.gate_index})" if block.gated else "no"
            lines.append(
                f"{index:>3}  {block.name:<28} {block.shortcut:<10} {_shape(block.output_shape):<14} "
                f"{block.flops / 1e6:>9.2f} {block.skip_flops / 1e6:>11.2f}  {gate}"
            )
        lines += self._outer_shortcut_lines()
        lines += [
            "",
            f"tail: {self.tail_flops / 1e6:.2f} MFLOPs",
            f"OFAS head inserted after the stem: OFAS-{self.head_variant}, {self.stem_output_shape[0]} -> "
            f"{self.num_gates} gates, {self.head_params:,} parameters, {self.head_flops / 1e6:.3f} MFLOPs",
            f"total: {self.total_flops / 1e6:.2f} MFLOPs per sample with every block executed "
            f"(backbone {self.backbone_flops / 1e6:.2f})",
            FLOPS_NOTE,
        ]
        return "\n".join(lines)

    def _outer_shortcut_lines(self) -> list[str]:
        if not self.outer_shortcuts:
            return []
        index = {block.name: position for position, block in enumerate(self.blocks)}
        lines = ["", "outer shortcuts (not gated; each adds its input back around the blocks it spans, run or "
                 "skipped):"]
        for outer in self.outer_shortcuts:
            first, last = outer.blocks[0], outer.blocks[-1]
            lines.append(f"     {_where(outer):<28} {outer.shortcut:<10} blocks {index[first]}-{index[last]} "
                         f"({first} .. {last})")
        return lines

    def __str__(self) -> str:
        return self.table()


def _where(outer: OuterShortcutPlan) -> str:
    return f"{outer.module or 'forward'} ({outer.add})"


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)
