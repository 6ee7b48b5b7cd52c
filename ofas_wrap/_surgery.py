"""The surgery: find the residual blocks of a backbone, check everything, and cut it into the parts of an OFAS
model (stem, head, gated blocks, tail, plan). It imports no model class: :func:`ofas_wrap.adaptify` (``_model.py``)
builds the :class:`ofas_wrap.OFASModel` from these parts."""

from __future__ import annotations

import operator
import warnings
from collections.abc import Sequence
from typing import NamedTuple, Optional

import torch
import torch.fx as fx
from torch import nn

from ._block import GatedBlock
from ._config import OFASConfig
from ._discovery import (
    ResidualBlock,
    _ancestors,
    find_outer_shortcuts,
    find_residual_blocks,
    opaque_modules,
    trace_with_blocks_as_leaves,
)
from ._errors import SurgeryError
from ._head import OFASHead, resolve_variant
from ._plan import BlockPlan, OuterShortcutPlan, SurgeryPlan, count_flops
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
    entry: Optional[nn.Module] = None  # where outer shortcuts carry values across blocks (_split_chain)


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
    cut = _split_chain(model, graph, found)
    # code that branches on self.training is frozen into a trace: trace the other mode too, and where the two
    # differ, run the graph of the mode the adapted model is in (as torchvision's feature extraction does)
    with _mode(model, not model.training):
        other = trace_with_blocks_as_leaves(model, [b.name for b in found], leaf_modules)
    other_cut = _split_chain(model, other, found)
    if (cut.entry is None) != (other_cut.entry is None):
        raise SurgeryError(
            f"{type(model).__name__}'s forward keeps values across blocks (outer shortcuts) in "
            f"{'training' if (cut.entry is None) != model.training else 'eval'} mode only; the surgery needs the same "
            "outer shortcuts in both modes")
    stem = _by_mode(cut.stem, other_cut.stem, model.training)
    tail = _by_mode(cut.tail, other_cut.tail, model.training)
    entry = _by_mode(cut.entry, other_cut.entry, model.training)
    afters = [_by_mode(after, other_after, model.training) for after, other_after in zip(cut.afters, other_cut.afters)]
    links = [_by_mode(link, other_link, model.training) for link, other_link in zip(cut.links, other_cut.links)]

    gated_blocks: list[GatedBlock] = []
    gate_index = 0
    for block, after, link in zip(found, afters, links):
        gated = gate_downsample or block.shortcut == "identity"
        shortcut: nn.Module = nn.Identity()
        if block.shortcut_graph is not None:
            shortcut = fx.GraphModule(model, block.shortcut_graph, class_name="Shortcut")
        gated_blocks.append(GatedBlock(block.name, block.module, shortcut, gate_index if gated else -1, after,
                                       link))
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
        carried: list[torch.Tensor] = []
        if entry is not None:  # computed from the stem's output for later blocks only: counted with the stem
            entry_flops, (features, carried) = count_flops(entry, features, carried)
            stem_flops += entry_flops
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
            if cut.entry is not None:
                link_flops, (features, carried) = count_flops(gated_block.link, features, carried)
                after_flops += link_flops
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
        input_size=size, stem_nodes=cut.stem_nodes, stem_output_shape=stem_shape,
        stem_flops=stem_flops, blocks=block_plans, tail_flops=tail_flops, head_variant=resolved,
        head_params=sum(p.numel() for p in head.parameters()), head_flops=head_flops,
        outer_shortcuts=cut.outer_shortcuts,
    )
    settings = settings.replace(variant=resolved, input_size=size,
                                gated_blocks=[b.name for b in gated_blocks if b.gate_index >= 0],
                                blocks=[b.name for b in gated_blocks])
    return BackboneCut(stem, head, gated_blocks, tail, settings.threshold, model, plan, settings.to_dict(), entry)


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
    """``part`` when both traces agree, else a :class:`ModeDispatch` (:class:`CarryingModeDispatch` for a link that
    carries values) of the two graphs."""
    if not (isinstance(part, fx.GraphModule) and isinstance(other, fx.GraphModule)) or part.code == other.code:
        return part
    train, evaluation = (part, other) if part_is_training else (other, part)
    carrying = sum(node.op == "placeholder" for node in part.graph.nodes) == 2
    return CarryingModeDispatch(train, evaluation) if carrying else ModeDispatch(train, evaluation)


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


