"""Residual-block discovery with ``torch.fx``: find the blocks of any ResNet from its graph alone.

A module call is a *residual block* when, inside it, an addition joins two values that both derive from
the module's single tensor input ``x`` (Eq. 4's ``x + B(x)``):

* the *shortcut* operand is ``x`` itself ("identity") or a projection of it (a path from ``x`` with no
  further addition on it, such as torchvision's ``downsample`` or timm's avg-pool + conv of resnet-d);
* the *branch* operand runs at least one parametrised module that the shortcut does not;
* from the addition to the module's output there are only parameter-free single-input operations
  (the final ReLU of a post-activation block, an identity, a dropout).

Each such addition belongs to the innermost module call for which it qualifies (so a stage holding a single
block gives the block, not the stage). Residual structures nested in one another are resolved innermost first
(:func:`_select_blocks`): a residual module around two or more inner residual structures, or around one and no
weights of its own, is an *outer shortcut* (a RoR stage, a long skip around a stage, a residual adapter): its
inner blocks get the gates and its addition stays, ungated, in the links between them. A block with weights of
its own around a single inner residual (a global-context module inside a block) is one block, the inner
structure listed as ``nested``, so gates never overlap. An outer shortcut around residual additions written
inline (no module each, so no block to gate) is refused. No ``isinstance`` check on block classes is used: a
user's own ResNet is found the same way as torchvision's and timm's.
"""

from __future__ import annotations

import operator
import traceback
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from ._errors import SurgeryError
from ._plan import OuterShortcutPlan

__all__ = ["ResidualBlock", "DiscoveryTracer", "find_residual_blocks", "find_outer_shortcuts",
           "trace_with_blocks_as_leaves", "MODULE_META"]

MODULE_META = "ofas_module"  # node.meta key: the module whose forward computed the node (trace_with_blocks_as_leaves)

_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")
_LEAF_HINT = (
    "If this module cannot be traced symbolically, pass it as a leaf: "
    "adaptify(model, leaf_modules=[{cls}]) (a leaf is never looked into, so it cannot hold residual "
    "blocks itself)."
)


@dataclass
class _ModuleCall:
    name: str
    module: nn.Module
    input_nodes: list[fx.Node]
    output_node: fx.Node | None
    nodes: list[fx.Node]


@dataclass
class ResidualBlock:
    """A residual block found in the graph."""

    name: str
    module: nn.Module
    shortcut: str  # "identity" or "projection"
    shortcut_graph: fx.Graph | None = None  # for projections: the path from the block input to the shortcut
    add_node_name: str = ""
    nested: list[str] = field(default_factory=list)


class DiscoveryTracer(fx.Tracer):
    """An FX tracer that records the input and output node of every (non-leaf) module call.

    ``leaf_modules`` (classes) and ``leaf_names`` (qualified names) are not traced into; timm's
    registered no-trace modules and functions are honoured when timm is installed.
    """

    def __init__(self, leaf_modules: tuple[type, ...] = (), leaf_names: frozenset[str] = frozenset()) -> None:
        autowrap: tuple = ()
        timm_leaves: tuple[type, ...] = ()
        try:
            from timm.layers import get_notrace_functions, get_notrace_modules

            autowrap = tuple(get_notrace_functions())
            timm_leaves = tuple(get_notrace_modules())
        except ImportError:
            pass
        super().__init__(autowrap_functions=autowrap)
        self.leaf_types = tuple(leaf_modules) + timm_leaves
        self.leaf_names = leaf_names
        self.calls: list[_ModuleCall] = []
        self.opaque: dict[str, int] = {}  # class name -> calls of leaves the tracer could not look into
        self._failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names:
            return True
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        try:
            name = self.path_of_module(m)
        except NameError:
            # a module built inside forward(), as public ResNets write `nn.ReLU(inplace=True)(out + x)`: it is no
            # submodule, so it cannot be a graph node; without weights it is just its computation: trace through
            if next(m.parameters(), None) is not None or next(m.buffers(), None) is not None:
                raise SurgeryError(
                    f"a {type(m).__name__} is created inside a forward() and holds weights, which are then new on "
                    "every call and never trained; create it in __init__ instead") from None
            return forward(*args, **kwargs)
        if self.is_leaf_module(m, name):
            if not type(m).__module__.startswith("torch.nn") and any(True for _ in m.children()):
                self.opaque[type(m).__name__] = self.opaque.get(type(m).__name__, 0) + 1
            return super().call_module(m, forward, args, kwargs)
        start = len(self.graph.nodes)
        try:
            out = super().call_module(m, forward, args, kwargs)
        except SurgeryError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised with the module named
            raise SurgeryError(_trace_failure_message(name, m, exc)) from exc
        created = list(self.graph.nodes)[start:]
        inputs = [a.node for a in list(args) + list(kwargs.values()) if isinstance(a, fx.Proxy)]
        output = out.node if isinstance(out, fx.Proxy) else None
        self.calls.append(_ModuleCall(name, m, inputs, output, created))
        return out


