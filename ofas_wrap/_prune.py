"""Depth pruning: an adapted model with a fixed gate pattern, written as a plain backbone with those blocks removed.

- :func:`prune_blocks`: a deep copy of the backbone in which every gated block the pattern removes is replaced by
  what the OFAS model runs when it skips that block: nothing (``nn.Identity``) for an identity shortcut, the
  projection alone (a ``torch.fx`` graph of the block's own shortcut modules, under their own names) otherwise.
  No head, no gates: the backbone's own class and ``forward``, with fewer blocks.
- :func:`check_keep`: the one check of a pattern (bools per gated block, or the names of the blocks to keep).
- :func:`pruned_config`, :func:`read_pruned`, :class:`PrunedWeights`: what ``save_pretrained(prune=...)``,
  ``from_pretrained`` and ``export_torchscript(prune=...)`` record, read back and save of a pruned network.

Like the surgery, this module imports no model class: ``_model.py`` and ``_export.py`` call it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.fx as fx
from torch import Tensor, nn

from ._block import GatedBlock
from ._hub import CheckpointError

__all__ = ["prune_blocks", "check_keep", "pruned_config", "read_pruned", "PrunedWeights", "PRUNED_ARCHITECTURE"]

PRUNED_ARCHITECTURE = "PrunedBackbone"  # config.json's "architecture" of a pruned network's folder or file

KeepPattern = Union[Tensor, Sequence[bool], Sequence[str]]


def prune_blocks(model: Any, keep: KeepPattern) -> nn.Module:
    """The backbone of ``model`` with the gated blocks that ``keep`` removes physically gone: a plain network.

    ``keep`` says which gated blocks stay: one bool per gated block, in the order of ``model.gated_block_names``
    (a list or a bool tensor, ``True`` = keep), or the names of the gated blocks to keep. Blocks that are not gated
    always stay. A removed block with an identity shortcut becomes ``nn.Identity``; one with a projection shortcut
    keeps only its projection (a ``torch.fx`` graph named ``Shortcut`` holding the block's own shortcut modules,
    under their own names), which is what the OFAS model runs when it skips that block. So in eval mode the result
    equals ``model`` with ``model.forced_gates(keep)``, without the head and the branches.

    Returns a deep copy of ``model.unwrap()`` (its own class and ``forward``, in ``model``'s training mode): the
    model and its backbone are never changed. Its ``state_dict`` names are the backbone's own, minus the removed
    blocks' weights. Save it with ``model.save_pretrained(dir, prune=keep)`` (``OFASModel.from_pretrained(dir)``
    returns it) or ``ofas_wrap.export_torchscript(model, path, prune=keep)`` (``torch.jit.load`` reads it).

    Raises:
        TypeError: ``model`` is not an OFAS model, or ``keep`` is neither bools nor block names.
        ValueError: ``keep`` has the wrong length, or names a block that is not a gated block of ``model``.

    Example:
        >>> import torch, ofas_wrap
        >>> model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16)).eval()
        >>> keep = [True, False, True]
        >>> pruned = ofas_wrap.prune_blocks(model, keep)
        >>> type(pruned).__name__, type(pruned.layer2[0]).__name__
        ('CifarResNet', 'Shortcut')
        >>> x = torch.randn(2, 3, 16, 16)
        >>> with model.forced_gates(torch.tensor(keep)):
        ...     expected = model(x)
        >>> bool(torch.allclose(pruned(x), expected, atol=1e-5))
        True
    """
    _check_model(model, "prune_blocks")
    pattern = check_keep(keep, model.gated_block_names)
    return _remove_blocks(model.unwrap(), list(model.blocks), pattern, model.training)


def check_keep(keep: KeepPattern, gated_block_names: Sequence[str]) -> list[bool]:
    """``keep`` as one bool per gated block (``True`` = keep), checked against the model's gated blocks.

    Takes a bool tensor or a sequence of bools of length ``len(gated_block_names)``, or a sequence of gated block
    names (the blocks to keep). Raises TypeError for other types (an int 0/1 list is refused: it would read as
    indices as easily as a pattern) and ValueError for a wrong length or an unknown name.

    Example:
        >>> check_keep(["layer1.0"], ["layer1.0", "layer2.0"])
        [True, False]
        >>> check_keep([1, 0], ["layer1.0", "layer2.0"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: keep must be 2 bools (True = keep the block) or the names of the gated blocks to keep, ...
    """
    names = list(gated_block_names)
    count = len(names)
    what = (f"keep must be {count} bools (True = keep the block) or the names of the gated blocks to keep, in the "
            f"order of model.gated_block_names")
    if isinstance(keep, (str, bytes)):
        raise TypeError(f"{what}; got the string {keep!r} (for a single block pass [{keep!r}])")
    if not isinstance(keep, Tensor):
        try:
            values = list(keep)
        except TypeError:
            raise TypeError(f"{what}; got {type(keep).__name__}") from None
        if values and all(isinstance(value, str) for value in values):
            return _keep_from_names(values, names)
        if any(isinstance(value, str) for value in values):
            raise TypeError(f"{what}; got a mix of names and other values: {values!r}")
        try:
            keep = torch.as_tensor(values) if values else torch.zeros(0, dtype=torch.bool)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{what}; got {values!r}") from None
    if keep.dtype != torch.bool:
        raise TypeError(f"{what}; got values of dtype {keep.dtype} (write [bool(v) for v in pattern], or "
                        "tensor.bool(), if 1 means keep)")
    if keep.dim() != 1 or keep.numel() != count:
        raise ValueError(f"keep has shape {tuple(keep.shape)}, but the model has {count} gated blocks "
                         f"({_listed(names)}); give one bool per gated block (True = keep), the same pattern for "
                         "every input")
    return [bool(value) for value in keep.tolist()]


def pruned_config(model: Any, keep: Sequence[bool], config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (``build_config(model)``) as the config of ``model`` pruned to ``keep``: ``architecture``
    ``PrunedBackbone`` and a ``pruned`` section (the pattern, the kept and removed blocks, the FLOPs per sample of
    the pruned network and of the full backbone). The per-threshold ``metrics`` of the OFAS model do not describe
    the pruned network and are dropped; the OFAS settings stay, as the rebuild needs them."""
    names = model.gated_block_names
    mask = torch.tensor(list(keep), dtype=torch.bool)
    section: dict[str, Any] = {
        "keep": [bool(value) for value in keep],
        "kept_blocks": [name for name, kept in zip(names, keep) if kept],
        "removed_blocks": [name for name, kept in zip(names, keep) if not kept],
        "flops": None,
        "backbone_flops": None,
    }
    plan = getattr(model, "plan", None)
    if plan is not None:
        section["flops"] = int(plan.executed_flops(mask)[0]) - int(plan.head_flops)
        section["backbone_flops"] = int(plan.backbone_flops)
    return dict(config, architecture=PRUNED_ARCHITECTURE, metrics=None, pruned=section)


def read_pruned(config: dict[str, Any], path: Union[str, Path]) -> Optional[list[bool]]:
    """The pattern of a pruned network's config (``None`` for an OFAS model's), checked: a CheckpointError names
    the file and the field when the ``pruned`` section does not fit the config's gated blocks."""
    section = config.get("pruned")
    if section is None:
        return None
    gated = list(config["ofas"]["gated_blocks"])
    keep = section.get("keep") if isinstance(section, dict) else None
    if not isinstance(keep, list) or not all(isinstance(value, bool) for value in keep) or len(keep) != len(gated):
        raise CheckpointError(f"{path}: field 'pruned.keep' must be {len(gated)} booleans, one per gated block, got "
                              f"{keep!r}; the file is damaged, save or export the pruned network again")
    removed = [name for name, kept in zip(gated, keep) if not kept]
    if section.get("removed_blocks") != removed:
        raise CheckpointError(f"{path}: field 'pruned.removed_blocks' is {section.get('removed_blocks')!r}, but "
                              f"'pruned.keep' removes {removed}; the file is damaged, save the pruned network again")
    return keep


class PrunedWeights:
    """A pruned network as the files layer (``_hub.py``) sees a model: ``unwrap()`` is the network, whose weights
    are saved and loaded under ``backbone.`` with their own names, and ``head`` is empty."""

    def __init__(self, network: nn.Module) -> None:
        self.network = network
        self.head = nn.Module()

    def unwrap(self) -> nn.Module:
        return self.network

    def state_dict(self) -> dict[str, Tensor]:
        return self.network.state_dict()


# ------------------------------------------------------------------------------------------------- internals
def _check_model(model: Any, caller: str) -> None:
    blocks = getattr(model, "blocks", None)
    if not (isinstance(model, nn.Module) and callable(getattr(model, "unwrap", None))
            and isinstance(blocks, nn.ModuleList) and all(isinstance(b, GatedBlock) for b in blocks)):
        hint = " (pass the model adaptify returned, not model.unwrap())" if isinstance(model, nn.Module) else ""
        raise TypeError(f"{caller} expects an OFASModel (from ofas_wrap.adaptify or create_model), got "
                        f"{type(model).__name__}{hint}")


def _keep_from_names(given: list[str], names: list[str]) -> list[bool]:
    unknown = [name for name in given if name not in names]
    if unknown:
        raise ValueError(f"keep names {unknown}, which are not gated blocks of this model; its gated blocks are "
                         f"{_listed(names)}")
    repeated = sorted({name for name in given if given.count(name) > 1})
    if repeated:
        raise ValueError(f"keep names {repeated} more than once; name each block to keep once")
    return [name in given for name in names]


def _remove_blocks(backbone: nn.Module, blocks: list[GatedBlock], keep: Sequence[bool], training: bool) -> nn.Module:
    network = copy.deepcopy(backbone)
    removed: list[str] = []
    for block in blocks:
        if block.gate_index < 0 or keep[block.gate_index]:
            continue
        if any(block.name.startswith(outer + ".") for outer in removed):
            continue  # inside a block already removed: gone with it (the OFAS model does not run it either)
        copied = network.get_submodule(block.name)
        replacement = nn.Identity() if block.identity_shortcut else _projection(block, copied, network)
        parent_name, _, attribute = block.name.rpartition(".")
        parent = network.get_submodule(parent_name) if parent_name else network
        setattr(parent, attribute, replacement)
        removed.append(block.name)
    return network.train(training)


def _projection(block: GatedBlock, copied_block: nn.Module, network: nn.Module) -> nn.Module:
    """The skipped block's projection as a module of its own: the surgery's shortcut graph, its module and weight
    names made relative to the block when they all lie inside it (``layer2.0.downsample.0`` -> ``downsample.0``,
    so the pruned network's weights keep the backbone's names), else on the whole copied network."""
    graph = copy.deepcopy(block.shortcut.graph)
    prefix = block.name + "."
    referenced = [node for node in graph.nodes if node.op in ("call_module", "get_attr")]
    if all(str(node.target).startswith(prefix) for node in referenced):
        for node in referenced:
            node.target = str(node.target)[len(prefix):]
        return fx.GraphModule(copied_block, graph, class_name="Shortcut")
    return fx.GraphModule(network, graph, class_name="Shortcut")


def _listed(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
