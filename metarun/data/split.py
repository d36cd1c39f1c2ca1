"""ImageSplit: one split's images as a single uint8 tensor grouped by class, ready for index gathers."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor


@dataclass
class ImageSplit:
    """The images of one split, grouped by class.

    images:  uint8 [M, C, H, W], the images of class c at offsets[c] : offsets[c] + counts[c]
    offsets: long [num_classes] (CPU), counts: long [num_classes] (CPU)
    mean, std: per-channel statistics applied when images become floats in [0, 1]
    """

    images: Tensor
    offsets: Tensor
    counts: Tensor
    class_names: list[str]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        # Kept on the images' device so that a gather makes no host-to-device copy.
        self._mean = torch.tensor(self.mean, device=self.device).view(-1, 1, 1)
        self._std = torch.tensor(self.std, device=self.device).view(-1, 1, 1)

    @classmethod
    def from_classes(cls, per_class: Sequence[Tensor], class_names: list[str], **stats) -> ImageSplit:
        """Build from one uint8 tensor [n_c, C, H, W] per class."""
        counts = torch.tensor([len(images) for images in per_class], dtype=torch.long)
        offsets = torch.cumsum(counts, 0) - counts
        return cls(torch.cat(list(per_class)), offsets, counts, class_names, **stats)

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    @property
    def min_images_per_class(self) -> int:
        return int(self.counts.min())

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> ImageSplit:
        return replace(self, images=self.images.to(device))

    def gather(self, indices: Tensor) -> Tensor:
        """Float images [*indices.shape, C, H, W], scaled to [0, 1] and normalised."""
        images = self.images[indices.flatten()].float()
        images = images.mul_(1 / 255).sub_(self._mean).div_(self._std)
        return images.view(*indices.shape, *self.image_shape)


@dataclass
class DataSplits:
    """The train / val / test splits of a data set; no class appears in two of them."""

    train: ImageSplit
    val: ImageSplit
    test: ImageSplit

    def to(self, device: torch.device | str) -> DataSplits:
        return DataSplits(self.train.to(device), self.val.to(device), self.test.to(device))

    def items(self):
        return (("train", self.train), ("val", self.val), ("test", self.test))
