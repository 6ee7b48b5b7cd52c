"""The model's side of a saved folder: what a model's ``config.json`` says about it and how its backbone comes back.

- :func:`build_config`: the ``config.json`` of a model (backbone spec, OFAS settings, descriptions, FLOPs);
- :func:`infer_backbone_spec`: which registry spec rebuilds a backbone (``_build_backbone``: the backbone a spec
  names, with random weights);
- a backbone from a user's ``file.py:FACTORY``: its code is copied beside the weights on save and found there on load.

:class:`ofas_wrap.OFASModel`'s ``save_pretrained`` / ``from_pretrained`` (``_model.py``) call these, the surgery
and the files layer (``_hub.py``: formats, safetensors, atomic writes, the Hub, the card); nothing here imports
the model class or the surgery, and the files layer imports nothing from here.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ._config import FORMAT_NAME, FORMAT_VERSION, OFASConfig, float32_repr
from ._hub import METADATA_KEYS, OFAS_KEYS, CheckpointError, _validate_metadata, _write_text
from ._version import __version__
from .models import BackboneSpec, CifarResNet, create_backbone
from .models._user import FACTORY_SOURCE, split_factory_spec

__all__ = ["build_config", "infer_backbone_spec"]


def build_config(model: Any, **overrides: Any) -> dict[str, Any]:
    """The ``config.json`` of ``model``: backbone spec, OFAS settings, metadata, FLOPs; validated."""
    ofas = {key: model.config.get(key) for key in OFAS_KEYS if key in model.config
            or key not in OFASConfig.OPTIONAL_KEYS}
    ofas["threshold"] = float32_repr(model.threshold)
    missing = [key for key in ("variant", "input_size", "gated_blocks", "blocks") if ofas[key] is None]
    if missing:
        raise ValueError(f"model.config lacks {missing}; build the model with ofas_wrap.adaptify or create_model")
    backbone = model.unwrap()
    spec = model.config.get("backbone") or infer_backbone_spec(backbone)
    config: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "ofas_wrap_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "architecture": "OFASModel",
        "backbone": _jsonable(spec) if spec else None,
        "backbone_class": f"{type(backbone).__module__}.{type(backbone).__qualname__}",
        "ofas": ofas,
        "num_gates": model.num_gates,
    }
    for key in METADATA_KEYS:
        value = overrides.get(key)
        config[key] = value if value is not None else model.config.get(key)
    if config["normalization"] is None:
        config["normalization"] = _timm_normalization(backbone)
    spec_kwargs = _jsonable(spec)["kwargs"] if spec else {}
    num_classes = spec_kwargs.get("num_classes", getattr(backbone, "num_classes", None))
    _validate_metadata(config, num_classes if isinstance(num_classes, int) else None)
    config["flops"] = _flops_summary(model)
    return json.loads(json.dumps(config))  # plain JSON types only (tuples -> lists), fails early if not JSON


def infer_backbone_spec(backbone: nn.Module) -> Optional[dict[str, Any]]:
    """How a registry can rebuild ``backbone``: ``{"source", "name", "kwargs"}``, or None if it cannot.

    Recognises the CIFAR ResNets, timm models (``pretrained_cfg["architecture"]``) and torchvision ResNets;
    a candidate counts only if a freshly built one has exactly the same weight names and shapes.

    Example:
        >>> from ofas_wrap.models import cifar_resnet
        >>> infer_backbone_spec(cifar_resnet(14, num_classes=5))
        {'source': 'cifar', 'name': 'resnet14', 'kwargs': {'num_classes': 5, 'in_chans': 3}}
    """
    candidates: list[dict[str, Any]] = []
    module_name = type(backbone).__module__
    if type(backbone) is CifarResNet:
        candidates.append({"source": "cifar", "name": f"resnet{backbone.depth}",
                           "kwargs": {"num_classes": backbone.num_classes, "in_chans": backbone.in_chans}})
    elif module_name.startswith("timm."):
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        architecture = cfg.get("architecture")
        if architecture:
            kwargs = {"in_chans": _in_channels(backbone)}
            if isinstance(getattr(backbone, "num_classes", None), int):
                kwargs["num_classes"] = backbone.num_classes
            candidates.append({"source": "timm", "name": architecture, "kwargs": kwargs})
    elif module_name.startswith("torchvision.models") and type(backbone).__name__ == "ResNet":
        fc = getattr(backbone, "fc", None)
        kwargs = {"num_classes": fc.out_features} if isinstance(fc, nn.Linear) else {}
        for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                     "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"):
            candidates.append({"source": "torchvision", "name": name, "kwargs": dict(kwargs)})
    expected = _shapes(backbone.state_dict())
    for candidate in candidates:
        rebuilt = _build_backbone(candidate, meta=True)
        if rebuilt is not None and _shapes(rebuilt.state_dict()) == expected:
            return candidate
    return None


def _build_backbone(spec: dict[str, Any], meta: bool, config_path: Optional[Path] = None) -> Optional[nn.Module]:
    parsed = BackboneSpec(str(spec["source"]), str(spec["name"]), dict(spec.get("kwargs") or {}))
    if meta:
        try:
            with torch.device("meta"):
                return create_backbone(parsed)
        except Exception:
            return None
    try:
        return create_backbone(parsed)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{config_path}: cannot rebuild backbone {parsed} {parsed.kwargs}: {exc}") from exc


def _bundle_factory_code(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A backbone built by a factory in a ``.py`` file: copy the file into the folder and record it relative to
    the folder (as the Hub keeps custom code beside the weights), so the folder rebuilds anywhere."""
    spec = config.get("backbone")
    if not spec or spec.get("source") != FACTORY_SOURCE:
        return config
    module, name = split_factory_spec(spec["name"])
    if not module.endswith(".py"):
        return config  # an importable module: the import path is the record
    source = Path(module)
    if not source.is_file():
        raise FileNotFoundError(f"the backbone's code {source} is gone; it is needed to save the model")
    _write_text(folder / source.name, source.read_text())
    return dict(config, backbone=dict(spec, name=f"{source.name}:{name}"))


def _absolute_factory(spec: Optional[dict[str, Any]], folder: Path) -> Optional[dict[str, Any]]:
    if not spec or spec.get("source") != FACTORY_SOURCE:
        return spec
    module, name = split_factory_spec(spec["name"], base_dir=folder)
    return dict(spec, name=f"{module}:{name}")


def _flops_summary(model: Any) -> Optional[dict[str, Any]]:
    plan = getattr(model, "plan", None)
    if plan is None:
        return None
    return {
        "input_size": list(plan.input_size),
        "total": int(plan.total_flops),
        "backbone": int(plan.backbone_flops),
        "head": int(plan.head_flops),
        "fixed": int(plan.stem_flops + plan.head_flops + plan.tail_flops),
        "blocks": [{"name": b.name, "gated": b.gated, "gate_index": b.gate_index, "flops": int(b.flops),
                    "skip_flops": int(b.skip_flops)} for b in plan],
        # outer shortcuts (issue 28): recorded only where there are some, so a plain chain's config is as before
        **({"outer_shortcuts": [asdict(o) for o in plan.outer_shortcuts]} if plan.outer_shortcuts else {}),
    }


def _timm_normalization(backbone: nn.Module) -> Optional[dict[str, list[float]]]:
    cfg = getattr(backbone, "pretrained_cfg", None)
    if not type(backbone).__module__.startswith("timm.") or not isinstance(cfg, dict):
        return None
    mean, std = cfg.get("mean"), cfg.get("std")
    channels = _in_channels(backbone)
    if mean and std and len(mean) == len(std) == channels:
        return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    return None


def _in_channels(module: nn.Module) -> int:
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            return sub.in_channels
    return 3


def _shapes(state: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _jsonable(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        spec = {"source": spec.source, "name": spec.name, "kwargs": spec.kwargs}
    return {"source": spec["source"], "name": spec["name"], "kwargs": dict(spec.get("kwargs") or {})}
