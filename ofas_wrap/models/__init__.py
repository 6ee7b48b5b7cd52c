"""Backbones: the CIFAR ResNets of the paper and spec strings for timm and torchvision models."""

from ._cifar import CIFAR_DEPTHS, BasicBlock, CifarResNet, cifar_resnet
from ._registry import register_with_timm
from ._specs import BackboneSpec, create_backbone, default_input_size, parse_backbone_spec
from ._user import WeightsError, is_factory_spec, load_checkpoint_weights, read_checkpoint_state

register_with_timm()

__all__ = [
    "CIFAR_DEPTHS",
    "BasicBlock",
    "CifarResNet",
    "cifar_resnet",
    "register_with_timm",
    "BackboneSpec",
    "create_backbone",
    "default_input_size",
    "parse_backbone_spec",
    "WeightsError",
    "is_factory_spec",
    "load_checkpoint_weights",
    "read_checkpoint_state",
]
