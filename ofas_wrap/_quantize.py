"""INT8 for an exported OFAS model: ONNX Runtime's static quantization, with the gated blocks still ``If`` branches.

This module is the machinery behind :func:`ofas_wrap.quantize_onnx` and ``ofas_wrap.export_onnx(...,
quantize="int8")`` (both in ``_export``, which exports the float graph first): it takes the *file* that
``export_onnx`` wrote and writes its INT8 copy. It imports nothing of ``_export`` (which imports it).

ONNX Runtime's ``quantize_static`` neither calibrates nor quantizes the nodes inside an ``If`` (QDQ format: the
subgraphs are left in float; QOperator with ``EnableSubgraph`` fails on them), and torchao's PT2E flow leaves the
``torch.cond`` branches in float the same way (``docs/deployment.md``, "INT8"). So :func:`quantize_file` lets the
library quantize a *flat* copy of the graph and only moves nodes around:

1. each gate's ``If`` is replaced by the nodes of its "run" branch (every block then runs, so every block is
   calibrated on every image);
2. ``onnxruntime.quantization.quantize_static`` (QDQ format, per-channel weights) quantizes that flat graph,
   calibrated on the user's images, with the stem and the head excluded: every node the gate decisions depend on
   stays float, so the INT8 model takes exactly the float model's decisions;
3. the nodes of each block (its original nodes, and the Quantize/DequantizeLinear nodes the library put on its
   tensors and weights) go back into the ``If`` they came from, whose "skip" branch is unchanged.

The result is checked with onnxruntime before it is written (atomically): same gate decisions as the float graph
on every calibration image, and the convolutions inside the branches quantized.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from ._atomic import atomic_path
from ._config import DEFAULT_CALIBRATION_IMAGES, ONNX_CONFIG_KEY

__all__ = ["DEFAULT_CALIBRATION_IMAGES", "INT8_CONFIG_KEY", "QUANTIZE_CHOICES", "calibration_batch",
           "calibration_sample", "check_quantization_tools", "int8_scores", "quantize_file"]

INT8_CONFIG_KEY = "int8"  # the key of the quantization record inside the ofas_config metadata
QUANTIZE_CHOICES = ("int8",)  # what export_onnx(quantize=...) takes
PathLike = Union[str, os.PathLike]
_QDQ = ("QuantizeLinear", "DequantizeLinear")


def quantize_file(source: PathLike, path: PathLike, calibration: Any, *, calibration_images: Optional[int] = None,
                  per_channel: bool = True, max_logit_difference: Optional[float] = None) -> Path:
    """Write an INT8 copy of the ``export_onnx`` file ``source`` to ``path`` (see :func:`ofas_wrap.quantize_onnx`).

    Every check runs before anything is written: onnxruntime's quantization tools, that ``source`` is an
    ``export_onnx`` file (float32, with an ``If`` per gate), and the calibration images (:func:`calibration_batch`)
    against its input. ``path`` gets the whole INT8 file or is left as it was.
    """
    onnx, quantization = check_quantization_tools()
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name such as {path / 'model-int8.onnx'}")
    if max_logit_difference is not None and not max_logit_difference > 0:
        raise ValueError(f"max_logit_difference must be positive, got {max_logit_difference}")
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file (give an OFASModel or a .onnx file from export_onnx)")
    proto = onnx.load(str(source))
    config = _ofas_config(proto, source)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    images = calibration_batch(calibration, tuple(dims[1:]), calibration_images).numpy()
    with tempfile.TemporaryDirectory(prefix="ofas-int8-") as work:
        work = Path(work)
        flat, blocks = _inline_gates(onnx, proto)
        excluded = _gate_ancestors(flat)
        onnx.save(flat, str(work / "flat.onnx"))
        with warnings.catch_warnings(), _quiet_logging():  # its advice to pre-process, per-axis notes on 1-d weights
            warnings.simplefilter("ignore")
            quantization.quantize_static(
                str(work / "flat.onnx"), str(work / "flat-int8.onnx"),
                _reader(quantization, proto.graph.input[0].name, images),
                quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel,
                activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                nodes_to_exclude=sorted(excluded), calibrate_method=quantization.CalibrationMethod.MinMax,
            )
        quantized = onnx.load(str(work / "flat-int8.onnx"))
    _float_inputs_for(quantized, excluded)
    _fold_gates(onnx, quantized, blocks, {init.name: init for init in proto.graph.initializer})
    difference = _check_quantized(proto, quantized, images, max_logit_difference)
    config[INT8_CONFIG_KEY] = {"library": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                               "per_channel": per_channel, "activations": "uint8", "weights": "int8",
                               "calibration_images": int(images.shape[0]),
                               "max_logit_difference_on_calibration": difference,
                               "float_nodes": sorted(excluded)}
    _set_config(quantized, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".onnx") as temporary:
        onnx.save(quantized, str(temporary))
    return path


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """Python logging below ERROR off while onnxruntime's quantizer runs (it logs through the root logger)."""
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))
    try:
        yield
    finally:
        logging.disable(previous)


