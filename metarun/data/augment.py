"""Training-episode augmentation as batched tensor ops: random crop after padding, horizontal flip
and colour jitter, the recipe of the CIFAR-FS / miniImageNet papers (MetaOptNet, FEAT).

The random choices are drawn with the episode sampler's generator, together with the episode,
so augmented runs stay seeded and resumable; applying them is pure indexing and arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from metarun.errors import MetarunError

GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class Augmentation:
    """crop_padding: pad by this many pixels, then crop back to size at a random offset (0: off).
    flip: mirror left-right with probability 1/2.
    jitter: brightness, contrast and saturation factors drawn from [1 - jitter, 1 + jitter] (0: off).
    """

    crop_padding: int = 0
    flip: bool = False
    jitter: float = 0.0

    def __post_init__(self):
        if self.crop_padding < 0 or not 0 <= self.jitter < 1:
            raise MetarunError(
                f"data.augment has crop_padding={self.crop_padding}, jitter={self.jitter}: "
                "crop_padding must be >= 0 and jitter in [0, 1)"
            )

    @classmethod
    def from_config(cls, settings: Mapping[str, Any] | None) -> Augmentation | None:
        """`data.augment`: a mapping of the fields above, or null for no augmentation."""
        return cls(**settings) if settings else None

    def draw(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """Random choices for images of batch shape `shape`: [*shape, 6] =
        (row offset, column offset, flip, brightness, contrast, saturation)."""
        offsets = torch.randint(0, 2 * self.crop_padding + 1, (*shape, 2), generator=generator).float()
        flips = torch.randint(0, 2 if self.flip else 1, (*shape, 1), generator=generator).float()
        factors = 1 + self.jitter * (2 * torch.rand(*shape, 3, generator=generator) - 1)
        return torch.cat([offsets, flips, factors], dim=-1)

    def apply(self, images: Tensor, choices: Tensor) -> Tensor:
        """Augment float images [M, C, H, W] in [0, 1] with choices [M, 6] from `draw`."""
        choices = choices.to(images.device)
        if self.crop_padding:
            images = _crop(images, self.crop_padding, choices[:, :2].long())
        if self.flip:
            images = torch.where(choices[:, 2, None, None, None].bool(), images.flip(-1), images)
        if self.jitter:
            images = _jitter(images, *choices[:, 3:].unbind(-1))
        return images


def _crop(images: Tensor, padding: int, offsets: Tensor) -> Tensor:
    """Zero-pad every side by `padding`, then take the H x W window at each image's offset."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (padding,) * 4)
    rows = offsets[:, 0, None] + torch.arange(height, device=images.device)  # [M, H]
    cols = offsets[:, 1, None] + torch.arange(width, device=images.device)  # [M, W]
    batch = torch.arange(len(images), device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _jitter(images: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor) -> Tensor:
    """torchvision's ColorJitter factors, applied in a fixed order (brightness, contrast, saturation)."""
    per_image = (-1, 1, 1, 1)
    images = (images * brightness.view(per_image)).clamp(0, 1)
    grey = _grey(images)
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    images = ((images - mean) * contrast.view(per_image) + mean).clamp(0, 1)
    if images.shape[1] == 3:  # saturation needs colour
        grey = _grey(images)
        images = ((images - grey) * saturation.view(per_image) + grey).clamp(0, 1)
    return images


def _grey(images: Tensor) -> Tensor:
    if images.shape[1] != 3:
        return images.mean(dim=1, keepdim=True)
    weights = torch.tensor(GREY, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)