def _trace_failure_message(name: str, module: nn.Module, exc: Exception) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    user_frames = [f for f in frames if "/torch/" not in f.filename.replace("\\", "/")]
    where = ""
    if user_frames:
        frame = user_frames[-1]
        where = f"\n  traced line: {frame.filename}:{frame.lineno}: {frame.line}"
    cls = type(module).__name__
    return (
        f"torch.fx could not trace module {name or '<root>'!r} ({cls}): {type(exc).__name__}: {exc}{where}\n"
        + _LEAF_HINT.format(cls=cls)
    )


def _trace(tracer: DiscoveryTracer, model: nn.Module) -> fx.Graph:
    try:
        return tracer.trace(model)
    except SurgeryError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise SurgeryError(_trace_failure_message("", model, exc)) from exc


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        return len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args)
    if node.op == "call_method" and node.target in _ADD_METHODS:
        return len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args)
    return False


def _node_inputs(node: fx.Node) -> list[fx.Node]:
    return list(node.all_input_nodes)


def _ancestors(node: fx.Node, scope: set[fx.Node]) -> set[fx.Node]:
    """The nodes of ``scope`` that ``node`` is computed from (``node`` included if in scope)."""
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if current in seen or current not in scope:
            continue
        seen.add(current)
        stack.extend(_node_inputs(current))
    return seen


def _reads(source: fx.Node, ancestors: set[fx.Node]) -> bool:
    """True when one of ``ancestors`` (an :func:`_ancestors` set) takes ``source`` as an input."""
    return any(source in _node_inputs(n) for n in ancestors)


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _parametrised_modules(nodes: set[fx.Node], root: nn.Module) -> set[str]:
    names = set()
    for n in nodes:
        if n.op == "call_module" and _has_parameters(root.get_submodule(n.target)):
            names.add(str(n.target))
        elif n.op == "get_attr":
            names.add(str(n.target))
    return names


def _only_passthrough_to_output(add: fx.Node, output: fx.Node, scope: set[fx.Node], root: nn.Module) -> bool:
    """True when the addition reaches the module output through parameter-free single-input ops only."""
    current = add
    while current is not output:
        users = [u for u in current.users if u in scope]
        if len(users) != 1 or len(current.users) != 1:
            return False
        (user,) = users
        if len(_node_inputs(user)) != 1:
            return False
        if user.op == "call_module" and _has_parameters(root.get_submodule(user.target)):
            return False
        if user.op == "get_attr" or _is_add(user):
            return False
        current = user
    return True


def _classify_operands(add: fx.Node, x: fx.Node, scope: set[fx.Node], root: nn.Module):
    """Return (shortcut_node, branch_node) if ``add`` is a residual addition on input ``x``, else None."""
    left, right = add.args
    options = []
    for shortcut, branch in ((left, right), (right, left)):
        if branch is x:
            continue
        branch_anc = _ancestors(branch, scope)
        if not _reads(x, branch_anc):
            continue
        if shortcut is x:
            shortcut_anc: set[fx.Node] = set()
        else:
            if shortcut not in scope:
                continue
            shortcut_anc = _ancestors(shortcut, scope)
            if not _reads(x, shortcut_anc):
                continue
            if any(_is_add(n) for n in shortcut_anc) or branch in shortcut_anc or shortcut in branch_anc:
                continue
        if not _parametrised_modules(branch_anc - shortcut_anc, root):
            continue
        options.append((len(shortcut_anc), shortcut, branch))
    if not options:
        return None
    options.sort(key=lambda item: item[0])
    return options[0][1], options[0][2]


def _shortcut_graph(shortcut: fx.Node, x: fx.Node, scope: set[fx.Node]) -> fx.Graph:
    """A standalone graph computing the projection shortcut from the block input."""
    needed = _ancestors(shortcut, scope)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {x: graph.placeholder("x")}
    for node in x.graph.nodes:  # graph order keeps dependencies satisfied
        if node in needed:
            env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(env[shortcut])
    return graph