# ------------------------------------------------------------------------------------------------ checks


def check_quantization_tools() -> tuple[Any, Any]:
    """``(onnx, onnxruntime.quantization)``, or a RuntimeError that says what to install."""
    import importlib

    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise RuntimeError(f"INT8 quantization needs onnx and onnxruntime, and {' and '.join(missing)} "
                           f"{'is' if len(missing) == 1 else 'are'} not installed: pip install 'ofas-wrap[onnx]' "
                           "(onnx, onnxscript, onnxruntime)")
    try:
        quantization = importlib.import_module("onnxruntime.quantization")
        quantization.quantize_static, quantization.CalibrationDataReader  # noqa: B018 (an old build lacks them)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(
            "INT8 quantization needs onnxruntime's quantization tools (onnxruntime.quantization.quantize_static), "
            f"which this installation does not have ({exc}); install the full CPU package: pip install "
            "'ofas-wrap[onnx]' (onnxruntime, not onnxruntime-gpu builds without the tools)"
        ) from exc
    return importlib.import_module("onnx"), quantization


def _ofas_config(proto: Any, source: Any) -> dict:
    entries = {entry.key: entry.value for entry in proto.metadata_props}
    if ONNX_CONFIG_KEY not in entries or not any(node.op_type == "If" for node in proto.graph.node):
        raise ValueError(f"{source} is not an ONNX file from ofas_wrap.export_onnx (no {ONNX_CONFIG_KEY} metadata or "
                         "no If node per gate); export the model with export_onnx first")
    config = json.loads(entries[ONNX_CONFIG_KEY])
    if INT8_CONFIG_KEY in config:
        raise ValueError(f"{source} is already quantized; give the float32 file from export_onnx")
    return config


