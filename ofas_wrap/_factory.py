"""create_model(): build a backbone from a spec string and adapt it in one call."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

from ._model import OFASModel
from ._surgery import adaptify
from .models import create_backbone, parse_backbone_spec

__all__ = ["create_model"]


def create_model(spec: str, num_classes: Optional[int] = None, in_chans: Optional[int] = None,
                 backbone_kwargs: Optional[dict[str, Any]] = None, **adaptify_kwargs: Any) -> OFASModel:
    """Build ``spec`` (``cifar:resnet38``, ``timm:resnet50``, ``torchvision:resnet18``) and adaptify it.

    The spec and the constructor arguments are recorded in ``model.config["backbone"]`` so that
    ``save_pretrained`` / ``from_pretrained`` can rebuild the same backbone.

    Example:
        >>> import ofas_wrap
        >>> model = ofas_wrap.create_model("cifar:resnet20", num_classes=100, variant="I")
        >>> model.config["backbone"]["name"], model.num_gates
        ('resnet20', 9)
    """
    parsed = parse_backbone_spec(spec)
    kwargs = dict(backbone_kwargs or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    parsed.kwargs = kwargs
    backbone = create_backbone(parsed)
    model = adaptify(backbone, **adaptify_kwargs)
    model.config["backbone"] = asdict(parsed)
    return model