def _is_identity_path(shortcut: fx.Node, x: fx.Node, scope: set[fx.Node], root: nn.Module) -> bool:
    """A shortcut made only of ``nn.Identity`` calls (timm's byobnet) is an identity shortcut."""
    return all(
        n.op == "call_module" and isinstance(root.get_submodule(n.target), nn.Identity)
        for n in _ancestors(shortcut, scope)
    )


def opaque_modules(model: nn.Module, leaf_modules: tuple[type, ...] = ()) -> dict[str, int]:
    """Class name -> count of the composite modules the trace does not look into (``leaf_modules`` and the ones
    timm marks not traceable), for an error that says where residual additions may hide."""
    tracer = DiscoveryTracer(leaf_modules=leaf_modules)
    _trace(tracer, model)
    return tracer.opaque


def find_residual_blocks(model: nn.Module, leaf_modules: tuple[type, ...] = ()) -> list[ResidualBlock]:
    """Trace ``model`` and return its residual blocks in execution order (see the module docstring)."""
    tracer = DiscoveryTracer(leaf_modules=leaf_modules)
    _trace(tracer, model)
    # innermost first: a call's node list is shorter than that of any call enclosing it
    calls = sorted(tracer.calls, key=lambda c: len(c.nodes))
    owner: dict[fx.Node, tuple[_ModuleCall, fx.Node, fx.Node]] = {}
    for call in calls:
        if len(call.input_nodes) != 1 or call.output_node is None or not call.name:
            continue
        x = call.input_nodes[0]
        scope = set(call.nodes)
        for node in call.nodes:
            if node in owner or not _is_add(node):
                continue
            if not _only_passthrough_to_output(node, call.output_node, scope, model):
                continue
            operands = _classify_operands(node, x, scope, model)
            if operands is None:
                continue
            owner[node] = (call, operands[0], operands[1])
    found: dict[str, ResidualBlock] = {}
    spans: dict[str, set[fx.Node]] = {}
    branch_only: dict[str, set[fx.Node]] = {}  # the nodes of each residual's branch that its shortcut does not run
    adds: dict[str, fx.Node] = {}
    ordered: dict[str, list[fx.Node]] = {}
    for add, (call, shortcut, branch) in owner.items():
        if call.name in found:
            raise SurgeryError(
                f"module {call.name!r} is called more than once in the forward pass, or holds two residual "
                "additions; a shared residual block cannot be gated per position. Give each position its own "
                "module, or pass it in leaf_modules= to leave it ungated inside its parent."
            )
        x = call.input_nodes[0]
        scope = set(call.nodes)
        branch_only[call.name] = _ancestors(branch, scope) - _ancestors(shortcut, scope)
        adds[call.name] = add
        ordered[call.name] = [x, *call.nodes]  # the input first: an inline residual may start from it
        if shortcut is not x and _is_identity_path(shortcut, x, set(call.nodes), model):
            shortcut = x
        found[call.name] = ResidualBlock(
            name=call.name,
            module=call.module,
            shortcut="identity" if shortcut is x else "projection",
            shortcut_graph=None if shortcut is x else _shortcut_graph(shortcut, x, set(call.nodes)),
            add_node_name=add.name,
        )
        spans[call.name] = set(call.nodes)
    selected = _select_blocks(found, ordered, branch_only, adds, model)
    node_order = {node: index for index, node in enumerate(tracer.graph.nodes)}
    selected.sort(key=lambda name: min(node_order[n] for n in spans[name]))
    return [found[name] for name in selected]