def calibration_batch(calibration: Any, input_size: Any, count: Optional[int] = None) -> Tensor:
    """The calibration images as one checked float32 CPU tensor ``(N, *input_size)``.

    ``calibration`` is a float tensor ``(N, C, H, W)``; or an iterable of such batches, of single ``(C, H, W)``
    images, or of ``(images, labels, ...)`` tuples (a ``DataLoader``, a dataset); or an onnxruntime
    ``CalibrationDataReader`` (its ``get_next()`` dicts, one input each). ``count`` takes the first ``count``
    images (an iterable is read only that far); ``None`` takes all of them. The images must be prepared as the
    model's inputs (normalised as for ``model(x)``) and come from training or held-out data, never from the test
    images you report.

    Example:
        >>> calibration_batch([(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]))] * 3, (3, 8, 8), count=5).shape
        torch.Size([5, 3, 8, 8])
    """
    expected = tuple(int(size) for size in input_size)
    shape = ", ".join(map(str, expected))
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"the number of calibration images must be a positive integer, got {count!r}")
    if isinstance(calibration, Tensor):
        images = calibration
    elif isinstance(calibration, np.ndarray):
        images = torch.from_numpy(calibration)
    elif callable(getattr(calibration, "get_next", None)):  # onnxruntime's CalibrationDataReader
        images = _collect(_reader_items(calibration), expected, count)
    elif isinstance(calibration, Iterable) and not isinstance(calibration, (str, bytes, dict)):
        images = _collect(iter(calibration), expected, count)
    else:
        raise TypeError(f"calibration must be a float tensor (N, {shape}) of images prepared as the model's inputs, "
                        f"a DataLoader / iterable of such batches, or an onnxruntime CalibrationDataReader; got "
                        f"{type(calibration).__name__}")
    if images.dim() != len(expected) + 1:
        raise ValueError(f"calibration must be a batch of images (N, {shape}), got shape {tuple(images.shape)}; "
                         "stack the images along a first dimension")
    if images.shape[1] != expected[0]:
        raise ValueError(f"calibration has {images.shape[1]} channels, the model takes {expected[0]} (input "
                         f"{expected}); give images with the channels the model was trained on")
    if tuple(images.shape[1:]) != expected:
        raise ValueError(f"calibration images are {tuple(images.shape[1:])}, the model takes {expected}; resize "
                         "them as for the model's inputs")
    if images.shape[0] < 1:
        raise ValueError("calibration has no images; give a few hundred training or validation images")
    if count is not None:
        if images.shape[0] < count:
            raise ValueError(f"{count} calibration images were asked for, but the calibration data holds only "
                             f"{images.shape[0]}")
        images = images[:count]
    if not images.is_floating_point():
        raise TypeError(f"calibration must be float images normalised as the model's inputs, got {images.dtype}"
                        " (uint8 images need the model's normalisation first)")
    if not torch.isfinite(images).all():
        raise ValueError("calibration has NaN or infinite values")
    return images.detach().cpu().float().contiguous()


def calibration_sample(dataset: Any, count: int, seed: int = 0) -> Tensor:
    """``count`` images of ``dataset`` (an ``ofas_wrap.data`` split: its ``__getitems__`` gives normalised images)
    picked at random with ``seed``, as one batch: what the CLI and ``recipes/evaluate.py`` calibrate INT8 on, from
    the training split (never the test split).

    Example:
        >>> from ofas_wrap.data import ImageTensorDataset
        >>> split = ImageTensorDataset(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.zeros(10, dtype=torch.int64),
        ...                            [0.5], [0.25])
        >>> calibration_sample(split, 4).shape
        torch.Size([4, 1, 4, 4])
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the number of calibration images must be a positive integer, got {count!r}")
    if len(dataset) < count:
        raise ValueError(f"{count} calibration images were asked for, but the training split holds only "
                         f"{len(dataset)}; ask for fewer")
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    images = dataset.__getitems__(pick.tolist())
    return images[0] if isinstance(images, (tuple, list)) else images


def int8_scores(model: Any, predicted: Tensor, labels: Tensor, gates: Tensor, float_probs: Tensor,
                threshold: float) -> dict[str, Any]:
    """What an INT8 graph of the OFAS ``model`` did on N test images at ``threshold``: its predicted classes
    ``(N,)``, the labels ``(N,)``, its gates ``(N, gates)`` and the float head's probabilities ``(N, gates)`` on the
    same images give ``top1``, the executed gates and blocks (ungated blocks always run), MFLOPs executed and
    ``gates_equal_float``, the share of images whose gates are the float head's (the head is float32 in both: a
    difference is float rounding at a decision's edge). One summary for ``compare``'s INT8 rows and
    ``recipes/evaluate.py --int8``."""
    executed = gates.sum(dim=1).double()
    return {"top1": float((predicted.cpu().to(torch.int64) == labels.cpu().to(torch.int64)).double().mean()),
            "executed_gates": float(executed.mean()),
            "executed_blocks": float(executed.mean()) + (len(model.blocks) - model.num_gates),
            "num_blocks": len(model.blocks), "num_gates": model.num_gates,
            "mflops": float(model.plan.executed_flops(gates).mean()) / 1e6,
            "gates_equal_float": float((gates == (float_probs.cpu() >= threshold)).all(dim=1).double().mean()),
            "test_count": int(labels.numel())}


def _reader_items(reader: Any) -> Any:
    while True:
        item = reader.get_next()
        if item is None:
            return
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError("a CalibrationDataReader for an OFAS export gives one input per call ({'image': "
                             f"array}}), got {type(item).__name__}"
                             + (f" with {len(item)} entries" if isinstance(item, dict) else ""))
        yield next(iter(item.values()))


def _collect(items: Any, expected: tuple, count: Optional[int]) -> Tensor:
    """Concatenate an iterable's batches (or single images, or the first element of tuples) up to ``count``."""
    batches, total = [], 0
    for item in items:
        if isinstance(item, (tuple, list)):
            if not item:
                raise ValueError("calibration data gave an empty item; give batches of images")
            item = item[0]
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(item)
        if not isinstance(item, Tensor):
            raise TypeError(f"calibration data must give image tensors (or (images, labels) pairs), got "
                            f"{type(item).__name__}")
        if item.dim() == len(expected):  # a single image, as a dataset gives them
            item = item.unsqueeze(0)
        if batches and item.shape[1:] != batches[0].shape[1:]:
            raise ValueError(f"calibration batches differ in shape: {tuple(batches[0].shape[1:])} and "
                             f"{tuple(item.shape[1:])}")
        batches.append(item.detach().cpu())
        total += item.shape[0] if item.dim() else 0
        if count is not None and total >= count:
            break
    if not batches:
        return torch.zeros(0, *expected)
    return torch.cat(batches)


