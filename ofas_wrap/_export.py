"""Export an OFAS model for deployment: TorchScript with real skipping, and torch.export for a batch of one.

``export_torchscript`` *scripts* (it does not trace) the model, so every gate stays a real ``if`` branch (a
batch of one) or per-sample routing (larger batches) in the TorchScript graph; the threshold stays settable
(``module.gate_threshold.fill_(T)``), and the model's config travels inside the file (``ofas_config.json``
in ``_extra_files``), so a plain ``torch.jit.load`` on a device without ofas-wrap gets both.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ._assembly import build_config
from ._atomic import atomic_path
from ._config import ONNX_CONFIG_KEY, ONNX_THRESHOLD_NAME, check_threshold
from ._hub import CheckpointError, read_config

__all__ = ["EXTRA_CONFIG_NAME", "ONNX_CONFIG_KEY", "ONNX_THRESHOLD_NAME", "export_torchscript", "load_torchscript",
           "export_program", "export_onnx", "quantize_onnx", "set_onnx_threshold", "script_with_fx_fallback"]

EXTRA_CONFIG_NAME = "ofas_config.json"
PathLike = Union[str, os.PathLike]


def export_torchscript(model: nn.Module, path: PathLike, example_input: Optional[Tensor] = None, *,
                       prune: Optional[Any] = None, atol: float = 1e-5, rtol: float = 1e-4) -> Path:
    """Script ``model`` (eval mode), check it against eager mode, and save it atomically to ``path``.

    The check runs ``example_input`` (default: a seeded random batch of 2 at the model's input size) through
    both at the model's threshold and at T = 0, and compares outputs and gate decisions; a mismatch is an
    error and nothing is written. The file is written to a temporary name beside ``path`` and renamed.

    ``prune=keep`` writes the depth-pruned network instead (:func:`ofas_wrap.prune_blocks`: the plain backbone with
    the gated blocks ``keep`` removes taken out; no head, no gates, no threshold). It is checked against ``model``
    with ``model.forced_gates(keep)`` in eval mode, and its config (``ofas_config.json``) has a ``pruned`` section.

    Returns ``path``. Load it with ``torch.jit.load`` (no ofas-wrap needed) or :func:`load_torchscript`.

    Example:
        >>> import tempfile, torch, ofas_wrap
        >>> model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
        >>> path = ofas_wrap.export_torchscript(model, tempfile.mkdtemp() + "/resnet8.pt")
        >>> extra = {"ofas_config.json": ""}
        >>> scripted = torch.jit.load(str(path), _extra_files=extra)
        >>> scripted.gate_threshold.fill_(0.7)  # the threshold stays settable
        tensor(0.7000)
        >>> scripted(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 10])
    """
    from ._model import OFASModel

    if not isinstance(model, OFASModel):
        raise TypeError(
            f"export_torchscript expects an OFASModel (from ofas_wrap.adaptify), got {type(model).__name__}"
        )
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name such as {path / 'model.pt'}")
    device = _device_of(model)
    if example_input is None:
        generator = torch.Generator().manual_seed(0)
        example_input = torch.randn(2, *model.config["input_size"], generator=generator)
    if not isinstance(example_input, Tensor) or example_input.dim() < 1:
        raise TypeError("example_input must be a batched input tensor, e.g. torch.randn(1, 3, 32, 32)")
    example_input = example_input.to(device)
    if prune is not None:
        return _export_pruned(model, path, example_input, prune, atol, rtol)
    config = build_config(model)
    config["export"] = {"format": "torchscript", "torch_version": torch.__version__.split("+")[0],
                        "example_input_shape": list(example_input.shape)}
    was_training, threshold = model.training, model.threshold
    model.eval()
    try:
        scripted, traced = script_with_fx_fallback(model)
        if traced:
            config["export"]["fx_traced_modules"] = traced
        for value in sorted({threshold, 0.0}):
            _check_same(model, scripted, example_input, value, atol, rtol)
    finally:
        model.threshold = threshold
        model.train(was_training)
    scripted.gate_threshold.fill_(threshold)
    _atomic_jit_save(scripted, path, {EXTRA_CONFIG_NAME: json.dumps(config, indent=2)})
    return path


def _export_pruned(model: Any, path: Path, example_input: Tensor, keep: Any, atol: float, rtol: float) -> Path:
    """``export_torchscript(model, path, prune=keep)``: script the pruned network, check it against the OFAS model
    with ``keep`` forced (eval mode), then write it atomically with its config."""
    from ._prune import check_keep, prune_blocks, pruned_config

    pattern = check_keep(keep, model.gated_block_names)
    network = prune_blocks(model, pattern).eval()
    for module in network.modules():  # a projection kept from a user's option-A shortcut: F.pad's fill as a float
        if isinstance(module, torch.fx.GraphModule):
            _scriptable_constants(module)
    config = pruned_config(model, pattern, build_config(model))
    config["export"] = {"format": "torchscript", "torch_version": torch.__version__.split("+")[0],
                        "example_input_shape": list(example_input.shape)}
    scripted, traced = script_with_fx_fallback(network)
    if traced:
        config["export"]["fx_traced_modules"] = traced
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), model.forced_gates(torch.tensor(pattern, dtype=torch.bool)):
            expected = model(example_input)
            got = scripted(example_input)
    finally:
        model.train(was_training)
    if not torch.allclose(expected, got, atol=atol, rtol=rtol):
        raise RuntimeError(
            f"the scripted pruned network differs from the OFAS model with its pattern forced (max |difference| "
            f"{(expected - got).abs().max().item():.3g}); nothing was written. Please report this with the backbone "
            "name."
        )
    _atomic_jit_save(scripted, path, {EXTRA_CONFIG_NAME: json.dumps(config, indent=2)})
    return path


def script_with_fx_fallback(model: nn.Module) -> tuple[Any, list[str]]:
    """``torch.jit.script(model)``; where a user's module cannot be scripted (a ``lambda`` in a module, as in the
    option-A shortcuts of public CIFAR ResNets, or Python TorchScript does not read), script a copy of the model in
    which each such module is replaced by its ``torch.fx.symbolic_trace``: the same operations as a graph, which
    TorchScript reads. Only modules from outside ofas-wrap are replaced (ours hold the gates' control flow, which
    a trace would freeze); the caller checks the result against eager mode. Returns the scripted module and the
    qualified names of the replaced modules (empty when the model scripts as it is); the model is not changed.
    """
    try:
        with _quiet_jit():
            return torch.jit.script(model), []
    except Exception as first_error:
        clone = copy.deepcopy(model).eval()
        for module in clone.modules():  # our own traces of the user's code carry its constants as written
            if isinstance(module, torch.fx.GraphModule):
                _scriptable_constants(module)
        traced = _replace_unscriptable(clone, "")
        if not traced:
            raise
        try:
            with _quiet_jit():
                return torch.jit.script(clone), traced
        except Exception as exc:
            raise RuntimeError(f"TorchScript cannot compile this model ({first_error}), nor with "
                               f"{', '.join(traced)} replaced by torch.fx traces ({exc})") from exc


def _replace_unscriptable(module: nn.Module, prefix: str) -> list[str]:
    replaced = []
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        qualified = f"{prefix}{name}"
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):  # no forward of their own: scripting them alone
            replaced += _replace_unscriptable(child, qualified + ".")  # compiles nothing, so look inside
            continue
        try:
            with _quiet_jit():  # on copies throughout: TorchScript compiles each GraphModule class only once
                torch.jit.script(copy.deepcopy(child))
            continue
        except Exception:
            pass
        if not _ours(child) and not isinstance(child, torch.fx.GraphModule):
            try:
                graph_module = _scriptable_constants(torch.fx.symbolic_trace(child))
                with _quiet_jit():
                    torch.jit.script(copy.deepcopy(graph_module))
                setattr(module, name, graph_module)
                replaced.append(qualified)
                continue
            except Exception:
                pass  # not traceable as a whole: look inside
        replaced += _replace_unscriptable(child, qualified + ".")
    return replaced


def _ours(module: nn.Module) -> bool:
    package = type(module).__module__
    return package == "ofas_wrap" or package.startswith("ofas_wrap.")  # not ofas_wrap_user_* (a user's file)


def _scriptable_constants(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Python accepts ``F.pad(x, p, "constant", 0)``; TorchScript wants the fill value as a float."""
    import torch.nn.functional as F

    changed = False
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target in (F.pad, torch._C._nn.pad):
            if len(node.args) >= 4 and isinstance(node.args[3], int) and not isinstance(node.args[3], bool):
                node.args = (*node.args[:3], float(node.args[3]), *node.args[4:])
                changed = True
            value = node.kwargs.get("value")
            if isinstance(value, int) and not isinstance(value, bool):
                node.kwargs = {**node.kwargs, "value": float(value)}
                changed = True
    if changed:
        graph_module.recompile()
    return graph_module


