"""The surgery: find the residual blocks of a backbone, check everything, and cut it into the parts of an OFAS
model (stem, head, gated blocks, tail, plan). It imports no model class: :func:`ofas_wrap.adaptify` (``_model.py``)
builds the :class:`ofas_wrap.OFASModel` from these parts."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple, Optional

import torch
import torch.fx as fx
from torch import nn

from ._block import GatedBlock
from ._config import OFASConfig
from ._discovery import ResidualBlock, find_residual_blocks, opaque_modules, trace_with_blocks_as_leaves
from ._errors import SurgeryError
from ._head import OFASHead, resolve_variant
from ._plan import BlockPlan, SurgeryPlan, count_flops
from .models import default_input_size
from .models._specs import input_size_is_known

__all__ = ["BackboneCut", "cut_backbone"]


class BackboneCut(NamedTuple):
    """What the surgery cuts a backbone into: the arguments of :class:`ofas_wrap.OFASModel`, in its order."""

    stem: nn.Module
    head: OFASHead
    blocks: list[GatedBlock]
    tail: nn.Module
    threshold: float
    backbone: nn.Module
    plan: SurgeryPlan
    config: dict


def cut_backbone(
    model: nn.Module,
    variant: str = "auto",
    threshold: float = 0.5,
    gate_downsample: bool = True,
    hidden_act: str = "none",
    detach_input: bool = True,
    gate_bias_init: Optional[float] = None,
    input_size: Optional[Sequence[int]] = None,
    leaf_modules: Sequence[type] = (),
    pool_grid: int = 1,
) -> BackboneCut:
    """The surgery of :func:`ofas_wrap.adaptify` (which documents the arguments): check the settings, find the
    residual blocks in the ``torch.fx`` graph, cut ``model`` into stem, gated blocks and tail, build the head and
    profile shapes and FLOPs. Returns the parts of the OFAS model; ``model`` itself is not changed.

    ``adaptify`` checks that ``model`` is a plain ``nn.Module`` first; this module imports no model class.
    """
    if input_size is not None and not isinstance(input_size, (str, bytes)):
        try:
            input_size = tuple(int(s) for s in input_size)  # torch.Size, numpy integers, lists
        except (TypeError, ValueError):
            pass  # OFASConfig names the field and the value
    settings = OFASConfig(variant=variant, threshold=threshold, gate_downsample=gate_downsample,
                          hidden_act=hidden_act, detach_input=detach_input, gate_bias_init=gate_bias_init,
                          input_size=input_size, pool_grid=pool_grid)
    leaf_modules = tuple(leaf_modules)
    for leaf in leaf_modules:
        if not (isinstance(leaf, type) and issubclass(leaf, nn.Module)):
            raise TypeError(f"leaf_modules must hold nn.Module classes, got {leaf!r}")
    if settings.input_size is None:  # the backbone's own size, checked as a given one is
        settings = settings.replace(input_size=tuple(int(s) for s in default_input_size(model)))
    size = settings.input_size

    found = find_residual_blocks(model, leaf_modules)
    if not found:
        opaque = opaque_modules(model, leaf_modules)
        hidden = ""
        if opaque:
            listed = ", ".join(f"{name} (x{count})" for name, count in sorted(opaque.items()))
            hidden = (f" The trace could not look into {listed}: these are in leaf_modules= or marked not traceable "
                      "by timm (timm.layers.register_notrace_module; NF-ResNets' NormFreeBlock, whose scaled "
                      "residual out * alpha + shortcut is inside it, is one), so additions inside them are "
                      "invisible and their blocks cannot be gated.")
        raise SurgeryError(
            f"no residual addition was found in {type(model).__name__}: OFAS gates residual blocks "
            "(x + F(x)), so it needs a ResNet-like model. If the blocks sit inside a module passed in "
            f"leaf_modules=, remove it from there.{hidden}"
        )
    graph = trace_with_blocks_as_leaves(model, [b.name for b in found], leaf_modules)
    stem, links, tail, stem_nodes = _split_chain(model, graph, found)
    # code that branches on self.training is frozen into a trace: trace the other mode too, and where the two
    # differ, run the graph of the mode the adapted model is in (as torchvision's feature extraction does)
    with _mode(model, not model.training):
        other = trace_with_blocks_as_leaves(model, [b.name for b in found], leaf_modules)
    other_stem, other_links, other_tail, _ = _split_chain(model, other, found)
    stem = _by_mode(stem, other_stem, model.training)
    tail = _by_mode(tail, other_tail, model.training)
    links = [_by_mode(link, other_link, model.training) for link, other_link in zip(links, other_links)]

    gated_blocks: list[GatedBlock] = []
    gate_index = 0
    for block, after in zip(found, links):
        gated = gate_downsample or block.shortcut == "identity"
        shortcut: nn.Module = nn.Identity()
        if block.shortcut_graph is not None:
            shortcut = fx.GraphModule(model, block.shortcut_graph, class_name="Shortcut")
        gated_blocks.append(GatedBlock(block.name, block.module, shortcut, gate_index if gated else -1, after))
        gate_index += int(gated)
    if gate_index == 0:
        raise SurgeryError("every residual block has a projection shortcut and gate_downsample=False: "
                           "nothing to gate; use gate_downsample=True")

    depth = _weighted_depth(model, gated_blocks)
    resolved = resolve_variant(variant, depth)

    def profile(size):
        example = torch.zeros(1, *size, device=_device_of(model), dtype=_dtype_of(model))
        stem_flops, features = count_flops(stem, example)
        stem_shape = tuple(features.shape[1:])
        if features.dim() != 4:
            raise SurgeryError(
                f"the stem's output has shape {tuple(features.shape)}; the OFAS head expects a (batch, "
                "channels, height, width) feature map after the stem"
            )
        head = OFASHead(features.shape[1], gate_index, resolved, hidden_act, detach_input, gate_bias_init,
                        settings.pool_grid)
        head.to(device=features.device, dtype=features.dtype)
        head_flops, _ = count_flops(head.eval(), features)
        block_plans = []
        for gated_block, block in zip(gated_blocks, found):
            skip_flops, skipped = count_flops(gated_block.shortcut, features)
            block_flops, features = count_flops(gated_block.block, features)
            if tuple(skipped.shape) != tuple(features.shape):
                raise SurgeryError(
                    f"block {block.name!r} changes its output after the residual addition (its output has shape "
                    f"{tuple(features.shape[1:])}, but skipping it would give {tuple(skipped.shape[1:])}): only "
                    "parameter-free operations that keep the shape may follow the addition inside a block (the "
                    "final ReLU); move the rest (pooling, a resize) out of the block, or pass the block's class in "
                    "leaf_modules= so that it is never gated")
            after_flops, features = count_flops(gated_block.after, features)
            block_plans.append(BlockPlan(
                name=block.name, shortcut=block.shortcut, gated=gated_block.gate_index >= 0,
                gate_index=gated_block.gate_index, flops=block_flops + after_flops,
                skip_flops=skip_flops + after_flops, output_shape=tuple(features.shape[1:]),
                nested=list(block.nested),
            ))
        tail_flops, _ = count_flops(tail, features)
        return head, stem_flops, stem_shape, head_flops, block_plans, tail_flops

    guessed = input_size is None and not input_size_is_known(model)
    candidates = [size] + ([(size[0], s, s) for s in (32, 28, 64, 96)] if guessed else [])
    failures = []
    with _evaluation_mode(model):
        for candidate in candidates:
            try:
                head, stem_flops, stem_shape, head_flops, block_plans, tail_flops = profile(candidate)
                break
            except SurgeryError:
                raise
            except RuntimeError as exc:
                failures.append(f"{candidate}: {(str(exc).strip().splitlines() or [''])[0][:160]}")
                if not guessed:
                    raise SurgeryError(
                        f"profiling {type(model).__name__} at input_size={candidate} failed ({failures[-1]}); "
                        "pass the (channels, height, width) your data has as input_size=") from exc
        else:
            raise SurgeryError(
                f"profiling {type(model).__name__} failed at every size tried ({'; '.join(failures)}); pass the "
                "(channels, height, width) your data has as input_size=")
    if guessed:
        size = candidate
        why = f" ({failures[0].split(':')[0]} failed)" if failures else ""
        warnings.warn(
            f"adaptify: no input_size given and {type(model).__name__} does not declare one, so FLOPs, the cost "
            f"model and the card are for a {size} input{why}; pass input_size=(channels, height, width) for the "
            "size you feed (the recipes pass the dataset's)", UserWarning, stacklevel=3)  # adaptify's caller
    head.train(model.training)
    plan = SurgeryPlan(
        input_size=size, stem_nodes=stem_nodes, stem_output_shape=stem_shape,
        stem_flops=stem_flops, blocks=block_plans, tail_flops=tail_flops, head_variant=resolved,
        head_params=sum(p.numel() for p in head.parameters()), head_flops=head_flops,
    )
    settings = settings.replace(variant=resolved, input_size=size,
                                gated_blocks=[b.name for b in gated_blocks if b.gate_index >= 0],
                                blocks=[b.name for b in gated_blocks])
    return BackboneCut(stem, head, gated_blocks, tail, settings.threshold, model, plan, settings.to_dict())


def _device_of(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _dtype_of(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's weights (fp16 / bf16 backbones are profiled in their own dtype)."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


class _evaluation_mode:
    """Run the profiling forward in eval mode without gradients, then restore every module's mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()
        return self

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        for module, mode in self.modes:
            module.training = mode
        return False


