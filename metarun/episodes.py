"""Episodes: the EpisodeBatch contract, the seeded training sampler and the fixed evaluation sets.

Support/query splitting happens here and nowhere else. An episode is an index gather from the
split's image tensor on the training device; no per-image Python runs in the loop.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from metarun.data.split import ImageSplit


@dataclass(frozen=True)
class EpisodeSpec:
    """N-way K-shot episodes with Q queries per class."""

    ways: int
    shots: int
    queries: int

    @property
    def images_per_class(self) -> int:
        return self.shots + self.queries


@dataclass
class EpisodeBatch:
    """A meta-batch of T episodes; labels are episode-local class indices 0..N-1.

    support_x: [T, N*K, C, H, W]   support_y: [T, N*K]
    query_x:   [T, N*Q, C, H, W]   query_y:   [T, N*Q]
    classes:   [T, N] the split's class ids behind labels 0..N-1
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor

    @property
    def tasks(self) -> int:
        return self.support_x.shape[0]

    @property
    def ways(self) -> int:
        return self.classes.shape[1]


def derive_seed(seed: int, purpose: str) -> int:
    """An independent seed per purpose ("train", "val", "test"), stable across runs and platforms."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def draw_indices(split: ImageSplit, spec: EpisodeSpec, tasks: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Choose classes and images for `tasks` episodes on the CPU generator.

    Returns image indices [T, N, K+Q] into split.images and class ids [T, N].
    """
    counts = split.counts  # [C]
    classes = torch.rand(tasks, split.num_classes, generator=generator).argsort(dim=1)[:, : spec.ways]  # [T, N]
    class_counts = counts[classes]  # [T, N]
    # A random key per image slot; slots past a class's count sort last, so the first K+Q
    # positions are a uniform draw without replacement from each class's own images.
    keys = torch.rand(tasks, spec.ways, int(class_counts.max()), generator=generator)
    keys.masked_fill_(torch.arange(keys.shape[-1]) >= class_counts[..., None], 2.0)
    positions = keys.argsort(dim=-1)[..., : spec.images_per_class]  # [T, N, K+Q]
    return split.offsets[classes][..., None] + positions, classes


def gather_batch(split: ImageSplit, indices: Tensor, classes: Tensor, shots: int) -> EpisodeBatch:
    """Turn drawn indices [T, N, K+Q] into an EpisodeBatch on the split's device."""
    tasks, ways, per_class = indices.shape
    indices = indices.to(split.device, non_blocking=True)
    support_x = split.gather(indices[:, :, :shots]).flatten(1, 2)  # [T, N*K, C, H, W]
    query_x = split.gather(indices[:, :, shots:]).flatten(1, 2)  # [T, N*Q, C, H, W]
    labels = torch.arange(ways, device=split.device).view(1, ways, 1)
    support_y = labels.expand(tasks, ways, shots).flatten(1)  # [T, N*K]
    query_y = labels.expand(tasks, ways, per_class - shots).flatten(1)  # [T, N*Q]
    return EpisodeBatch(support_x, support_y, query_x, query_y, classes.to(split.device))


class EpisodeSampler:
    """Draws meta-batches of training episodes from one split; seeded and resumable."""

    def __init__(self, split: ImageSplit, spec: EpisodeSpec, seed: int, repeat_every: int = 0):
        """repeat_every > 0 cycles through the same `repeat_every` meta-batches (debug=overfit)."""
        self.split = split
        self.spec = spec
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "train"))
        self.repeat_every = repeat_every
        self.initial_state = self.generator.get_state()
        self.drawn = 0

    def sample(self, tasks: int) -> EpisodeBatch:
        if self.repeat_every and self.drawn % self.repeat_every == 0:
            self.generator.set_state(self.initial_state)
        self.drawn += 1
        indices, classes = draw_indices(self.split, self.spec, tasks, self.generator)
        return gather_batch(self.split, indices, classes, self.spec.shots)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.drawn = state["drawn"]


class FixedEpisodes:
    """A fixed set of evaluation episodes drawn once from its own seed.

    The set depends only on the split, the episode spec, the count and (seed, purpose), so every
    algorithm run with the same seed is evaluated on the very same episodes.
    """

    def __init__(self, split: ImageSplit, spec: EpisodeSpec, count: int, seed: int, purpose: str):
        self.split = split
        self.spec = spec
        generator = torch.Generator().manual_seed(derive_seed(seed, purpose))
        self.indices, self.classes = draw_indices(split, spec, count, generator)  # [E, N, K+Q], [E, N]

    def __len__(self) -> int:
        return self.indices.shape[0]

    def batches(self, tasks_per_batch: int) -> Iterator[EpisodeBatch]:
        for start in range(0, len(self), tasks_per_batch):
            stop = start + tasks_per_batch
            yield gather_batch(self.split, self.indices[start:stop], self.classes[start:stop], self.spec.shots)
