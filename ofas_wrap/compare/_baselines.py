"""The other ways of making a ResNet input-adaptive, built from the same adapted model as OFAS (the paper's Table
III) and the naive batched execution that per-sample routing must beat.

* :class:`EarlyExitResNet` -- early exit in the manner of BranchyNet (Teerapittayanon et al., ICPR 2016): an exit
  head (global average pool + linear) after every stage of the network but the last; at inference a sample leaves
  at the first exit whose softmax entropy is below a threshold, and the remaining stages are not computed.
  :func:`early_exit_loss` is its training loss, :func:`exit_decisions` the exit each sample takes. ``compare``'s
  ``early_exit`` method trains and deploys it.
* :class:`SkipNetStyle` -- block skipping in the manner of SkipNet's FFGate-I (Wang et al., ECCV 2018): a small
  gate network before *every* gated block, computed from that block's input, decides whether the block runs. The
  decision of block ``i`` cannot be known before block ``i - 1`` has finished: the control overhead of Section III
  / Table I of the OFAS paper. It reuses the very same blocks (and the same
  :meth:`ofas_wrap.GatedBlock.forward_routed` skipping) as the :class:`ofas_wrap.OFASModel` it wraps, so at a forced
  skip pattern both execute identical blocks and differ only in their controllers (``benchmarks/latency.py``).
* :class:`MaskedExecution` -- the naive way to run an OFAS model on a batch with per-sample gates: every block is
  computed for every sample and the result is masked.

Each wraps an :class:`ofas_wrap.OFASModel` (its modules shared, nothing copied; the OFAS head is not used except by
:class:`MaskedExecution`), is TorchScript-scriptable and keeps its data-dependent branches there. They run the blocks
as a plain chain, so a model whose blocks carry values across blocks (outer shortcuts, docs/surgery.md) is refused.
"""

import contextlib
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._config import check_threshold
from .._gating import forcing_gates
from .._model import OFASModel
from .._plan import count_flops

__all__ = [
    "EarlyExitResNet",
    "ExitHead",
    "FFGate",
    "MaskedExecution",
    "SkipNetStyle",
    "early_exit_loss",
    "exit_decisions",
    "softmax_entropy",
    "stage_ends",
]


def _check_wrappable(model: OFASModel, name: str) -> None:
    """These baselines run the blocks as a plain chain; a model whose links carry values across blocks (outer
    shortcuts, docs/surgery.md) needs ``OFASModel``'s own loop."""
    if not isinstance(model, OFASModel):
        raise TypeError(f"{name} wraps an ofas_wrap.OFASModel (ofas_wrap.adaptify(backbone) gives one), got "
                        f"{type(model).__name__}")
    if model.carries:
        raise ValueError(f"{name} runs the blocks as a plain chain, but this model has outer shortcuts that carry "
                         f"values across blocks ({len(model.plan.outer_shortcuts)} in model.plan.outer_shortcuts); "
                         "use it with a plain ResNet")


# ------------------------------------------------------------------------------------------------ SkipNet-style
class FFGate(nn.Module):
    """A feed-forward gate in the manner of SkipNet's FFGate-I: ``(B, C, H, W) -> (B,)`` probabilities.

    Max-pool 2x2, 3x3 conv (stride 1) + BN + ReLU, 3x3 conv (stride 2) + BN + ReLU, global average pool,
    linear to one logit, sigmoid (SkipNet uses a 2-way softmax, which is the same function). ``width`` is the
    number of channels of the two convs; SkipNet uses the block's own channel count, which is what the default
    ``min(in_channels, max_width)`` gives for the CIFAR ResNets (16/32/64 channels). For wide backbones
    (ResNet-50: 256-2048 channels) the cap keeps the gate far cheaper than a faithful copy would be, so any
    latency comparison with it is conservative (in SkipNet's favour).

    Example:
        >>> FFGate(16)(torch.randn(2, 16, 32, 32)).shape
        torch.Size([2])
    """

    def __init__(self, in_channels: int, width: Optional[int] = None, max_width: int = 64) -> None:
        super().__init__()
        width = min(in_channels, max_width) if width is None else int(width)
        if width < 1:
            raise ValueError(f"gate width must be positive, got {width}")
        self.pool = nn.MaxPool2d(2, ceil_mode=True)  # ceil_mode: tiny late-stage maps (1x1) stay valid
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(x)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return torch.sigmoid(self.fc(x)).flatten()


class _AlwaysOn(nn.Module):
    """The 'gate' of a block that always runs (``gate_index < 0``): probability one, no computation."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.ones(x.shape[0], dtype=x.dtype, device=x.device)


class SkipNetStyle(nn.Module):
    """SkipNet-style block skipping (FFGate-I): one gate network before every gated block.

    Wraps the stem, gated blocks and tail of an :class:`ofas_wrap.OFASModel` (shared modules, nothing is
    copied; the OFAS head is not used). Gate ``i`` sees the input of gated block ``i`` and decides, per
    sample, whether that block runs (``probability >= threshold``); a skipped block runs its shortcut, exactly
    as in OFAS (the block path is :meth:`ofas_wrap.GatedBlock.forward_routed` in evaluation mode and the
    straight-through mix of Eq. 4 in training mode).

    ``forced_gate_mask`` (bool ``(num_gates,)`` or ``(batch, num_gates)``, True = execute) overrides the
    decisions, as :meth:`ofas_wrap.OFASModel.forced_gates` does for OFAS, so both controllers can be timed at
    identical skip patterns. The gate networks are still computed when forced (their outputs are kept in
    ``last_probs``), because a real SkipNet must compute them to decide. On a scripted module set the
    attribute directly: ``scripted.forced_gate_mask = mask``. The scripted module always takes the inference
    path (the training branch is left out of the TorchScript graph, which halves its size and compile time).
    Its gates are untrained here: it measures the controller's cost, not a trained SkipNet's accuracy.

    Example:
        >>> import ofas_wrap
        >>> ofas = ofas_wrap.create_model("cifar:resnet20").eval()
        >>> skipnet = SkipNetStyle(ofas).eval()
        >>> with skipnet.forced_gates(torch.ones(ofas.num_gates, dtype=torch.bool)):
        ...     y = skipnet(torch.randn(1, 3, 32, 32))
        >>> y.shape, skipnet.last_probs.shape
        (torch.Size([1, 10]), torch.Size([1, 9]))
    """

    last_probs: Tensor
    last_gates: Tensor
    forced_gate_mask: Optional[Tensor]

    def __init__(self, model: OFASModel, threshold: float = 0.5, gate_width: Optional[int] = None,
                 max_gate_width: int = 64) -> None:
        super().__init__()
        _check_wrappable(model, "SkipNetStyle")
        if model.plan is None:
            raise ValueError("the OFAS model has no surgery plan (needed for the blocks' input channels)")
        threshold = check_threshold(threshold)
        self.stem = model.stem
        self.blocks = model.blocks
        self.tail = model.tail
        gates: list[nn.Module] = []
        in_shape = model.plan.stem_output_shape
        for block, plan in zip(model.blocks, model.plan.blocks):
            if block.gate_index >= 0:
                gates.append(FFGate(int(in_shape[0]), gate_width, max_gate_width))
            else:
                gates.append(_AlwaysOn())
            in_shape = plan.output_shape
        self.gates = nn.ModuleList(gates)
        self.num_gates = model.num_gates
        self.register_buffer("gate_threshold", torch.tensor(float(threshold)))
        self.last_probs = torch.zeros(0, self.num_gates)
        self.last_gates = torch.zeros(0, self.num_gates, dtype=torch.bool)
        self.forced_gate_mask = None
        self.train(model.training)

    def forward(self, x: Tensor) -> Tensor:
        features = self.stem(x)
        batch = features.shape[0]
        forced = self.forced_gate_mask
        forced_cpu = torch.zeros(0, dtype=torch.bool)
        if forced is not None:
            forced_cpu = forced.cpu().expand(batch, -1)
        probs: list[Tensor] = []
        decisions: list[Tensor] = []
        for gate, block in zip(self.gates, self.blocks):
            prob = gate(features)  # computed from this block's input: the per-block control of SkipNet
            index = block.gate_index
            if index < 0:
                features = block.forward_single(features, True)
            elif self.training and not torch.jit.is_scripting():  # scripted: inference only (smaller graph)
                if forced is None:
                    hard = (prob >= self.gate_threshold).to(prob.dtype)
                    gate_value = hard + prob - prob.detach()  # straight-through, as SkipNet's FFGate
                else:
                    gate_value = forced_cpu[:, index].to(device=prob.device, dtype=prob.dtype)
                probs.append(prob)
                decisions.append(gate_value.detach() > 0.5)
                features = block(features, gate_value)
            else:
                if forced is None:
                    run = (prob >= self.gate_threshold).cpu()  # one host synchronisation per block
                else:
                    run = forced_cpu[:, index]
                probs.append(prob)
                decisions.append(run)
                if batch == 1:  # the same plain branch as OFAS at batch 1
                    features = block.forward_single(features, bool(run[0]))
                else:
                    features = block.forward_routed(features, run, int(run.sum()))
        self.last_probs = torch.stack(probs, 1)
        self.last_gates = torch.stack(decisions, 1).cpu()
        return self.tail(features)

    @torch.jit.unused
    def forced_gates(self, mask: Tensor) -> contextlib.AbstractContextManager["SkipNetStyle"]:
        """Force a gate pattern (bool, ``(num_gates,)`` or ``(batch, num_gates)``, True = execute)."""
        return forcing_gates(self, mask, self.num_gates)


# ------------------------------------------------------------------------------------------- naive masking
class MaskedExecution(nn.Module):
    """The naive per-sample gating of an OFAS model: compute every block for every sample, mask the result.

    Same stem, head, blocks and tail as the wrapped :class:`ofas_wrap.OFASModel` (shared); the decisions come
    from the OFAS head (``probability >= threshold``) or from ``forced_gate_mask``. Its output equals the OFAS
    model's in evaluation mode, but nothing is saved by skipping -- this is the reference per-sample routing
    (gather / compute / scatter) has to beat on batches. Evaluation only.

    Example:
        >>> import ofas_wrap
        >>> ofas = ofas_wrap.create_model("cifar:resnet20").eval()
        >>> naive = MaskedExecution(ofas).eval()
        >>> x = torch.randn(4, 3, 32, 32)
        >>> bool(torch.allclose(naive(x), ofas(x), atol=1e-5))
        True
    """

    forced_gate_mask: Optional[Tensor]

    def __init__(self, model: OFASModel) -> None:
        super().__init__()
        _check_wrappable(model, "MaskedExecution")
        self.stem = model.stem
        self.head = model.head
        self.blocks = model.blocks
        self.tail = model.tail
        self.register_buffer("gate_threshold", model.gate_threshold.detach().clone())
        self.forced_gate_mask = None
        self.train(model.training)

    def forward(self, x: Tensor) -> Tensor:
        features = self.stem(x)
        probs = self.head(features)
        forced = self.forced_gate_mask
        if forced is None:
            run = probs >= self.gate_threshold
        else:
            run = forced.to(features.device).expand(features.shape[0], -1)
        for block in self.blocks:
            computed = block.after(block.block(features))
            if block.gate_index < 0:
                features = computed
            else:
                skipped = block.after(block.shortcut(features))
                keep = run[:, block.gate_index].reshape([-1] + [1] * (computed.dim() - 1))
                features = torch.where(keep, computed, skipped)
        return self.tail(features)


# ---------------------------------------------------------------------------------------------- early exit
def softmax_entropy(logits: Tensor) -> Tensor:
    """Entropy (nats) of the softmax of ``logits`` (batch, classes) -> (batch,), BranchyNet's exit criterion.

    Example:
        >>> [round(h, 4) for h in softmax_entropy(torch.tensor([[0.0, 0.0], [50.0, 0.0]])).tolist()]
        [0.6931, 0.0]
    """
    log_probs = F.log_softmax(logits, dim=1)
    return -(log_probs.exp() * log_probs).sum(1)


def exit_decisions(exit_logits: Sequence[Tensor], threshold: float) -> Tensor:
    """The exit each sample takes, from every exit's logits: the first exit whose softmax entropy is ``<
    threshold`` (nats), the last one otherwise; long of shape (batch,). What :class:`EarlyExitResNet` does at
    inference, computed from :meth:`EarlyExitResNet.forward_all`'s outputs (one pass gives every threshold).

    Example:
        >>> sure, unsure = torch.tensor([[9.0, 0.0]]), torch.tensor([[0.0, 0.0]])
        >>> exit_decisions([torch.cat([sure, unsure]), torch.zeros(2, 2)], 0.5).tolist()
        [0, 1]
    """
    if len(exit_logits) == 0:
        raise ValueError("exit_decisions needs the logits of at least one exit")
    last = len(exit_logits) - 1
    taken = torch.full((exit_logits[0].shape[0],), last, dtype=torch.long)
    for index in reversed(range(last)):
        leave = (softmax_entropy(exit_logits[index].float()) < threshold).cpu()
        taken = torch.where(leave, torch.full_like(taken, index), taken)
    return taken


def stage_ends(model: OFASModel) -> list[int]:
    """Where the early exits go: the index of each block after which the next block's output shape differs (a stage
    ends), from the model's surgery plan. Raises ``ValueError`` saying why when the model has no such boundary.

    Example:
        >>> import ofas_wrap
        >>> stage_ends(ofas_wrap.create_model("cifar:resnet20"))  # 3 stages of 3 blocks
        [2, 5]
    """
    plan = getattr(model, "plan", None)
    if plan is None or not plan.blocks:
        raise ValueError("the model has no surgery plan with blocks (ofas_wrap.adaptify gives one): the stages of "
                         "an early-exit network are read from it")
    shapes = [tuple(block.output_shape) for block in plan.blocks]
    if any(len(shape) != 3 for shape in shapes):
        raise ValueError(f"the blocks' outputs are not feature maps (channels, height, width): {shapes[:3]}...; an "
                         "exit head pools a feature map")
    ends = [index for index in range(len(shapes) - 1) if shapes[index] != shapes[index + 1]]
    if not ends:
        raise ValueError(f"no stage boundary: every one of the {len(shapes)} blocks gives {shapes[0]}; early exit "
                         "needs at least two stages (a block whose output shape differs from the previous one's)")
    return ends


class ExitHead(nn.Module):
    """An exit classifier: global average pool + linear (BranchyNet's branches are small convnets; this is the
    lightest form, the same as a ResNet's own classifier)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class _Stage(nn.Module):
    """Consecutive blocks of the adapted model, every one executed."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block.forward_single(x, True)
        return x


class EarlyExitResNet(nn.Module):
    """BranchyNet-style early exit on an adapted ResNet: an exit after every stage but the last.

    Built from an :class:`ofas_wrap.OFASModel` (any ResNet ``adaptify`` accepts without outer shortcuts): its stem,
    its blocks grouped into stages where the block output shape changes (:func:`stage_ends`) and its tail, shared,
    not copied (the OFAS head is not used). Exit ``i < num_exits - 1`` is a new :class:`ExitHead` after stage ``i``;
    the last exit is the model's own tail (pool + classifier).

    * ``forward_all(x)`` computes every stage and returns the logits of every exit (training, per-exit
      evaluation); train with :func:`early_exit_loss`.
    * ``forward(x)`` in evaluation mode (and always once scripted) is the early-exit inference: a sample leaves at
      the first exit whose softmax entropy is ``< threshold`` (nats; the last exit always answers). At batch 1 the
      remaining stages are really not computed; on a batch the samples that left are dropped from it.
      ``last_exit`` holds the exit index of every sample. ``threshold = 0`` never exits early (an entropy is never
      negative); ``threshold >= log(num_classes)`` leaves at the first exit. In training mode ``forward`` returns
      the last exit's logits.

    Example:
        >>> import ofas_wrap
        >>> model = EarlyExitResNet(ofas_wrap.create_model("cifar:resnet20"), threshold=float("inf")).eval()
        >>> y = model(torch.randn(1, 3, 32, 32))
        >>> y.shape, model.last_exit.tolist(), model.exit_blocks
        (torch.Size([1, 10]), [0], [3, 6, 9])
    """

    last_exit: Tensor
    __jit_ignored_attributes__ = ["input_size"]

    def __init__(self, model: OFASModel, threshold: float = 0.0) -> None:
        super().__init__()
        _check_wrappable(model, "EarlyExitResNet")
        ends = stage_ends(model)
        blocks = list(model.blocks)
        bounds = [0, *[end + 1 for end in ends], len(blocks)]
        self.stem = model.stem
        self.stages = nn.ModuleList([_Stage(blocks[a:b]) for a, b in zip(bounds, bounds[1:])])
        shapes = [tuple(model.plan.blocks[end].output_shape) for end in ends]
        was_training = model.tail.training
        with torch.no_grad():
            num_classes = int(model.tail.eval()(torch.zeros(1, *model.plan.blocks[-1].output_shape)).shape[-1])
        model.tail.train(was_training)
        self.exits = nn.ModuleList([*[ExitHead(int(shape[0]), num_classes) for shape in shapes], model.tail])
        self.num_exits = len(self.exits)
        self.num_classes = num_classes
        self.exit_blocks = list(bounds[1:])  # blocks executed when leaving at each exit
        self.threshold = float(threshold)
        self.last_exit = torch.zeros(0, dtype=torch.long)
        self.input_size = tuple(model.plan.input_size)
        self.__dict__["_model"] = model
        self.train(model.training)

    def forward_all(self, x: Tensor) -> list[Tensor]:
        """Logits of every exit, ``num_exits`` tensors of shape (batch, num_classes); every stage runs."""
        x = self.stem(x)
        outputs: list[Tensor] = []
        for stage, head in zip(self.stages, self.exits):
            x = stage(x)
            outputs.append(head(x))
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        if self.training and not torch.jit.is_scripting():
            return self.forward_all(x)[-1]
        x = self.stem(x)
        batch = x.shape[0]
        out = torch.zeros(batch, self.num_classes, dtype=x.dtype, device=x.device)
        exit_index = torch.full([batch], self.num_exits - 1, dtype=torch.long)
        active = torch.arange(batch, device=x.device)
        finished = False
        index = 0
        for stage, head in zip(self.stages, self.exits):
            if not finished:
                x = stage(x)
                logits = head(x)
                if index == self.num_exits - 1:
                    out.index_copy_(0, active, logits.to(out.dtype))
                    finished = True
                else:
                    leave = (softmax_entropy(logits) < self.threshold).cpu()
                    if batch == 1:  # a plain branch: the later stages are not computed
                        if bool(leave[0]):
                            out = logits
                            exit_index.fill_(index)
                            finished = True
                    else:
                        leaving = int(leave.sum())
                        if leaving > 0:
                            where = leave.nonzero().flatten().to(x.device)
                            out.index_copy_(0, active.index_select(0, where), logits.index_select(0, where))
                            exit_index.index_fill_(0, active.index_select(0, where).cpu(), index)
                            if leaving == x.shape[0]:
                                finished = True
                            else:
                                stay = (~leave).nonzero().flatten().to(x.device)
                                x = x.index_select(0, stay)
                                active = active.index_select(0, stay)
            index += 1
        self.last_exit = exit_index
        return out

    @torch.jit.unused
    def unwrap(self) -> nn.Module:
        """The plain backbone (its weights are shared with this model)."""
        return self._model.unwrap()

    @torch.jit.unused
    def exit_flops(self) -> list[int]:
        """FLOPs per sample when leaving at each exit: the stem, the stages so far and every exit head evaluated on
        the way (``torch.utils.flop_counter``), ``num_exits`` cumulative values."""
        was_training = self.training
        self.eval()
        totals: list[int] = []
        with torch.no_grad():
            x = torch.zeros(1, *self.input_size, device=next(self.parameters()).device)
            total, x = count_flops(self.stem, x)
            for stage, head in zip(self.stages, self.exits):
                flops, x = count_flops(stage, x)
                head_flops, _ = count_flops(head, x)
                total += flops + head_flops
                totals.append(total)
        self.train(was_training)
        return totals

    @torch.jit.unused
    def executed_flops(self, exits: Optional[Tensor] = None) -> Tensor:
        """FLOPs per sample for given exit indices (default ``last_exit``), float64 of shape (batch,)."""
        exits = self.last_exit if exits is None else exits
        table = torch.tensor(self.exit_flops(), dtype=torch.float64)
        return table[exits.long().cpu()]


def early_exit_loss(exit_logits: Sequence[Tensor], target: Tensor,
                    weights: Optional[Sequence[float]] = None) -> Tensor:
    """BranchyNet's training loss: ``sum_i w_i * cross_entropy(exit_i, target)`` (default: every ``w_i = 1``).

    Example:
        >>> logits = [torch.zeros(2, 10), torch.zeros(2, 10)]
        >>> round(float(early_exit_loss(logits, torch.tensor([1, 2]), weights=[0.5, 1.0])), 4)
        3.4539
    """
    if len(exit_logits) == 0:
        raise ValueError("early_exit_loss needs the logits of at least one exit")
    if weights is None:
        weights = [1.0] * len(exit_logits)
    if len(weights) != len(exit_logits):
        raise ValueError(f"{len(weights)} weights for {len(exit_logits)} exits")
    losses = [w * F.cross_entropy(logits, target) for w, logits in zip(weights, exit_logits)]
    return torch.stack(losses).sum()