def load_torchscript(path: PathLike, map_location: Union[str, torch.device, None] = None) -> tuple[Any, dict]:
    """Load a file written by :func:`export_torchscript`: returns ``(scripted_module, config)``.

    Raises :class:`CheckpointError` for a file that is not TorchScript or is TorchScript without the
    OFAS config (another model), and for a config from a newer ofas-wrap. A depth-pruned network
    (``export_torchscript(..., prune=keep)``) loads too: a plain module, whose config has a ``pruned`` section.

    Example:
        >>> import tempfile, ofas_wrap
        >>> path = ofas_wrap.export_torchscript(ofas_wrap.create_model("cifar:resnet8"), tempfile.mkdtemp() + "/m.pt")
        >>> module, config = ofas_wrap.load_torchscript(path)
        >>> config["backbone"]["name"], config["ofas"]["gated_blocks"]
        ('resnet8', ['layer1.0', 'layer2.0', 'layer3.0'])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a TorchScript file from export_torchscript)")
    extra = {EXTRA_CONFIG_NAME: ""}
    try:
        with _quiet_jit():
            module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a TorchScript file (torch.jit.load: {first}); export one with "
            "ofas_wrap.export_torchscript or `ofas-wrap export`"
        ) from None
    raw = extra[EXTRA_CONFIG_NAME]
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    if not text:
        raise CheckpointError(
            f"{path} is TorchScript but not an OFAS model export: it carries no {EXTRA_CONFIG_NAME}; export the "
            "model with ofas_wrap.export_torchscript"
        )
    config = read_config(f"{path}:{EXTRA_CONFIG_NAME}", text=text)
    from ._prune import read_pruned

    if read_pruned(config, f"{path}:{EXTRA_CONFIG_NAME}") is not None:
        return module, config  # a depth-pruned network (export_torchscript(prune=...)): no gates, no threshold
    if not hasattr(module, "gate_threshold"):
        raise CheckpointError(f"{path}: the module has no gate_threshold buffer; it is not an OFAS model")
    return module, config


def export_program(model: nn.Module, example_input: Optional[Tensor] = None) -> Any:
    """``torch.export`` the model for a **batch of one**, each gate a ``torch.cond`` (real skipping).

    ``torch.cond`` takes one boolean per call, so it can route a single input but not a batch whose samples
    take different paths: per-sample routing needs data-dependent batch sizes, which torch.export could not
    trace through the backbone's layers on torch 2.14. Hence the exported program has a static batch of 1;
    for batches use :func:`export_torchscript`. The threshold is the ``gate_threshold`` buffer of the program.
    The result is checked against eager mode at the model's threshold and at T = 0.

    Example:
        >>> import torch, ofas_wrap
        >>> model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
        >>> program = ofas_wrap.export_program(model)
        >>> program.module()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 10])
    """
    from ._model import OFASModel

    if not isinstance(model, OFASModel):
        raise TypeError(f"export_program expects an OFASModel (from ofas_wrap.adaptify), got {type(model).__name__}")
    if not hasattr(torch, "cond") or not hasattr(torch, "export"):
        raise RuntimeError(f"export_program needs torch.cond and torch.export (torch >= 2.5), not {torch.__version__}")
    if example_input is None:
        example_input = torch.randn(1, *model.config["input_size"], generator=torch.Generator().manual_seed(0))
    if example_input.dim() < 1 or example_input.shape[0] != 1:
        raise ValueError(
            f"export_program exports a batch of one (torch.cond routes one input), got batch {example_input.shape[0]}"
            "; use export_torchscript for per-sample routing in batches"
        )
    example_input = example_input.to(_device_of(model))
    was_training, threshold = model.training, model.threshold
    model.eval()
    try:
        program = torch.export.export(_CondRouter(model, with_gates=False).eval(), (example_input,))
        for value in sorted({threshold, 0.0}):
            model.threshold = value
            with torch.no_grad():
                expected, got = model(example_input), program.module()(example_input)
            if not torch.allclose(expected, got, atol=1e-5, rtol=1e-4):
                raise RuntimeError(f"the exported program differs from eager mode at T={value} by "
                                   f"{(expected - got).abs().max().item():.3g}")
    finally:
        model.threshold = threshold
        model.train(was_training)
    return program


def export_onnx(model: nn.Module, path: PathLike, example_input: Optional[Tensor] = None, *,
                opset_version: Optional[int] = None, atol: float = 1e-5, rtol: float = 1e-4,
                quantize: Optional[str] = None, calibration: Any = None, calibration_images: Optional[int] = None,
                per_channel: bool = True, max_logit_difference: Optional[float] = None) -> Path:
    """Export to ONNX for a **batch of one**: each gated block an ONNX ``If``, so a skipped block is not computed.

    Built from the same ``torch.cond`` routing as :func:`export_program` with the dynamo-based
    ``torch.onnx.export``. Per-sample routing of batches is not exported: it needs data-dependent batch sizes,
    which torch.export could not trace through the backbone's layers on torch 2.14 (use TorchScript for batches).
    Outputs: ``logits`` and ``gates`` (1, num_gates) bool, which gated blocks ran.
    The threshold T is the initializer ``model.gate_threshold`` (change it with :func:`set_onnx_threshold`); the
    config (gate names, FLOPs per block, normalisation) is the ``ofas_config`` entry of the metadata. When
    onnxruntime is installed the file is checked against eager mode at the model's T and at T = 0 before it is
    written (atomically). Needs the ``onnx`` extra (onnx, onnxscript; onnxruntime for the check).

    ``quantize="int8"`` writes the INT8 graph instead, in one call (:func:`quantize_onnx`): the float32 graph is
    exported into a temporary folder and checked as above, then onnxruntime's static quantization (QDQ,
    ``per_channel`` int8 weights, uint8 activations) quantizes the blocks inside their ``If`` branches, calibrated
    on ``calibration``; the stem and the gating head stay float32, so the INT8 graph takes the float graph's gate
    decisions (checked on every calibration image). ``calibration``: a float tensor ``(N, C, H, W)`` of images
    prepared as the model's inputs, a ``DataLoader`` / iterable of such batches (or ``(images, labels)``), or an
    onnxruntime ``CalibrationDataReader``; a few hundred **training or held-out** images, never the test images you
    report. ``calibration_images`` takes the first N of them (default: all). ``max_logit_difference`` bounds the
    largest |INT8 - float32 logit| on them. Everything is checked before anything is written (onnxruntime and its
    quantization tools, the calibration images' shape, type and count against the model's input); ``path`` gets
    the whole INT8 file or stays as it was, and no float32 file is left anywhere.

    Example:
        >>> import tempfile, torch, ofas_wrap
        >>> model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
        >>> path = ofas_wrap.export_onnx(model, tempfile.mkdtemp() + "/m.onnx")  # doctest: +SKIP
        >>> path = ofas_wrap.export_onnx(model, tempfile.mkdtemp() + "/m-int8.onnx", quantize="int8",
        ...                              calibration=torch.randn(64, 3, 16, 16))  # doctest: +SKIP
    """
    from ._model import OFASModel

    if not isinstance(model, OFASModel):
        raise TypeError(f"export_onnx expects an OFASModel (from ofas_wrap.adaptify), got {type(model).__name__}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name such as {path / 'model.onnx'}")
    example_input = _onnx_example(model, example_input)
    if quantize is None:
        if calibration is not None or calibration_images is not None:
            raise ValueError("calibration images are for quantize='int8'; pass quantize='int8' to write the INT8 "
                             "graph, or leave calibration out for the float32 one")
        return _export_float_onnx(model, path, example_input, opset_version, atol, rtol)
    from ._quantize import QUANTIZE_CHOICES, calibration_batch, check_quantization_tools, quantize_file

    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {', '.join(map(repr, QUANTIZE_CHOICES))} or None, got {quantize!r}")
    if calibration is None:
        raise ValueError("quantize='int8' needs calibration images: a float tensor (N, C, H, W) of a few hundred "
                         "training images prepared as the model's inputs (never the test images you report)")
    if max_logit_difference is not None and not max_logit_difference > 0:
        raise ValueError(f"max_logit_difference must be positive, got {max_logit_difference}")
    check_quantization_tools()
    images = calibration_batch(calibration, model.config["input_size"], calibration_images)
    with tempfile.TemporaryDirectory(prefix="ofas-export-") as work:
        try:
            float_path = _export_float_onnx(model, Path(work) / "float.onnx", example_input, opset_version, atol,
                                            rtol)
        except Exception as exc:
            raise RuntimeError(f"this model cannot be exported to ONNX, so it cannot be quantized ({exc}); nothing "
                               "was written. The float32 export_onnx must succeed first (batch of one, an If per "
                               "gate)") from exc
        return quantize_file(float_path, path, images, per_channel=per_channel,
                             max_logit_difference=max_logit_difference)


def quantize_onnx(source: Any, path: PathLike, calibration: Any, *, calibration_images: Optional[int] = None,
                  per_channel: bool = True, max_logit_difference: Optional[float] = None) -> Path:
    """Write an INT8 copy of an OFAS model's ONNX export to ``path``: the blocks quantized, still skipped for real.

    ``source`` is an OFASModel (the same as ``export_onnx(model, path, quantize="int8", calibration=...)``) or the
    path of a float32 ``.onnx`` file written by :func:`export_onnx`. ``calibration`` is a float tensor
    ``(N, C, H, W)`` of images prepared as the model's inputs (normalised as for ``model(x)``), or a ``DataLoader``
    / iterable of such batches, or an onnxruntime ``CalibrationDataReader``: a few hundred training or validation
    images, never the test images you report (``calibration_images`` takes the first N). The stem and the gating
    head stay float32, so the gates are the float model's decisions; the blocks' convolutions and additions run in
    INT8 (per-channel weights with ``per_channel``).

    Checks before anything is written: the calibration shape, channels and type; onnxruntime's quantization tools;
    that ``source`` exports (or is an ``export_onnx`` file). After quantizing, the INT8 graph must take the float
    graph's gate decisions on every calibration image, or nothing is written; with ``max_logit_difference`` the
    largest |logit difference| on those images must stay within it too. The file carries the float file's
    metadata plus an ``int8`` record (calibration count, largest logit difference, float nodes). Returns ``path``.

    Example:
        >>> import tempfile, torch, ofas_wrap
        >>> model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
        >>> path = ofas_wrap.quantize_onnx(model, tempfile.mkdtemp() + "/m-int8.onnx",
        ...                                torch.randn(16, 3, 16, 16))  # doctest: +SKIP
    """
    from ._model import OFASModel
    from ._quantize import quantize_file

    if isinstance(source, OFASModel):
        return export_onnx(source, path, quantize="int8", calibration=calibration,
                           calibration_images=calibration_images, per_channel=per_channel,
                           max_logit_difference=max_logit_difference)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"quantize_onnx takes an OFASModel or the path of a file from export_onnx, got "
                        f"{type(source).__name__}")
    return quantize_file(source, path, calibration, calibration_images=calibration_images, per_channel=per_channel,
                         max_logit_difference=max_logit_difference)


def _onnx_example(model: nn.Module, example_input: Optional[Tensor]) -> Tensor:
    if example_input is None:
        example_input = torch.randn(1, *model.config["input_size"], generator=torch.Generator().manual_seed(0))
    if not isinstance(example_input, Tensor) or example_input.dim() < 1 or example_input.shape[0] != 1:
        got = f"batch {example_input.shape[0]}" if isinstance(example_input, Tensor) and example_input.dim() else (
            type(example_input).__name__)
        raise ValueError(f"export_onnx exports a batch of one (an ONNX If routes one input), got {got}; use "
                         "export_torchscript for per-sample routing in batches")
    return example_input.to(_device_of(model))


def _export_float_onnx(model: nn.Module, path: Path, example_input: Tensor, opset_version: Optional[int],
                       atol: float, rtol: float) -> Path:
    """The float32 ``export_onnx`` (``model``, ``path`` and ``example_input`` checked by the caller)."""
    try:
        import onnx
    except ImportError as exc:
        raise RuntimeError("export_onnx needs onnx and onnxscript: pip install 'ofas-wrap[onnx]'") from exc
    config = build_config(model)
    config["export"] = {"format": "onnx", "torch_version": torch.__version__.split("+")[0], "batch_size": 1,
                        "threshold_initializer": ONNX_THRESHOLD_NAME}
    was_training, threshold = model.training, model.threshold
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path, suffix=".onnx") as temporary:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(_CondRouter(model).eval(), (example_input,), str(temporary), dynamo=True,
                                  opset_version=opset_version, input_names=["image"],
                                  output_names=["logits", "gates"],
                                  external_data=False, verbose=False)
            proto = onnx.load(str(temporary))
            if not any(node.op_type == "If" for node in proto.graph.node):
                raise RuntimeError("the ONNX graph has no If node: the gates were not exported as branches")
            if not any(init.name == ONNX_THRESHOLD_NAME for init in proto.graph.initializer):
                raise RuntimeError(f"the ONNX graph has no {ONNX_THRESHOLD_NAME} initializer to set T with")
            entry = proto.metadata_props.add()
            entry.key, entry.value = ONNX_CONFIG_KEY, json.dumps(config)
            for value in sorted({threshold, 0.0}):
                _check_onnx(model, proto, example_input, value, atol, rtol)
            set_onnx_threshold(proto, threshold)
            onnx.save(proto, str(temporary))
    finally:
        model.threshold = threshold
        model.train(was_training)
    return path


def set_onnx_threshold(proto: Any, threshold: float) -> Any:
    """Set T in an ONNX model written by :func:`export_onnx` (an ``onnx.ModelProto``, changed in place): the
    ``model.gate_threshold`` initializer, and the threshold of the config in its metadata (which
    ``ofas-wrap bench`` and ``recipes/device_latency.py`` start from)."""
    from onnx import numpy_helper

    threshold = check_threshold(threshold)
    for init in proto.graph.initializer:
        if init.name == ONNX_THRESHOLD_NAME:
            current = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(current.copy().astype(current.dtype) * 0 + threshold,
                                                  ONNX_THRESHOLD_NAME))
            for entry in proto.metadata_props:
                if entry.key == ONNX_CONFIG_KEY:
                    config = json.loads(entry.value)
                    if isinstance(config.get("ofas"), dict) and "threshold" in config["ofas"]:
                        config["ofas"]["threshold"] = threshold
                        entry.value = json.dumps(config)
            return proto
    raise ValueError(f"this ONNX model has no {ONNX_THRESHOLD_NAME} initializer (not written by export_onnx)")


def _check_onnx(model: nn.Module, proto: Any, x: Tensor, threshold: float, atol: float, rtol: float) -> None:
    try:
        import onnxruntime
    except ImportError:
        return  # nothing to check with; the export itself succeeded
    set_onnx_threshold(proto, threshold)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # not the exporter's unused initializer
    session = onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    model.threshold = threshold
    with torch.no_grad():
        expected = model(x).cpu().numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})[0]
    if not abs(expected - got).max() <= atol + rtol * abs(expected).max():
        raise RuntimeError(f"the ONNX model differs from eager mode at T={threshold:g} by "
                           f"{abs(expected - got).max():.3g}; nothing was written")


class _CondRouter(nn.Module):
    """The OFAS forward for one input with ``torch.cond`` per gate (for torch.export)."""

    def __init__(self, model: nn.Module, with_gates: bool = True) -> None:
        super().__init__()
        self.model = model
        self.with_gates = with_gates

    def forward(self, x: Tensor) -> Union[Tensor, tuple[Tensor, Tensor]]:
        features, probs = self.model.gate_probabilities(x)
        gates = probs >= self.model.gate_threshold  # (1, gates): the second output, which blocks ran
        run = gates[0]
        carried: list[Tensor] = []  # outer shortcuts' inputs, as in OFASModel._blocks_inference
        if self.model.carries:
            features, carried = self.model.entry(features, carried)
        for block in self.model.blocks:
            if block.gate_index < 0:
                features = block.after(block.block(features))
            else:
                skip = _clone if block.identity_shortcut else block.shortcut  # cond branches must not alias inputs
                features = block.after(torch.cond(run[block.gate_index], block.block, skip, (features,)))
            if self.model.carries:
                features, carried = block.link(features, carried)
        logits = self.model.tail(features)
        return (logits, gates) if self.with_gates else logits


def _clone(x: Tensor) -> Tensor:
    return x.clone()


def _check_same(model: nn.Module, scripted: Any, x: Tensor, threshold: float, atol: float, rtol: float) -> None:
    model.threshold = threshold  # the scripted module shares the threshold buffer; set both anyway
    scripted.gate_threshold.fill_(threshold)
    with torch.no_grad():
        expected = model(x)
        eager_gates = model.last_gates.clone()
        got = scripted(x)
    same_gates = torch.equal(eager_gates, scripted.last_gates.cpu())
    if not same_gates or not torch.allclose(expected, got, atol=atol, rtol=rtol):
        raise RuntimeError(
            f"the scripted model differs from eager mode at T={threshold:g} (max |difference| "
            f"{(expected - got).abs().max().item():.3g}, gates equal: {same_gates})"
            "; nothing was written. Please report this with the backbone name."
        )


def _atomic_jit_save(module: Any, path: Path, extra_files: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, _quiet_jit():
        torch.jit.save(module, str(temporary), _extra_files=extra_files)


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence torch's "torch.jit.* is deprecated" FutureWarning: TorchScript is what runs on the devices."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        yield


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")

