"""Episodes whose classes hide modes: Omniglot's alphabets, whose characters are the modes
(data.label_level=alphabet), as in the super-class experiments of Infinite Mixture Prototypes
(Allen et al. 2019, Section 5.2; k-r-allen/imp's `--super-classes` episodes).

Each episode class shows `modes_per_class` of its modes, chosen at random, and its K support and
Q query images are spread evenly over them, so every query's mode also appears in the support set.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor

from metarun.data.split import ImageSplit
from metarun.episodes import EpisodeSpec, Examples
from metarun.errors import MetarunError
from metarun.tasks import Classification

log = logging.getLogger("metarun")


@dataclass
class ModalSplit:
    """Classes made of modes, the classes of an ImageSplit: class c's modes are the split's classes
    mode_index[class_offsets[c] : class_offsets[c] + class_counts[c]]."""

    modes: ImageSplit
    mode_index: Tensor  # long [num modes kept], grouped by class
    class_offsets: Tensor  # long [num_classes]
    class_counts: Tensor  # long [num_classes]
    class_names: list[str]
    modes_per_class: int

    @classmethod
    def grouping(cls, modes: ImageSplit, class_of: Callable[[str], str], modes_per_class: int) -> ModalSplit:
        """Group the split's classes into the classes `class_of` names; a class with fewer than
        `modes_per_class` modes cannot fill an episode and is left out."""
        members: dict[str, list[int]] = defaultdict(list)
        for index, name in enumerate(modes.class_names):
            members[class_of(name)].append(index)
        kept = {name: indices for name, indices in sorted(members.items()) if len(indices) >= modes_per_class}
        if len(kept) < len(members):
            log.info("%d of %d classes have fewer than %d modes and are left out", len(members) - len(kept), len(members), modes_per_class)
        counts = torch.tensor([len(indices) for indices in kept.values()], dtype=torch.long)
        mode_index = torch.tensor([index for indices in kept.values() for index in indices], dtype=torch.long)
        return cls(modes, mode_index, torch.cumsum(counts, 0) - counts, counts, list(kept), modes_per_class)

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    @property
    def task(self) -> Classification:
        return Classification(classes=self.num_classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.modes.input_shape

    @property
    def input_format(self) -> dict:
        return self.modes.input_format

    @property
    def device(self) -> torch.device:
        return self.modes.device

    def to(self, device: torch.device | str) -> ModalSplit:
        return replace(self, modes=self.modes.to(device))

    def draw(self, spec: EpisodeSpec, episodes: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Image indices [E, N, K+Q] (support first, each part mode by mode) and class ids [E, N]."""
        m = self.modes_per_class
        shots, queries = spec.shots // m, spec.queries // m  # per mode
        classes = torch.rand(episodes, self.num_classes, generator=generator).argsort(dim=1)[:, : spec.ways]
        chosen = _first_of_random_order(self.class_counts[classes], m, generator)  # [E, N, M] positions in each class
        modes = self.mode_index[self.class_offsets[classes][..., None] + chosen]  # [E, N, M] the split's class ids
        positions = _first_of_random_order(self.modes.counts[modes], shots + queries, generator)  # [E, N, M, s+q]
        indices = self.modes.offsets[modes][..., None] + positions
        return torch.cat([indices[..., :shots].flatten(2), indices[..., shots:].flatten(2)], dim=2), classes

    def examples(self, draws: tuple[Tensor, Tensor]) -> Examples:
        indices, classes = draws
        return Examples(self.modes.gather(indices.to(self.device, non_blocking=True)), classes=classes.to(self.device))

    def figures(self, spec: EpisodeSpec, seed: int) -> list:
        return []

    def check(self, spec: EpisodeSpec, split_name: str, data_name: str, key_prefix: str = "") -> None:
        m = self.modes_per_class
        if spec.ways < 2 or spec.ways > self.num_classes:
            raise MetarunError(f"episode.{key_prefix}ways={spec.ways} is invalid: the {split_name} split of {data_name} has "
                               f"{self.num_classes} classes of at least {m} modes (episodes need 2 or more)")
        if spec.sequence or spec.shots % m or spec.queries % m:
            raise MetarunError(f"episode.shots={spec.shots} and episode.{key_prefix}queries={spec.queries} must be multiples of "
                               f"data.modes_per_class={m}: each class's images are spread evenly over its modes")
        per_mode = (spec.shots + spec.queries) // m
        if per_mode > int(self.modes.counts[self.mode_index].min()):
            raise MetarunError(f"(episode.shots + episode.{key_prefix}queries) / data.modes_per_class = {per_mode} images per mode "
                               f"is more than the {int(self.modes.counts.min())} of the {split_name} split of {data_name}")


def _first_of_random_order(counts: Tensor, take: int, generator: torch.Generator) -> Tensor:
    """For each entry of counts [...] (a population 0..count-1), `take` members drawn without
    replacement: [..., take]. Slots past a population's count sort last under a random key."""
    keys = torch.rand(*counts.shape, int(counts.max()), generator=generator)
    keys.masked_fill_(torch.arange(keys.shape[-1]) >= counts[..., None], 2.0)
    return keys.argsort(dim=-1)[..., :take]
