"""Backbone spec strings: ``cifar:resnet38``, ``timm:resnet50``, ``torchvision:resnet18``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ._cifar import cifar_resnet
from ._user import FACTORY_SOURCE, build_from_factory, is_factory_spec, split_factory_spec

__all__ = ["BackboneSpec", "parse_backbone_spec", "create_backbone", "default_input_size", "input_size_is_known"]

SOURCES = ("cifar", "timm", "torchvision", FACTORY_SOURCE)


@dataclass
class BackboneSpec:
    """How to rebuild a backbone: its source library, its name there and constructor keyword arguments."""

    source: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.source}:{self.name}"


def parse_backbone_spec(spec: str) -> BackboneSpec:
    """Parse ``"source:name"`` (cifar, timm, torchvision) or a user's factory ``FILE.py:NAME`` /
    ``package.module:NAME`` (source ``factory``, a file path made absolute).

    Example:
        >>> parse_backbone_spec("cifar:resnet38")
        BackboneSpec(source='cifar', name='resnet38', kwargs={})
        >>> parse_backbone_spec("mypkg.nets:build")
        BackboneSpec(source='factory', name='mypkg.nets:build', kwargs={})
    """
    if isinstance(spec, str) and is_factory_spec(spec):
        module, name = split_factory_spec(spec)
        return BackboneSpec(FACTORY_SOURCE, f"{module}:{name}")
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"backbone spec {spec!r} is not of the form SOURCE:NAME; use e.g. 'cifar:resnet38', "
            "'timm:resnet50', 'torchvision:resnet18', or your own factory as 'path/to/file.py:FACTORY' or "
            "'package.module:FACTORY'"
        )
    source, name = spec.split(":", 1)
    source = source.strip().lower()
    name = name.strip()
    if source not in SOURCES:
        raise ValueError(f"unknown backbone source {source!r} in {spec!r}; allowed: {', '.join(SOURCES[:3])}, or "
                         "your own factory as 'path/to/file.py:FACTORY' or 'package.module:FACTORY'")
    if not name:
        raise ValueError(f"backbone spec {spec!r} has no model name after the colon")
    if source == "cifar":
        _cifar_depth(name)
    return BackboneSpec(source, name)


MAX_CIFAR_DEPTH = 1202  # the deepest CIFAR ResNet He et al. trained (6n+2, n = 200)


def _cifar_depth(name: str) -> int:
    digits = name.removeprefix("cifar_").removeprefix("resnet")
    if not digits.isdigit():
        raise ValueError(f"CIFAR backbone name {name!r} must be 'resnetDEPTH', e.g. 'resnet38' or 'resnet110'")
    if int(digits) > MAX_CIFAR_DEPTH:
        raise ValueError(f"CIFAR ResNet depth {int(digits)} is beyond {MAX_CIFAR_DEPTH}, the deepest one He et al. "
                         "trained; building it would take very long")
    return int(digits)


def create_backbone(spec: str | BackboneSpec, num_classes: int | None = None, in_chans: int | None = None,
                    pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a backbone from a spec string, with random weights (nothing is downloaded) unless ``pretrained``:
    timm's weights for the name and tag (``timm:resnet50.a1_in1k``), torchvision's ``DEFAULT`` weights.

    Example:
        >>> model = create_backbone("cifar:resnet20", num_classes=100)
        >>> model.fc.out_features
        100
    """
    if isinstance(spec, str):
        spec = parse_backbone_spec(spec)
    if pretrained and spec.source in ("cifar", FACTORY_SOURCE):
        raise ValueError(f"{spec.source}:{spec.name} has no published weights to download; load your own "
                         "(checkpoint_path= / --weights FILE, or OFASModel.from_pretrained for a saved folder)")
    if spec.source == FACTORY_SOURCE:
        return build_from_factory(spec.name, {**spec.kwargs, **kwargs}, num_classes=num_classes, in_chans=in_chans)
    kwargs = {**spec.kwargs, **kwargs}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if spec.source == "cifar":
        return cifar_resnet(_cifar_depth(spec.name), **kwargs)
    if spec.source == "timm":
        import timm

        if not timm.is_model(spec.name):  # a pretrained tag (resnet50.a1_in1k) names the same architecture
            raise ValueError(f"timm has no model named {spec.name!r}; see timm.list_models('*resnet*')")
        return timm.create_model(spec.name, pretrained=pretrained, **kwargs)
    import torchvision

    builders = torchvision.models.list_models(module=torchvision.models)
    if spec.name not in builders:
        raise ValueError(
            f"torchvision has no classification model named {spec.name!r}; "
            "see torchvision.models.list_models(module=torchvision.models)"
        )
    channels = kwargs.pop("in_chans", 3)
    model = torchvision.models.get_model(spec.name, weights="DEFAULT" if pretrained else None, **kwargs)
    if channels != 3:
        raise ValueError(
            f"torchvision models are built for 3 input channels; in_chans={channels} is not supported "
            "for them (use a timm or cifar backbone, or expand grey images to 3 channels)"
        )
    return model


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The (channels, height, width) a backbone expects by default.

    timm models carry it in ``pretrained_cfg["input_size"]``; the CIFAR ResNets use 32x32; anything else
    (torchvision, users' models) 224x224. The channel count is read from the first convolution.
    """
    channels = 3
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            channels = module.in_channels
            break
    from ._cifar import CifarResNet

    if isinstance(model, CifarResNet):
        return (channels, 32, 32)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        _, height, width = cfg["input_size"]
        return (channels, int(height), int(width))
    return (channels, 224, 224)


def input_size_is_known(model: nn.Module) -> bool:
    """Whether :func:`default_input_size` knows ``model``'s size (a CIFAR ResNet, a timm ``pretrained_cfg``)
    rather than guessing 224 x 224."""
    from ._cifar import CifarResNet

    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(model, CifarResNet) or (isinstance(cfg, dict) and bool(cfg.get("input_size"))):
        return True
    return type(model).__module__.startswith("torchvision.models")  # ImageNet models: 224 is their size
