"""Training-time augmentation on uint8 images [C, H, W], seeded per sample.

The rule behind spec.dataset.augmentation (auto):
- one channel (MNIST, Fashion-MNIST, digits): none; a flipped or shifted digit can
  change its meaning and these datasets train well without;
- colour images of 64 px or more, or resized ImageNet-style input (resize >= 64):
  random-resized crop (scale 0.08-1, aspect 3/4-4/3, torchvision's sampling) + horizontal flip;
- smaller colour images (CIFAR's 32x32): pad by an eighth of the side (4 px at 32),
  random crop back to size + horizontal flip.
crop-flip forces the crop and flip for the image size; none turns augmentation off.
Every transform keeps the image's size, so batches collate as before and
Preprocess resizes and normalises after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kubeslim.api.spec import Augmentation

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""uint8 [C, H, W] and a seeded generator in, an image of the same shape out."""

IMAGENET_STYLE = 64  # px: from here on, random-resized crops (as ImageNet training uses)


def choose(kind: Augmentation, shape: tuple[int, ...], resize: int | None) -> Augment | None:
    """The augmentation for images of shape [C, H, W] (the rule in this module's text)."""
    channels, height, width = shape
    if kind is Augmentation.none or (kind is Augmentation.auto and channels == 1):
        return None
    if max(resize or 0, min(height, width)) >= IMAGENET_STYLE:
        return resized_crop_flip
    return PadCropFlip(max(1, round(min(height, width) / 8)))


def resized_crop_flip(image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop (to the image's own size) and RandomHorizontalFlip,
    drawing from gen instead of the global generator."""
    from torchvision.transforms.v2 import functional as TF

    height, width = image.shape[-2:]
    top, left, h, w = _crop_box(height, width, gen)
    out = TF.resized_crop(image, top, left, h, w, [height, width], antialias=True)
    return _flip(out, gen)


class PadCropFlip:
    """Zero-pad by `pad` px, crop a random window of the original size, flip half."""

    def __init__(self, pad: int) -> None:
        self.pad = pad

    def __call__(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        height, width = image.shape[-2:]
        padded = F.pad(image, (self.pad,) * 4)
        top, left = (int(torch.randint(0, 2 * self.pad + 1, (1,), generator=gen)) for _ in "tl")
        return _flip(padded[..., top : top + height, left : left + width], gen)


def _flip(image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return image.flip(-1) if float(torch.rand(1, generator=gen)) < 0.5 else image


def _crop_box(
    height: int, width: int, gen: torch.Generator, scale: tuple[float, float] = (0.08, 1.0)
) -> tuple[int, int, int, int]:
    """RandomResizedCrop.get_params: ten tries at an area and aspect, else the centre."""
    area = height * width
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * _uniform(gen, *scale)
        aspect = math.exp(_uniform(gen, *log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(1, generator=gen))


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator that depends on (seed, epoch, index) only, in whichever process."""
    mixed = (seed * 1_000_003 + epoch) * 2_654_435_761 + index
    return torch.Generator().manual_seed(mixed % (2**63))