def _weighted_depth(model: nn.Module, blocks: list[GatedBlock]) -> int:
    """Conv and linear layers outside the projection shortcuts: 38 for ResNet38, 50 for ResNet50."""
    shortcut_layers = {
        id(m) for b in blocks if not b.identity_shortcut for m in b.shortcut.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }
    return sum(1 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in shortcut_layers)


class _mode:
    """Put every module of ``model`` in training or eval mode inside the ``with``; restore each one's own after."""

    def __init__(self, model: nn.Module, training: bool) -> None:
        self.model, self.training = model, training

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.train(self.training)
        return self

    def __exit__(self, *exc):
        for module, mode in self.modes:
            module.training = mode


def _by_mode(part: Optional[nn.Module], other: Optional[nn.Module], part_is_training: bool) -> Optional[nn.Module]:
    """``part`` when both traces agree, else a :class:`ModeDispatch` of the two graphs."""
    if not (isinstance(part, fx.GraphModule) and isinstance(other, fx.GraphModule)) or part.code == other.code:
        return part
    train, evaluation = (part, other) if part_is_training else (other, part)
    return ModeDispatch(train, evaluation)


class ModeDispatch(nn.Module):
    """A stem, link or tail whose code depends on ``self.training`` (functional dropout, for instance): the graph
    traced in training mode runs while training, the one traced in eval mode otherwise. Both hold the same
    backbone modules, so no weight is duplicated."""

    def __init__(self, train_graph: nn.Module, eval_graph: nn.Module) -> None:
        super().__init__()
        self.train_graph = train_graph
        self.eval_graph = eval_graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.train_graph(x)
        return self.eval_graph(x)


