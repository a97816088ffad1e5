"""A compact residual CNN for small images (the quickstart's model).

Residual adds, a depthwise block and a concatenation make it exercise every
kind of channel coupling the pruner handles, at a size that trains in about a
minute on two CPU cores. Referenced from specs as
`entryPoint: kubeslim.models.compact:compact_resnet`.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Block(nn.Module):
    """Two 3x3 convolutions with a residual add (projected when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class DepthwiseConcat(nn.Module):
    """A depthwise-separable branch concatenated with a 1x1 branch."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        half = cout // 2
        self.depthwise = _conv_bn(cin, cin, groups=cin)
        self.pointwise = nn.Sequential(nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half))
        self.side = nn.Sequential(
            nn.Conv2d(cin, cout - half, 1, bias=False), nn.BatchNorm2d(cout - half)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(torch.cat([self.pointwise(self.depthwise(x)), self.side(x)], dim=1))


class CompactResNet(nn.Module):
    """stem -> 3 residual stages -> depthwise/concat mixer -> classifier."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, width: int = 32, stem_stride: int = 2
    ) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, width, stride=stem_stride)
        self.layer1 = Block(width, width, 1)
        self.layer2 = Block(width, 2 * width, 2)
        self.layer3 = Block(2 * width, 4 * width, 2)
        self.mixer = DepthwiseConcat(4 * width, 4 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(self.mixer(x)), 1))


def compact_resnet(num_classes: int = 10) -> nn.Module:
    """The quickstart's model: about 10 MMACs at 28x28."""
    return CompactResNet(num_classes=num_classes)
