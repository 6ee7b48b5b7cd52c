"""create_model(): build a backbone from a spec string and adapt it in one call."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

from ._model import OFASModel, adaptify
from .models import create_backbone, load_checkpoint_weights, parse_backbone_spec
from .models._user import FACTORY_SOURCE, factory_kwargs

__all__ = ["create_model"]


def create_model(spec: str, num_classes: Optional[int] = None, in_chans: Optional[int] = None,
                 backbone_kwargs: Optional[dict[str, Any]] = None, checkpoint_path: Optional[str] = None,
                 pretrained: bool = False, **adaptify_kwargs: Any) -> OFASModel:
    """Build ``spec`` (``cifar:resnet38``, ``timm:resnet50``, ``torchvision:resnet18``, or your own factory
    ``path/to/file.py:FACTORY`` / ``package.module:FACTORY``), load ``checkpoint_path`` into it, adaptify it.

    The spec and the constructor arguments are recorded in ``model.config["backbone"]`` so that
    ``save_pretrained`` / ``from_pretrained`` can rebuild the same backbone (a factory's only with
    ``trust_remote_code=True``). A factory gets ``num_classes`` / ``in_chans`` only if its signature takes them.
    ``checkpoint_path`` (as in ``timm.create_model``): safetensors or a ``torch.save`` state dict, read without
    unpickling objects, loaded strictly into the backbone before the surgery. ``pretrained=True`` asks the
    backbone's library for its published weights (timm, with tags such as ``timm:resnet50.a1_in1k``: from the
    Hugging Face Hub; torchvision: its ``DEFAULT`` weights); the CIFAR ResNets and your factories have none (use
    ``checkpoint_path``). A saved folder rebuilds with random weights and then loads its own.

    Example:
        >>> import ofas_wrap
        >>> model = ofas_wrap.create_model("cifar:resnet20", num_classes=100, variant="I")
        >>> model.config["backbone"]["name"], model.num_gates
        ('resnet20', 9)
    """
    parsed = parse_backbone_spec(spec)
    kwargs = dict(backbone_kwargs or {})
    if parsed.source == FACTORY_SOURCE:
        kwargs = factory_kwargs(parsed.name, kwargs, num_classes=num_classes, in_chans=in_chans)
    else:
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        if in_chans is not None:
            kwargs["in_chans"] = in_chans
    parsed.kwargs = kwargs
    if pretrained and checkpoint_path is not None:
        raise ValueError("give pretrained=True (the library's published weights) or checkpoint_path (your file), "
                         "not both")
    backbone = create_backbone(parsed, pretrained=pretrained)
    if checkpoint_path is not None:
        load_checkpoint_weights(backbone, checkpoint_path)
    model = adaptify(backbone, **adaptify_kwargs)
    model.config["backbone"] = asdict(parsed)
    return model