class CarryingModeDispatch(nn.Module):
    """:class:`ModeDispatch` for an entry or a link that carries values across blocks (``(x, carried)``)."""

    def __init__(self, train_graph: nn.Module, eval_graph: nn.Module) -> None:
        super().__init__()
        self.train_graph = train_graph
        self.eval_graph = eval_graph

    def forward(self, x: torch.Tensor, carried: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.training:
            return self.train_graph(x, carried)
        return self.eval_graph(x, carried)


class _Cut(NamedTuple):
    """The traced graph cut into the surgery's parts (:func:`_split_chain`)."""

    stem: nn.Module
    afters: list[Optional[nn.Module]]  # per block: what runs after it in a plain chain (GatedBlock.after)
    links: list[Optional[nn.Module]]  # per block: what runs after it when values are carried (GatedBlock.link)
    tail: nn.Module
    stem_nodes: list[str]
    entry: Optional[nn.Module]  # carried values computed from the stem's output; None in a plain chain
    outer_shortcuts: list[OuterShortcutPlan]


def _split_chain(model: nn.Module, graph: fx.Graph, blocks: list[ResidualBlock]) -> _Cut:
    """Cut the traced graph into stem, the links between blocks, and tail; each a GraphModule.

    In a plain chain only the previous block's output crosses a block: each link is a graph from one tensor to
    one tensor (``GatedBlock.after``). Where outer shortcuts span several blocks, values computed before a block are
    used after a later one (:func:`_carried_values`); the structure then grows (:func:`_split_carrying`): an entry
    computes, from the stem's output, the carried values that only later links use, and every link takes and
    returns the list of values carried across the next block (``GatedBlock.link``).
    """
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
    stem_nodes = [str(n.target) if n.op == "call_module" else n.name
                  for n in nodes[1:positions[calls[0]]] if n.op != "get_attr"]
    segment = _segments(nodes, calls)
    last_use = _carried_values(nodes, calls, segment)
    if last_use:
        return _split_carrying(model, nodes, calls, output, segment, last_use, blocks, stem_nodes)
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
    links = [None if isinstance(link, nn.Identity) else link for link in links] + [None]  # none after the last
    return _Cut(stem, links, [None] * len(calls), tail, stem_nodes, None, [])


def _segments(nodes: list[fx.Node], calls: list[fx.Node]) -> dict[fx.Node, int]:
    """Each node's segment: 0 for the stem's nodes, k for block k's output and what runs after it."""
    blocks, segment, index = set(calls), {}, 0
    for node in nodes:
        index += node in blocks
        segment[node] = index
    return segment


def _carried_values(nodes: list[fx.Node], calls: list[fx.Node], segment: dict[fx.Node, int]) -> dict[fx.Node, int]:
    """The values used after a later block than the one they follow (the inputs of outer shortcuts): each mapped
    to the last segment that uses it. Empty for a plain chain. A block's input is used in the segment before it;
    attributes (``get_attr``) are copied wherever they are used, never carried."""
    blocks = set(calls)
    last_use: dict[fx.Node, int] = {}
    for user in nodes:
        used_in = segment[user] - (user in blocks)
        for value in user.all_input_nodes:
            if value.op != "get_attr" and segment[value] < used_in:
                last_use[value] = max(last_use.get(value, 0), used_in)
    return last_use


def _split_carrying(model: nn.Module, nodes: list[fx.Node], calls: list[fx.Node], output: fx.Node,
                    segment: dict[fx.Node, int], last_use: dict[fx.Node, int], blocks: list[ResidualBlock],
                    stem_nodes: list[str]) -> _Cut:
    """:func:`_split_chain` where outer shortcuts carry values across blocks.

    The carried list crossing block k holds, in graph order, the values computed before it and used after it. The
    stem's segment splits in two: the stem proper (what the stem's output needs; the head reads that output) and
    the entry (from the stem's output, what only later links use, e.g. a root shortcut's projection). The tail's
    segment splits where nothing carried is needed any more: the last link adds the last outer shortcuts back, the
    tail (classifier) runs on one tensor. Refused with a :class:`SurgeryError` naming the outer shortcut when it
    starts inside the stem, or when the tail cannot be cut so.
    """
    count = len(calls)
    outer = find_outer_shortcuts(nodes, calls, blocks, model)
    order = {node: index for index, node in enumerate(nodes)}

    def crossing(boundary: int) -> list[fx.Node]:  # carried across block `boundary` (1-based)
        return sorted((v for v, last in last_use.items() if segment[v] < boundary <= last), key=order.__getitem__)

    features = calls[0].args[0]
    (placeholder,) = [n for n in nodes if n.op == "placeholder"]
    stem_segment = [n for n in nodes if segment[n] == 0 and n.op not in ("placeholder", "output")]
    feeding = _ancestors(features, {placeholder, *stem_segment})
    needed_later = set().union(*(_ancestors(v, set(stem_segment)) for v in crossing(1)))
    entry_nodes = [n for n in stem_segment if n not in feeding and n in needed_later and n.op != "get_attr"]
    for value in crossing(1):
        if value is not features and value not in entry_nodes:
            raise SurgeryError(_stem_start_message(value, features, nodes, outer, blocks))
    for node in entry_nodes:
        for value in node.all_input_nodes:
            if value is not features and value in feeding and value.op != "get_attr":
                raise SurgeryError(_stem_start_message(value, features, nodes, outer, blocks))
    stem = _extract(model, placeholder, [n for n in stem_segment if n not in entry_nodes], features, "the stem",
                    "Stem")
    entry = _extract_carrying(model, features, [], entry_nodes, features, crossing(1), "Entry")
    links = []
    for k in range(1, count):
        inner = [n for n in nodes[order[calls[k - 1]] + 1:order[calls[k]]]]
        links.append(_extract_carrying(model, calls[k - 1], crossing(k), inner, calls[k].args[0], crossing(k + 1),
                                       "Link"))
    last_segment = [n for n in nodes[order[calls[-1]] + 1:order[output]]]
    cut = _tail_cut(last_segment, calls[-1], set(crossing(count)), output, blocks)
    before_cut = last_segment[:last_segment.index(cut) + 1] if cut is not calls[-1] else []
    links.append(_extract_carrying(model, calls[-1], crossing(count), before_cut, cut, [], "Link"))
    tail = _extract(model, cut, last_segment[len(before_cut):], output.args[0], "the tail", "Tail")
    return _Cut(stem, [None] * count, links, tail, stem_nodes, entry, outer)


def _tail_cut(segment_nodes: list[fx.Node], last_block: fx.Node, carried: set[fx.Node], output: fx.Node,
              blocks: list[ResidualBlock]) -> fx.Node:
    """The node after which the tail needs nothing carried and nothing computed before it but that node (the last
    block itself when the tail reads nothing carried): the last link ends there, the tail starts there."""
    readers = [i for i, node in enumerate(segment_nodes) if any(v in carried for v in node.all_input_nodes)]
    if not readers:
        return last_block
    for index in range(max(readers), len(segment_nodes)):
        cut, before = segment_nodes[index], {last_block, *carried, *segment_nodes[:index + 1]}
        if all(v is cut or v not in before or v.op == "get_attr"
               for user in [*segment_nodes[index + 1:], output] for v in user.all_input_nodes):
            return cut
    raise SurgeryError(
        f"after the last block {blocks[-1].name!r}, the model's forward adds back values kept from before it "
        f"({', '.join(sorted(v.name for v in carried))}), but what follows does not run on one tensor from some point "
        "on: the surgery cuts the tail where every outer shortcut has been added back and the rest (pooling, the "
        "classifier) reads that one result. Add the outer shortcuts back before the rest of the tail in forward()."
    )


def _stem_start_message(value: fx.Node, features: fx.Node, nodes: list[fx.Node], outer: list[OuterShortcutPlan],
                        blocks: list[ResidualBlock]) -> str:
    """A SurgeryError's text for a value carried from inside the stem, naming the outer shortcut that uses it."""
    by_name = {node.name: node for node in nodes}
    scope = set(nodes)
    using = [o for o in outer if value in _ancestors(by_name[o.add], scope)]
    head = (f"the value {value.name!r} is computed inside the stem, before its output {features.name!r} that the "
            "OFAS head reads, and used after a block")
    if using:
        o = using[0]
        spanned = [b for b in blocks if b.name in o.blocks]
        inner = ", ".join(f"{b.name!r} (addition {b.add_node_name!r})" for b in spanned[:3])
        where = f"the forward of {o.module!r}" if o.module else "the model's forward"
        head = (f"the outer shortcut {o.add!r} (in {where}) starts inside the stem, at {value.name!r}, before the "
                f"stem's output {features.name!r} that the OFAS head reads; it spans the {len(spanned)} blocks "
                f"{inner}{', ...' if len(spanned) > 3 else ''}")
    holder = _common_parent([b.name for b in blocks])
    instead = f", or adapt the module holding the blocks: adaptify(model.{holder})" if holder else ""
    return (f"{head}. An outer shortcut must start at the stem's output or later (the input of a block): start "
            f"it there in forward(){instead}.")


def _common_parent(names: list[str]) -> str:
    """The longest dotted module name that holds every one of ``names`` ("" for the model itself)."""
    parts = [name.split(".")[:-1] for name in names]
    common: list[str] = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _extract_carrying(model: nn.Module, start: fx.Node, carried_in: list[fx.Node], inner: list[fx.Node], end: fx.Node,
                      carried_out: list[fx.Node], class_name: str) -> fx.GraphModule:
    """A link that carries values: ``forward(x, carried) -> (x, carried)``, ``x`` standing for ``start``, the
    input list for ``carried_in``, the outputs ``end`` and the values of ``carried_out``."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {start: graph.placeholder("x")}
    carried = graph.placeholder("carried", type_expr=list[torch.Tensor])
    slots = {value: index for index, value in enumerate(carried_in)}

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env:
            if node in slots:
                env[node] = graph.call_function(operator.getitem, (carried, slots[node]))
            elif node.op == "get_attr":
                env[node] = graph.node_copy(node)
            else:  # _carried_values lists every value a segment reads from an earlier one
                raise SurgeryError(f"internal error: {node.name!r} is not carried to {class_name.lower()} "
                                   f"{start.name!r}; please report this with the model's code")
        return env[node]

    for node in inner:
        env[node] = graph.node_copy(node, lookup)
        _out_of_place(env[node], {env[start], carried}, model)
    graph.output((lookup(end), [lookup(value) for value in carried_out]))
    return fx.GraphModule(model, graph, class_name=class_name)


_IN_PLACE_OPERATORS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                       operator.itruediv: operator.truediv}


def _out_of_place(node: fx.Node, inputs: set[fx.Node], root: nn.Module) -> None:
    """Make ``node`` compute a new tensor where it would change a link's input or a carried value in place.

    A skipped identity block hands its input on as its output, so a link's ``x`` may be the very tensor an outer
    shortcut carries (a RoR stage whose blocks are all skipped: ``out = blocks(x); out += shortcut(x)`` would also
    change the ``x`` the root shortcut adds back later). In the backbone the block's output was a new tensor; here
    the in-place operation becomes its out-of-place form (``+=`` -> ``+``, ``add_`` -> ``add``, ``inplace=False``),
    or runs on a copy (a module built with ``inplace=True``)."""
    target = node.args[0] if node.args else None
    carried_value = (isinstance(target, fx.Node) and target.op == "call_function" and target.target is operator.getitem
                     and target.args[0] in inputs)
    if not (target in inputs or carried_value):
        return
    if node.op == "call_function" and node.target in _IN_PLACE_OPERATORS:
        node.target = _IN_PLACE_OPERATORS[node.target]
    elif node.op == "call_function" and node.kwargs.get("inplace") is True:
        node.kwargs = {**node.kwargs, "inplace": False}
    elif (node.op == "call_method" and node.target.endswith("_") and not node.target.endswith("__")
          and hasattr(torch.Tensor, node.target[:-1])):
        node.target = node.target[:-1]
    elif node.op == "call_module" and getattr(root.get_submodule(node.target), "inplace", False) is True:
        with node.graph.inserting_before(node):
            copy = node.graph.call_method("clone", (target,))
        node.args = (copy, *node.args[1:])


def _extract(model: nn.Module, start: fx.Node, inner: list[fx.Node], end, where: str, class_name: str):
    if not inner and end is start:
        return nn.Identity()
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {start: graph.placeholder("x")}

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env and node.op == "get_attr":  # an attribute is read where it is used
            env[node] = graph.node_copy(node)
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
