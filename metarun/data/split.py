"""ImageSplit: one split's images as a single uint8 tensor grouped by class, ready for index gathers.

An episode is an index gather from the split's image tensor on the training device; no
per-image Python runs in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor

from metarun.data.augment import Augmentation
from metarun.episodes import EpisodeSource, EpisodeSpec, Examples
from metarun.errors import MetarunError
from metarun.tasks import Classification


@dataclass
class ImageSplit:
    """The images of one split, grouped by class.

    images:  uint8 [M, C, H, W], the images of class c at offsets[c] : offsets[c] + counts[c]
    offsets: long [num_classes] (CPU), counts: long [num_classes] (CPU)
    mean, std: per-channel statistics applied when images become floats in [0, 1]
    augment: random crop / flip / jitter drawn with each episode (training splits only), or None
    ink: the images are ink on paper stored as 255 - grey (Omniglot), so new images are inverted too
    """

    images: Tensor
    offsets: Tensor
    counts: Tensor
    class_names: list[str]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    augment: Augmentation | None = None
    ink: bool = False

    def __post_init__(self):
        # Kept on the images' device so that a gather makes no host-to-device copy.
        self._mean = torch.tensor(self.mean, device=self.device).view(-1, 1, 1)
        self._std = torch.tensor(self.std, device=self.device).view(-1, 1, 1)

    @classmethod
    def from_classes(cls, per_class: Sequence[Tensor], class_names: list[str], **options) -> ImageSplit:
        """Build from one uint8 tensor [n_c, C, H, W] per class; options: mean, std, augment, ink."""
        counts = torch.tensor([len(images) for images in per_class], dtype=torch.long)
        offsets = torch.cumsum(counts, 0) - counts
        return cls(torch.cat(list(per_class)), offsets, counts, class_names, **options)

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    @property
    def task(self) -> Classification:
        return Classification(classes=self.num_classes)

    @property
    def input_format(self) -> dict:
        """How a new image becomes an input like this split's (metarun-predict)."""
        return {"shape": list(self.input_shape), "mean": list(self.mean), "std": list(self.std), "ink": self.ink}

    @property
    def min_images_per_class(self) -> int:
        return int(self.counts.min())

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> ImageSplit:
        return replace(self, images=self.images.to(device))

    def gather(self, indices: Tensor, augmentation: Tensor | None = None) -> Tensor:
        """Float images [*indices.shape, C, H, W], scaled to [0, 1], augmented with the drawn
        choices [*indices.shape, 6] if given, and normalised."""
        images = self.images[indices.flatten()].float().mul_(1 / 255)
        if augmentation is not None:
            images = self.augment.apply(images, augmentation.flatten(0, -2))
        images = images.sub_(self._mean).div_(self._std)
        return images.view(*indices.shape, *self.input_shape)

    def draw(self, spec: EpisodeSpec, episodes: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Choose classes and images on the CPU generator: image indices [E, N, K+Q], class ids [E, N]
        and, if the split augments, each image's augmentation choices [E, N, K+Q, 6]."""
        classes = torch.rand(episodes, self.num_classes, generator=generator).argsort(dim=1)[:, : spec.ways]  # [E, N]
        class_counts = self.counts[classes]  # [E, N]
        # A random key per image slot; slots past a class's count sort last, so the first K+Q
        # positions are a uniform draw without replacement from each class's own images.
        keys = torch.rand(episodes, spec.ways, int(class_counts.max()), generator=generator)
        keys.masked_fill_(torch.arange(keys.shape[-1]) >= class_counts[..., None], 2.0)
        positions = keys.argsort(dim=-1)[..., : spec.images_per_class]  # [E, N, K+Q]
        indices = self.offsets[classes][..., None] + positions
        if self.augment is None:
            return indices, classes
        return indices, classes, self.augment.draw(tuple(indices.shape), generator)

    def examples(self, draws: tuple[Tensor, ...]) -> Examples:
        """Gather drawn indices [E, N, K+Q] into images [E, N, K+Q, C, H, W] on the split's device."""
        indices, classes, *augmentation = draws
        images = self.gather(indices.to(self.device, non_blocking=True), *augmentation)
        return Examples(images, classes=classes.to(self.device))

    def figures(self, spec: EpisodeSpec, seed: int) -> list:
        return []

    def joined(self, other: ImageSplit) -> ImageSplit:
        """This split's classes and then `other`'s as one split, with this one's normalisation and augmentation."""
        counts = torch.cat([self.counts, other.counts])
        return replace(self, images=torch.cat([self.images, other.images.to(self.device)]), counts=counts,
                       offsets=torch.cumsum(counts, 0) - counts, class_names=[*self.class_names, *other.class_names])

    def check(self, spec: EpisodeSpec, split_name: str, data_name: str, key_prefix: str = "") -> None:
        """Enough classes for the ways and enough images per class for shots + queries."""
        if spec.ways < 2:
            raise MetarunError(f"episode.{key_prefix}ways={spec.ways} is invalid: it must be at least 2 for classification, "
                               "1 for regression")
        if spec.ways > self.num_classes:
            raise MetarunError(
                f"episode.{key_prefix}ways={spec.ways} is more than the {self.num_classes} classes "
                f"of the {split_name} split of {data_name}"
            )
        if spec.sequence and spec.queries > self.min_images_per_class:
            raise MetarunError(f"episode.instances={spec.queries} is more than the {self.min_images_per_class} images "
                               f"per class in the {split_name} split of {data_name}")
        if spec.images_per_class > self.min_images_per_class:
            raise MetarunError(
                f"episode.shots + episode.{key_prefix}queries = {spec.shots} + {spec.queries} is more than the "
                f"{self.min_images_per_class} images per class in the {split_name} split of {data_name}"
            )


@dataclass
class DataSplits:
    """The train / val / test splits of a data set; no class appears in two of them."""

    train: EpisodeSource
    val: EpisodeSource
    test: EpisodeSource

    @property
    def task(self):
        return self.train.task

    def to(self, device: torch.device | str) -> DataSplits:
        return DataSplits(self.train.to(device), self.val.to(device), self.test.to(device))

    def items(self):
        return (("train", self.train), ("val", self.val), ("test", self.test))

    def with_val_in_train(self) -> DataSplits:
        """Training on the train and validation classes (a final model, as ProtoNet's paper reports);
        validation still scores the val classes, which training now sees."""
        if not (hasattr(self.train, "joined") and isinstance(self.val, type(self.train))):
            raise MetarunError(f"train_on_val=true joins image splits of class tensors; {type(self.train).__name__} has none")
        return DataSplits(self.train.joined(self.val), self.val, self.test)
