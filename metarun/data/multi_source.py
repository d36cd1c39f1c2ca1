"""Multi-source episodes (data=multi_source; Meta-Dataset's training, Triantafillou et al. 2020):
every episode comes from one of several data sets, chosen uniformly or by weight, the images of
every source mapped to one size and channel count and normalised with its own statistics.

Every source draws the whole meta-batch, and each episode keeps the draw of the source chosen for
it: the generator advances the same way whichever sources are chosen, so the sampler stays
seeded and resumable and the fixed evaluation episodes stay fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from metarun.data.augment import GREY, Augmentation
from metarun.data.cross_domain import AsInputOf
from metarun.data.split import DataSplits
from metarun.episodes import EpisodeSource, EpisodeSpec, Examples
from metarun.errors import MetarunError
from metarun.tasks import Classification


def load_multi_source(sources: Sequence[str], available: Mapping[str, Callable[..., DataSplits]], weights: Sequence[float] | None = None,
                      image_size: int = 32, channels: int = 3) -> DataSplits:
    """The splits of every source in `sources` (each from its loader in `available`), as
    one data set whose episodes each come from one source."""
    unknown = [name for name in sources if name not in available]
    if not sources or unknown:
        raise MetarunError(f"data.sources={list(sources)} names {unknown[0] if unknown else 'no source'}; "
                           f"give one or more of {', '.join(available)}")
    if weights is not None and (len(weights) != len(sources) or min(weights) < 0 or sum(weights) <= 0):
        raise MetarunError(f"data.weights={list(weights)} must give each of the {len(sources)} sources a weight >= 0, not all 0")
    loaded = [_load(available[name]) for name in sources]
    return DataSplits(*(MultiSource.of([getattr(splits, split) for splits in loaded], list(sources), weights, image_size, channels)
                        for split in ("train", "val", "test")))


def _load(loader: Callable[..., DataSplits]) -> DataSplits:
    """One source's splits from its loader (a partial of its data config), its augmentation settings
    made an Augmentation as build.load_data does."""
    settings = getattr(loader, "keywords", {})
    return loader(**({"augment": Augmentation.from_config(settings["augment"])} if "augment" in settings else {}))


@dataclass
class MultiSource:
    """One split of several sources. An episode's classes all come from its source; their ids
    (`classes`, which the pre-training baselines classify) count the sources' classes in turn."""

    splits: list[AsInputOf]
    names: list[str]
    weights: Tensor  # [sources]
    class_offsets: Tensor  # [sources]
    arities: list[int]  # how many tensors each source's draw has
    task: Classification
    input_shape: tuple[int, int, int]

    @classmethod
    def of(cls, splits: list[EpisodeSource], names: list[str], weights: Sequence[float] | None, image_size: int,
           channels: int) -> MultiSource:
        mapped = [AsInputOf(split, common_format(split.input_format, image_size, channels)) for split in splits]
        counts = [split.task.classes for split in splits]
        arities = [len(split.draw(EpisodeSpec(2, 1, 1), 1, torch.Generator().manual_seed(0))) for split in splits]
        return cls(mapped, names, torch.tensor(weights if weights is not None else [1.0] * len(splits), dtype=torch.float),
                   torch.tensor([0, *counts[:-1]]).cumsum(0), arities, Classification(classes=sum(counts)),
                   (channels, image_size, image_size))

    @property
    def input_format(self) -> dict:
        channels = self.input_shape[0]
        return {"shape": list(self.input_shape), "mean": [0.0] * channels, "std": [1.0] * channels, "ink": False,
                "sources": self.names}

    @property
    def num_classes(self) -> int:
        """The fewest classes of a source: what an episode's ways must fit (task.classes counts them all)."""
        return min(split.num_classes for split in self.splits)

    @property
    def min_images_per_class(self) -> int:
        return min(split.min_images_per_class for split in self.splits)

    @property
    def device(self) -> torch.device:
        return self.splits[0].device

    def to(self, device: torch.device | str) -> MultiSource:
        return replace(self, splits=[split.to(device) for split in self.splits])

    def draw(self, spec: EpisodeSpec, episodes: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """(the source of each episode [E], then every source's draws of E episodes in turn)."""
        chosen = torch.multinomial(self.weights, episodes, replacement=True, generator=generator)
        return (chosen, *(drawn for split in self.splits for drawn in split.draw(spec, episodes, generator)))

    def draw_sized(self, size_of: Callable[[EpisodeSource], tuple[EpisodeSpec, Tensor]], generator: torch.Generator):
        """One episode sized by its own source (episode=variable): (spec, size, draws in draw's layout,
        the other sources' parts placeholders that are never gathered)."""
        chosen = torch.multinomial(self.weights, 1, replacement=True, generator=generator)
        source = int(chosen)
        spec, size = size_of(self.splits[source])
        own = self.splits[source].draw(spec, 1, generator)
        parts = [own if index == source else (torch.zeros(1, dtype=torch.long),) * arity for index, arity in enumerate(self.arities)]
        return spec, size, (chosen, *(drawn for part in parts for drawn in part))

    def groups(self, draws: tuple[Tensor, ...]) -> tuple[str, Tensor]:
        """Each drawn episode's source [E]: evaluation reports its metrics per source (test.acc_by_source)."""
        return "source", draws[0]

    def examples(self, draws: tuple[Tensor, ...]) -> Examples:
        chosen, position, parts = draws[0], 1, []
        for source, (split, arity) in enumerate(zip(self.splits, self.arities)):
            own, position = draws[position : position + arity], position + arity
            picked = (chosen == source).nonzero().flatten()
            if len(picked):
                examples = split.examples(tuple(drawn[picked] for drawn in own))
                parts.append((picked.to(examples.x.device), examples.x, examples.classes + int(self.class_offsets[source])))
        x = parts[0][1].new_empty(len(chosen), *parts[0][1].shape[1:])
        classes = parts[0][2].new_empty(len(chosen), *parts[0][2].shape[1:])
        for picked, images, ids in parts:
            x[picked], classes[picked] = images, ids
        return Examples(x, classes=classes)

    def check(self, spec: EpisodeSpec, split_name: str, data_name: str, key_prefix: str = "") -> None:
        for name, split in zip(self.names, self.splits):
            split.check(spec, split_name, f"{data_name} (source {name})", key_prefix)

    def figures(self, spec: EpisodeSpec, seed: int) -> list:
        return []


def common_format(image_format: dict, image_size: int, channels: int) -> dict:
    """A source's input format at the common size and channel count, with its own normalisation
    (a grey source's statistics for each of three channels; a colour one's by luma) and its own ink."""
    mean, std = list(image_format["mean"]), list(image_format["std"])
    if len(mean) == 1 and channels == 3:
        mean, std = mean * 3, std * 3
    elif len(mean) == 3 and channels == 1:
        mean, std = [sum(w * m for w, m in zip(GREY, mean))], [sum(w * s for w, s in zip(GREY, std))]
    return {**image_format, "shape": [channels, image_size, image_size], "mean": mean, "std": std}
