"""The CIFAR ResNets of He et al. (2016), Section 4.2, used by the OFAS paper (ResNet38, ResNet110).

A 6n+2 network: a 3x3 stem conv (16 channels, no max-pool), three stages of n BasicBlocks with 16, 32 and
64 channels (the first block of stages 2 and 3 halves the resolution with a 1x1 projection shortcut), global
average pooling and a linear classifier.
"""

from __future__ import annotations

from typing import Any, Optional

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CIFAR_DEPTHS", "BasicBlock", "CifarResNet", "cifar_resnet"]

CIFAR_DEPTHS = (20, 26, 32, 38, 44, 56, 110)


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm; the residual is added before the last ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet with ``depth = 6n + 2``.

    Example:
        >>> import torch
        >>> from ofas_wrap.models import cifar_resnet
        >>> cifar_resnet(20)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, widths=(16, 32, 64),
                 drop_rate: float = 0.0, global_pool: str = "avg") -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 38, 44, 56, 110, ...), got {depth}")
        if num_classes < 0 or in_chans < 1:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier) and in_chans positive, got {num_classes} "
                             f"and {in_chans}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        blocks_per_stage = (depth - 2) // 6
        self.depth = depth
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        in_channels = widths[0]
        for stage_index, width in enumerate(widths):
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.drop_rate = drop_rate
        self.num_features = in_channels
        self.avgpool = _global_pool(global_pool)  # the name of the weights files before global_pool existed
        self.fc = nn.Linear(in_channels, num_classes) if num_classes else nn.Identity()
        # timm's feature_info: what features_only=True returns (the stem, then each stage)
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="relu")] + [
            dict(num_chs=width, reduction=2 ** index, module=f"layer{index + 1}") for index, width in enumerate(widths)]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.avgpool(x).flatten(1)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new, freshly initialised classifier for ``num_classes`` (0: none), as timm models do."""
        if global_pool is not None:
            self.avgpool = _global_pool(global_pool)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


def _global_pool(kind: str) -> nn.Module:
    if kind == "avg":
        return nn.AdaptiveAvgPool2d(1)
    if kind == "max":
        return nn.AdaptiveMaxPool2d(1)
    raise ValueError(f"global_pool must be 'avg' or 'max', got {kind!r}")


def cifar_resnet(depth: int, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> CifarResNet:
    """Build the CIFAR ResNet of the given depth (20, 26, 32, 38, 44, 56, 110 or any 6n+2); ``drop_rate`` and
    ``global_pool`` as in timm."""
    return CifarResNet(depth, num_classes=num_classes, in_chans=in_chans, **kwargs)