def _select_blocks(found: dict[str, ResidualBlock], ordered: dict[str, list[fx.Node]],
                   branch_only: dict[str, set[fx.Node]], adds: dict[str, fx.Node], root: nn.Module) -> list[str]:
    """The residual structures that get the gates, when some are nested in others (innermost first).

    A structure's *inner* residuals are the largest ones inside it: the residual modules it calls (directly or
    through plain modules) and the residual additions it writes inline (:func:`_inline_residual_branch`). A structure
    is an outer shortcut when it has two or more inner residuals, one that is an outer shortcut itself, or one and
    no weights in its branch outside it; the gates then go to its inner blocks. Otherwise it is a block, and its
    inner residual modules are recorded as ``nested``. Raises :class:`SurgeryError` for an outer shortcut around
    inline residual additions: they have no module to gate, and one gate for the whole would skip all of them.
    """
    spans = {name: set(nodes[1:]) for name, nodes in ordered.items()}  # the nodes each call computes
    names = sorted(found, key=lambda name: len(spans[name]))  # a structure after everything nested in it
    parent: dict[str, str | None] = {}
    for name in names:
        enclosing = [other for other in names if other != name and spans[name] < spans[other]]
        parent[name] = min(enclosing, key=lambda other: len(spans[other])) if enclosing else None
    children = {name: [child for child in names if parent[child] == name] for name in names}
    outer: set[str] = set()
    for name in names:
        inside = set().union(*(spans[child] for child in children[name]))
        inline = []
        for node in ordered[name]:
            if node in inside or node is adds[name] or not _is_add(node):
                continue
            inline_branch = _inline_residual_branch(node, {ordered[name][0], *spans[name]}, root)
            if inline_branch is not None:
                inline.append(node)
                inside |= inline_branch
        inner = len(children[name]) + len(inline)
        own_weights = _parametrised_modules(branch_only[name] - inside, root)
        one_block_inside = inner == 1 and not (children[name] and children[name][0] in outer)
        if inner == 0 or (one_block_inside and own_weights):  # an attention module or term inside a block
            found[name].nested = list(children[name])
            continue
        if inline:
            listed = ", ".join(repr(node.name) for node in inline)
            raise SurgeryError(
                f"module {name!r} ({type(found[name].module).__name__}) is a residual block (its addition "
                f"{adds[name].name!r}) around {inner} inner residual structures, of which the additions {listed} are "
                "written inline, not as modules of their own: they cannot be gated one by one, and one gate for "
                f"{name!r} would skip them all. Write each inner x + f(x) as a module (an nn.Module whose forward "
                f"returns it), or pass leaf_modules=[{type(found[name].module).__name__}] to leave {name!r} ungated."
            )
        outer.add(name)
    selected = []
    stack = [name for name in names if parent[name] is None]
    while stack:
        name = stack.pop()
        if name in outer:
            stack.extend(children[name])
        else:
            selected.append(name)
    return selected


def _inline_residual_branch(add: fx.Node, scope: set[fx.Node], root: nn.Module) -> set[fx.Node] | None:
    """The branch of ``add`` when it computes ``v + f(v)`` inline (one operand derives from the other through
    modules with weights; an addition of two splits, as in Res2Net, is none), else None."""
    left, right = add.args
    for shortcut, branch in ((left, right), (right, left)):
        branch_ancestors = _ancestors(branch, scope)
        if shortcut in branch_ancestors and shortcut is not branch:
            only_branch = branch_ancestors - _ancestors(shortcut, scope)
            if _parametrised_modules(only_branch, root):
                return only_branch
    return None


def find_outer_shortcuts(nodes: list[fx.Node], calls: list[fx.Node], blocks: list[ResidualBlock],
                         root: nn.Module) -> list[OuterShortcutPlan]:
    """The outer shortcuts in a graph traced with the blocks as leaves (``calls``, in order): the additions between
    blocks whose operands come from different blocks. A value's *origin* is the last block it is computed from
    (0: the stem); an addition of a value of origin i and one of origin j > i spans blocks i + 1 .. j. Its shortcut
    is the operand of origin i: a projection when it runs a module with weights that block i + 1's input does not.
    """
    scope = set(nodes)
    index = {call: position for position, call in enumerate(calls, 1)}
    origin: dict[fx.Node, int] = {}
    for node in nodes:
        origin[node] = index.get(node) or max((origin[v] for v in node.all_input_nodes), default=0)
    outer = []
    for node in nodes:
        if node in index or not _is_add(node) or origin[node.args[0]] == origin[node.args[1]]:
            continue
        shortcut, branch = sorted(node.args, key=origin.__getitem__)
        first, last = origin[shortcut], origin[branch]
        path = _ancestors(shortcut, scope) - _ancestors(calls[first].args[0], scope)
        outer.append(OuterShortcutPlan(
            module=node.meta.get(MODULE_META, ""), add=node.name,
            shortcut="projection" if _parametrised_modules(path, root) else "identity",
            blocks=[block.name for block in blocks[first:last]],
        ))
    return outer


def trace_with_blocks_as_leaves(model: nn.Module, block_names: list[str],
                                leaf_modules: tuple[type, ...] = ()) -> fx.Graph:
    """Trace ``model`` again with the residual blocks as leaves: each block becomes one call_module node.

    Each node's ``meta[MODULE_META]`` names the innermost module whose forward computed it ("" for the model's own),
    for the plan and the errors to say where an outer shortcut's addition is written."""
    tracer = DiscoveryTracer(leaf_modules=leaf_modules, leaf_names=frozenset(block_names))
    graph = _trace(tracer, model)
    for call in tracer.calls:  # recorded as each call returns: the innermost first
        for node in call.nodes:
            node.meta.setdefault(MODULE_META, call.name)
    return graph
