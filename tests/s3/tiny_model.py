"""A small CNN for the S3 pipeline tests (imported by the stage processes only)."""

from __future__ import annotations

from torch import nn


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    """Two conv blocks and a classifier: converts and quantizes in seconds on 8x8 digits."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )
