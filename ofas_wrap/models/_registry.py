"""Registers the CIFAR ResNets with timm, so ``timm.create_model("cifar_resnet38")`` works."""

from __future__ import annotations

from ._cifar import CIFAR_DEPTHS, CifarResNet

__all__ = ["register_with_timm"]

_registered = False


def _make_entrypoint(depth: int):
    def entrypoint(pretrained: bool = False, **kwargs) -> CifarResNet:
        if pretrained:
            raise ValueError(
                f"cifar_resnet{depth} has no published pretrained weights; train it with "
                "recipes/train_backbone.py or load your own with OFASModel.from_pretrained"
            )
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        return CifarResNet(depth, num_classes=kwargs.pop("num_classes", 10), in_chans=kwargs.pop("in_chans", 3))

    entrypoint.__name__ = f"cifar_resnet{depth}"
    entrypoint.__qualname__ = entrypoint.__name__
    entrypoint.__module__ = "ofas_wrap.models"
    entrypoint.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016, 6n+2 BasicBlocks, 16/32/64 channels)."
    return entrypoint


def register_with_timm() -> None:
    """Add ``cifar_resnet{20,26,32,38,44,56,110}`` to timm's model registry (idempotent)."""
    global _registered
    if _registered:
        return
    try:
        from timm.models import register_model
    except ImportError:  # timm is optional for the CIFAR models themselves
        return
    import timm

    for depth in CIFAR_DEPTHS:
        name = f"cifar_resnet{depth}"
        if name not in timm.list_models(name):
            register_model(_make_entrypoint(depth))
    _registered = True
