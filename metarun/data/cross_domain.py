"""Cross-domain evaluation (eval_data=<a data option>): validation and test episodes from another
data set, each image mapped to the training data's input as it is gathered, so a model trained on
CIFAR-FS can be tested on Omniglot, or one trained on miniImageNet on CUB (Chen et al. 2019).

The mapping: ink inverted where one data set stores drawings as ink on black and the other does
not, grey made colour (or colour grey, by luma), the size resized with antialiasing, then the
training data's normalisation. Memory stays the source split's: nothing is converted up front.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from metarun.data.augment import GREY
from metarun.episodes import EpisodeSource, EpisodeSpec, Examples
from metarun.tasks import Classification


@dataclass
class AsInputOf:
    """`source`'s episodes with their images in the format `input_format` (ImageSplit.input_format:
    shape, mean, std, ink) of the data the model trained on."""

    source: EpisodeSource
    input_format: dict

    @property
    def task(self) -> Classification:
        return self.source.task

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.input_format["shape"])

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def min_images_per_class(self) -> int:
        return self.source.min_images_per_class

    @property
    def device(self) -> torch.device:
        return self.source.device

    def to(self, device: torch.device | str) -> AsInputOf:
        return replace(self, source=self.source.to(device))

    def draw(self, spec: EpisodeSpec, episodes: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        return self.source.draw(spec, episodes, generator)

    def check(self, spec: EpisodeSpec, split_name: str, data_name: str, key_prefix: str = "") -> None:
        self.source.check(spec, split_name, data_name, key_prefix)

    def figures(self, spec: EpisodeSpec, seed: int) -> list:
        return []

    def examples(self, draws: tuple[Tensor, ...]) -> Examples:
        examples = self.source.examples(draws)
        shape = examples.x.shape
        images = map_images(examples.x.flatten(0, -4), self.source.input_format, self.input_format)
        return replace(examples, x=images.view(*shape[:-3], *images.shape[1:]))


def map_images(x: Tensor, source: dict, target: dict) -> Tensor:
    """Normalised images [M, C, H, W] of the `source` format as normalised images of the `target` format."""
    x = x * _stat(source["std"], x) + _stat(source["mean"], x)  # back to [0, 1]
    if source["ink"] != target["ink"]:
        x = 1 - x
    channels, height, width = target["shape"]
    if x.shape[1] != channels:
        x = x.expand(-1, channels, -1, -1) if x.shape[1] == 1 else (x * torch.tensor(GREY, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    return (x - _stat(target["mean"], x)) / _stat(target["std"], x)


def _stat(values, like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