def _split_chain(model: nn.Module, graph: fx.Graph, blocks: list[ResidualBlock]):
    """Cut the traced graph into stem, the links between blocks, and tail; each a GraphModule."""
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise SurgeryError(
            f"{type(model).__name__}.forward takes {len(placeholders)} inputs; adaptify supports models "
            "whose forward takes one image tensor"
        )
    names = [b.name for b in blocks]
    calls = [n for n in nodes if n.op == "call_module" and n.target in names]
    if [str(n.target) for n in calls] != names:
        raise SurgeryError(
            "the residual blocks are not each called once, in order, by the model's forward: "
            f"found calls {[str(n.target) for n in calls]} for blocks {names}"
        )
    for call in calls:
        if len(call.args) != 1 or call.kwargs or not isinstance(call.args[0], fx.Node):
            raise SurgeryError(f"block {call.target!r} is called with {call.args} {call.kwargs}; "
                               "OFAS needs blocks that take one tensor")
    (output,) = [n for n in nodes if n.op == "output"]
    positions = {n: i for i, n in enumerate(nodes)}
    boundaries = [placeholders[0], *calls]
    ends = [c.args[0] for c in calls] + [output.args[0]]
    segments = []
    for index, (start, end) in enumerate(zip(boundaries, ends)):
        stop = positions[calls[index]] if index < len(calls) else positions[output]
        inner = [n for n in nodes[positions[start] + 1:stop] if n.op not in ("placeholder", "output")]
        where = "the stem" if index == 0 else f"after block {names[index - 1]!r}"
        kind = "Stem" if index == 0 else "Tail" if index == len(calls) else "Link"
        segments.append(_extract(model, start, inner, end, where, kind))
    stem, *links = segments
    tail = links.pop()
    stem_nodes = [str(n.target) if n.op == "call_module" else n.name
                  for n in nodes[1:positions[calls[0]]] if n.op != "get_attr"]
    links = [None if isinstance(link, nn.Identity) else link for link in links] + [None]  # none after the last
    return stem, links, tail, stem_nodes


def _extract(model: nn.Module, start: fx.Node, inner: list[fx.Node], end, where: str, class_name: str):
    if not inner and end is start:
        return nn.Identity()
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {start: graph.placeholder("x")}

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env:
            raise SurgeryError(
                f"the residual blocks do not form a chain: {where}, the graph uses {node.name!r} computed "
                "before the previous block. OFAS needs each block to feed the next (a plain ResNet)."
            )
        return env[node]

    for node in inner:
        env[node] = graph.node_copy(node, lookup)
    graph.output(fx.node.map_arg(end, lookup))
    return fx.GraphModule(model, graph, class_name=class_name)
