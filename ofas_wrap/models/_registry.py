"""Registers the CIFAR ResNets with timm, so ``timm.create_model("cifar_resnet38")`` works as timm's own models do:
a ``pretrained_cfg`` for 32 px CIFAR-10 images (so ``timm.data.resolve_model_data_config`` gives 32 px, crop 1.0
and CIFAR-10's mean and std, not ImageNet's 224 px), ``features_only=True`` (the stem and the three stages),
``drop_rate`` and ``global_pool``, all through timm's ``build_model_with_cfg``."""

from __future__ import annotations

import sys

from ._cifar import CIFAR_DEPTHS, CifarResNet

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "register_with_timm"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # the CIFAR-10 training split's per-channel statistics
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_registered = False


def _pretrained_cfg() -> dict:
    return {"url": "", "num_classes": 10, "input_size": (3, 32, 32), "pool_size": (8, 8), "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": CIFAR10_MEAN, "std": CIFAR10_STD, "first_conv": "conv1",
            "classifier": "fc", "license": "apache-2.0",
            "notes": ("no published weights: train with recipes/train_backbone.py (benchmarks/weights/cifar10 "
                      "holds trained ones as save_pretrained folders)",)}


def _make_entrypoint(depth: int):
    def entrypoint(pretrained: bool = False, **kwargs) -> CifarResNet:
        from timm.models import build_model_with_cfg

        if pretrained:
            raise ValueError(
                f"cifar_resnet{depth} has no published pretrained weights; train it with "
                "recipes/train_backbone.py or load your own with OFASModel.from_pretrained"
            )
        return build_model_with_cfg(CifarResNet, f"cifar_resnet{depth}", pretrained=False,
                                    feature_cfg={"out_indices": (0, 1, 2, 3)}, depth=depth, **kwargs)

    entrypoint.__name__ = f"cifar_resnet{depth}"
    entrypoint.__qualname__ = entrypoint.__name__
    entrypoint.__module__ = "ofas_wrap.models"
    entrypoint.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016, 6n+2 BasicBlocks, 16/32/64 channels)."
    return entrypoint


def register_with_timm() -> None:
    """Add ``cifar_resnet{20,26,32,38,44,56,110}`` and their ``pretrained_cfg`` to timm's registry (idempotent)."""
    global _registered
    if _registered:
        return
    try:
        from timm.models import generate_default_cfgs, register_model
    except ImportError:  # timm is optional for the CIFAR models themselves
        return
    import timm

    # timm's register_model reads the pretrained configs from the entrypoint's module's default_cfgs
    module = sys.modules["ofas_wrap.models"]
    module.default_cfgs = generate_default_cfgs({f"cifar_resnet{depth}": _pretrained_cfg() for depth in CIFAR_DEPTHS})
    for depth in CIFAR_DEPTHS:
        name = f"cifar_resnet{depth}"
        if name not in timm.list_models(name):
            register_model(_make_entrypoint(depth))
    _registered = True