# --------------------------------------------------------------------------------------- graph surgery


def _inline_gates(onnx: Any, proto: Any) -> tuple[Any, list[dict]]:
    """A copy of ``proto`` with each top-level ``If`` replaced by its then-branch's nodes, and where they came from."""
    flat = type(proto)()
    flat.CopyFrom(proto)
    nodes, blocks = [], []
    for node in flat.graph.node:
        if node.op_type != "If":
            nodes.append(node)
            continue
        branches = {attribute.name: attribute.g for attribute in node.attribute}
        run = branches["then_branch"]
        if len(run.output) != 1 or len(node.output) != 1:
            raise ValueError(f"{node.name}: a gate's If with {len(node.output)} outputs; export_onnx writes one")
        for inner in run.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in inner.attribute):
                raise ValueError(f"{node.name}: a nested branch inside a gated block cannot be quantized yet")
        names = []
        for inner in run.node:  # node names need only be unique inside a branch: make them unique in the graph
            inner.name = f"{node.name}/{inner.name or inner.op_type}"
            names.append(inner.name)
        nodes.extend(run.node)
        link = onnx.helper.make_node("Identity", [run.output[0].name], [node.output[0]], name=f"{node.name}/output")
        nodes.append(link)
        flat.graph.initializer.extend(run.initializer)
        flat.graph.value_info.extend(run.value_info)
        original = onnx.NodeProto()
        original.CopyFrom(node)
        blocks.append({"if": original, "nodes": set(names), "link": link.name, "output": run.output[0]})
    del flat.graph.node[:]
    flat.graph.node.extend(nodes)
    return flat, blocks


def _gate_ancestors(graph_proto: Any) -> set[str]:
    """Names of the nodes the ``gates`` output depends on (the stem and the head): they stay float."""
    producers = {output: node for node in graph_proto.graph.node for output in node.output}
    wanted = [output.name for output in graph_proto.graph.output if output.name == "gates"]
    if not wanted:
        raise ValueError("the ONNX graph has no `gates` output (not from export_onnx)")
    names, seen = set(), set()
    while wanted:
        tensor = wanted.pop()
        if tensor in seen or tensor not in producers:
            continue
        seen.add(tensor)
        node = producers[tensor]
        names.add(node.name)
        wanted.extend(node.input)
    return names


