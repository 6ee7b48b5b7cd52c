"""The CIFAR ResNets of He et al. (2016), Section 4.2, used by the OFAS paper (ResNet38, ResNet110).

A 6n+2 network: a 3x3 stem conv (16 channels, no max-pool), three stages of n BasicBlocks with 16, 32 and
64 channels (the first block of stages 2 and 3 halves the resolution with a 1x1 projection shortcut), global
average pooling and a linear classifier.
"""

from __future__ import annotations

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

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, widths=(16, 32, 64)) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 38, 44, 56, 110, ...), got {depth}")
        if num_classes < 1 or in_chans < 1:
            raise ValueError(f"num_classes and in_chans must be positive, got {num_classes} and {in_chans}")
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
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def cifar_resnet(depth: int, num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
    """Build the CIFAR ResNet of the given depth (20, 26, 32, 38, 44, 56, 110 or any 6n+2)."""
    return CifarResNet(depth, num_classes=num_classes, in_chans=in_chans)