def _float_inputs_for(quantized: Any, excluded: set[str]) -> None:
    """Give the float nodes (the stem and the head) their float inputs back, in place: the quantizer puts a
    Quantize/DequantizeLinear pair on a tensor that quantized nodes read (the stem's output, read by the first block),
    and the head read that pair's rounded copy, so its gate decisions drifted from the float graph's at a decision's
    edge. Pairs no node reads any more are removed."""
    graph = quantized.graph
    producer = {output: node for node in graph.node for output in node.output}
    for node in graph.node:
        if node.name not in excluded:
            continue
        for index, tensor in enumerate(node.input):
            dequantize = producer.get(tensor)
            if dequantize is None or dequantize.op_type != "DequantizeLinear":
                continue
            quantize = producer.get(dequantize.input[0])
            if quantize is not None and quantize.op_type == "QuantizeLinear":
                node.input[index] = quantize.input[0]
    outputs = {output.name for output in graph.output}
    while True:
        read = {tensor for node in graph.node for tensor in node.input} | outputs
        unused = [node for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")
                  and not any(output in read for output in node.output)]
        if not unused:
            return
        for node in unused:
            graph.node.remove(node)


def _fold_gates(onnx: Any, quantized: Any, blocks: list[dict], float_initializers: dict) -> None:
    """Put each block's nodes (original and Quantize/DequantizeLinear) back into its If, in place. The skip
    branches are the float graph's; the float weights they read (a projection shortcut's), which the quantizer
    dropped from the flat graph as unused, go inside them."""
    graph = quantized.graph
    nodes = list(graph.node)
    producer = {output: index for index, node in enumerate(nodes) for output in node.output}
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    member = [-1] * len(nodes)
    by_name = {node.name: index for index, node in enumerate(nodes)}
    for k, block in enumerate(blocks):
        if block["link"] not in by_name:
            raise RuntimeError(f"the quantizer removed node {block['link']}; please report this with the "
                               "onnxruntime version")
        for name in block["nodes"] | {block["link"]}:  # the quantizer removes some (a Relu folded into a range)
            if name in by_name:
                member[by_name[name]] = k
    outputs_of_links = {nodes[by_name[block["link"]]].output[0] for block in blocks}
    originals = set().union(*(block["nodes"] | {block["link"]} for block in blocks)) if blocks else set()
    for index, node in enumerate(nodes):  # Q/DQ on a block's activations: in that block
        if node.name in originals or node.name in by_name and member[index] >= 0:
            continue
        sources = {member[producer[name]] for name in node.input
                   if name in producer and name not in outputs_of_links}
        if len(sources) == 1 and min(sources) >= 0:
            member[index] = sources.pop()
    graph_outputs = {output.name for output in graph.output}
    changed = True
    while changed:  # a Quantize/DequantizeLinear that only one block reads (a weight's, the block input's): in it,
        changed = False  # so a skipped block computes none of them and ORT fuses DQ -> Conv -> Q inside the branch
        for index in reversed(range(len(nodes))):
            node = nodes[index]
            if member[index] >= 0 or node.name in originals or node.op_type not in _QDQ:
                continue
            if any(output in graph_outputs for output in node.output):
                continue
            users = {member[user] for output in node.output for user in consumers.get(output, [])}
            if len(users) == 1 and min(users) >= 0:
                member[index] = users.pop()
                changed = True
    kept, value_infos = [], {info.name: info for info in graph.value_info}
    moved_infos: set[str] = set()
    for k, block in enumerate(blocks):
        inside = [index for index in range(len(nodes)) if member[index] == k]
        produced = {output for index in inside for output in nodes[index].output}
        for index, node in enumerate(nodes):
            if member[index] != k and any(name in produced - outputs_of_links for name in node.input):
                raise RuntimeError(f"{node.name} outside gated block {k} reads a tensor of the block; the INT8 graph "
                                   "could not be folded back (please report this with the onnxruntime version)")
        link = nodes[by_name[block["link"]]]
        body = [nodes[index] for index in inside if index != by_name[block["link"]]]
        own = [init for init in graph.initializer
               if all(member[user] == k for user in consumers.get(init.name, [None]) if user is not None)
               and consumers.get(init.name)]
        block["own_initializers"] = own
        result = onnx.ValueInfoProto()  # what the link reads (the quantizer may have folded the last Relu away)
        result.CopyFrom(block["output"])
        result.name = link.input[0]
        if result.name not in produced:
            raise RuntimeError(f"the output of gated block {k} is not computed inside it after quantization; "
                               "please report this with the onnxruntime version")
        then = onnx.helper.make_graph(body, f"{block['if'].name}_int8", [], [result], initializer=own,
                                      value_info=[value_infos[name] for name in produced
                                                  if name in value_infos and name != result.name])
        moved_infos |= produced
        folded = onnx.NodeProto()
        folded.CopyFrom(block["if"])
        for attribute in folded.attribute:
            if attribute.name == "then_branch":
                attribute.g.CopyFrom(then)
        block["folded"] = folded
        block["position"] = by_name[block["link"]]
    moved_initializers = {init.name for block in blocks for init in block["own_initializers"]}
    remaining = [init for init in graph.initializer if init.name not in moved_initializers]
    present = {init.name for init in remaining}
    for block in blocks:  # the float weights a skip branch reads, wherever the quantizer or the fold put them
        skip = next(attribute.g for attribute in block["folded"].attribute if attribute.name == "else_branch")
        wanted = {name for inner in skip.node for name in inner.input} - {init.name for init in skip.initializer}
        skip.initializer.extend(float_initializers[name] for name in sorted(wanted - present)
                                if name in float_initializers)
    positions = {block["position"]: block["folded"] for block in blocks}
    for index, node in enumerate(nodes):
        if index in positions:
            kept.append(positions[index])
        elif member[index] < 0:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    infos = [info for info in graph.value_info if info.name not in moved_infos]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def _set_config(proto: Any, config: dict) -> None:
    entries = [(entry.key, entry.value) for entry in proto.metadata_props if entry.key != ONNX_CONFIG_KEY]
    del proto.metadata_props[:]
    for key, value in entries + [(ONNX_CONFIG_KEY, json.dumps(config))]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _check_quantized(float_proto: Any, quantized: Any, images: np.ndarray,
                     max_logit_difference: Optional[float]) -> float:
    import onnxruntime

    for node in quantized.graph.node:
        if node.op_type == "If":
            then = next(a.g for a in node.attribute if a.name == "then_branch")
            if not any(inner.op_type == "QuantizeLinear" for inner in then.node):
                raise RuntimeError(f"{node.name}: the quantizer left this gated block in float; nothing was written "
                                   "(please report this with the onnxruntime version)")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # not the exporter's unused initializer, once per session
    sessions = [onnxruntime.InferenceSession(p.SerializeToString(), options, providers=["CPUExecutionProvider"])
                for p in (float_proto, quantized)]
    name = float_proto.graph.input[0].name
    difference = 0.0
    for i in range(images.shape[0]):
        (logits, gates), (q_logits, q_gates) = (s.run(["logits", "gates"], {name: images[i:i + 1]}) for s in sessions)
        if not np.array_equal(gates, q_gates):
            raise RuntimeError(f"the INT8 graph takes other gate decisions than the float graph on calibration image "
                               f"{i}; nothing was written (please report this: the stem and head should be float)")
        difference = max(difference, float(np.abs(logits - q_logits).max()))
    if max_logit_difference is not None and difference > max_logit_difference:
        raise RuntimeError(f"the INT8 logits differ from float32 by up to {difference:.3g} on the calibration images "
                           f"(> max_logit_difference={max_logit_difference:g}); nothing was written. Calibrate on "
                           "more or more typical images, or accept a larger difference")
    return difference


def _reader(quantization: Any, name: str, images: np.ndarray) -> Any:
    """onnxruntime's CalibrationDataReader over ``images``: one image per call, batch of one as exported."""

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.index = 0

        def get_next(self) -> Optional[dict]:
            if self.index >= images.shape[0]:
                return None
            self.index += 1
            return {name: images[self.index - 1:self.index]}

        def rewind(self) -> None:
            self.index = 0

    return Reader()
