"""Episodes: the EpisodeBatch contract, the seeded training sampler and the fixed evaluation sets.

A data split is an EpisodeSource: it draws episodes as small CPU tensors (image indices, or a
curve's parameters) and turns drawn episodes into their examples on the training device; the
split into support and query sets happens here and nowhere else. The sampler and the fixed sets
own the random generators, so any source is seeded and resumable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor

from metarun.tasks import Task


@dataclass(frozen=True)
class VariableRules:
    """Meta-Dataset's defaults: 5 to 50 ways, at most 10 queries per class, a support set of at
    most 500 images and 100 per class."""

    min_ways: int = 5
    max_ways: int = 50
    max_queries: int = 10
    max_support: int = 500
    max_shots: int = 100


@dataclass(frozen=True)
class EpisodeSpec:
    """N-way K-shot episodes with Q queries per class.

    sequence: Santoro et al.'s protocol (episode.protocol=sequence): no support set, and the Q
    images of each class (episode.instances) come as one sequence in a random order, to be read
    one at a time, each label given one step after its image.
    variable: Meta-Dataset's rules (episode=variable; metarun.variable_episodes): every episode
    draws its own ways and shots; ways and queries here are then the fewest ways and the most
    queries per class, for the splits' checks."""

    ways: int
    shots: int
    queries: int
    sequence: bool = False
    variable: VariableRules | None = None

    @property
    def images_per_class(self) -> int:
        return self.shots + self.queries


@dataclass
class EpisodeBatch:
    """A meta-batch of T episodes.

    Classification: labels are episode-local class indices 0..N-1.
      support_x: [T, N*K, C, H, W]   support_y: [T, N*K]
      query_x:   [T, N*Q, C, H, W]   query_y:   [T, N*Q]
      classes:   [T, N] the split's class ids behind labels 0..N-1
    Regression: K support and Q query points per task, targets as vectors.
      support_x: [T, K, *input_shape]   support_y: [T, K, D]   (query_x, query_y alike)
      classes:   None
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor | None = None

    @property
    def tasks(self) -> int:
        return self.support_x.shape[0]

    @property
    def ways(self) -> int:
        return self.classes.shape[1]

    def split(self, tasks: int) -> list[EpisodeBatch]:
        """Consecutive meta-batches of at most `tasks` episodes each (passes that fit in memory)."""
        if tasks >= self.tasks:
            return [self]
        parts = (self.support_x, self.support_y, self.query_x, self.query_y, self.classes)
        return [EpisodeBatch(*(None if part is None else part[start : start + tasks] for part in parts))
                for start in range(0, self.tasks, tasks)]


Draws = tuple[Tensor, ...]  # drawn episodes: CPU tensors whose first dim is the episode


@dataclass
class Examples:
    """Drawn episodes before the support/query split, K+Q examples per class (support first).

    x: [E, N, K+Q, *input_shape]
    y: [E, N, K+Q, D] regression targets, or None for classification (the label is the way)
    classes: [E, N] the split's class ids, or None
    """

    x: Tensor
    y: Tensor | None = None
    classes: Tensor | None = None


def split_support_query(examples: Examples, shots: int, order: Tensor | None = None) -> EpisodeBatch:
    """The first `shots` examples of each class form the support set, the rest the queries;
    `order` [E, N*Q] (sequence episodes) puts each episode's queries in that order."""
    x, y = examples.x, examples.y
    if y is None:  # classification: episode-local labels 0..N-1
        episodes, ways, per_class = x.shape[:3]
        y = torch.arange(ways, device=x.device).view(1, ways, 1).expand(episodes, ways, per_class)
    batch = EpisodeBatch(
        support_x=x[:, :, :shots].flatten(1, 2),
        support_y=y[:, :, :shots].flatten(1, 2),
        query_x=x[:, :, shots:].flatten(1, 2),
        query_y=y[:, :, shots:].flatten(1, 2),
        classes=examples.classes,
    )
    if order is None:
        return batch
    order = order.to(x.device)
    images = order.view(*order.shape, *[1] * (batch.query_x.dim() - 2)).expand_as(batch.query_x)
    batch.query_x, batch.query_y = batch.query_x.gather(1, images), batch.query_y.gather(1, order)
    return batch


def split_unbalanced(examples: Examples, shots: Tensor, most: int) -> EpisodeBatch:
    """One episode's examples [1, N, most + Q, ...] as a batch of one task whose class c has the
    first shots[c] of its `most` support slots (episode=variable), its Q queries after them."""
    x, ways = examples.x[0], len(shots)
    keep = torch.arange(most, device=x.device) < shots.to(x.device)[:, None]  # [N, most]
    labels = torch.arange(ways, device=x.device)
    queries = x.shape[1] - most
    return EpisodeBatch(
        support_x=x[:, :most][keep].unsqueeze(0),
        support_y=labels[:, None].expand(ways, most)[keep].unsqueeze(0),
        query_x=x[:, most:].flatten(0, 1).unsqueeze(0),
        query_y=labels.repeat_interleave(queries).unsqueeze(0),
        classes=examples.classes,
    )


def draw_episodes(source: EpisodeSource, spec: EpisodeSpec, episodes: int, generator: torch.Generator) -> Draws:
    """The source's draws, and for sequence episodes each one's order of its N*Q images (from the
    same generator, after the source's draws, so standard episodes are drawn as before)."""
    draws = source.draw(spec, episodes, generator)
    if not spec.sequence:
        return draws
    return (*draws, torch.rand(episodes, spec.ways * spec.queries, generator=generator).argsort(dim=1))


def episode_batch(source: EpisodeSource, spec: EpisodeSpec, draws: Draws) -> EpisodeBatch:
    """The EpisodeBatch of drawn episodes (draws from `draw_episodes`)."""
    if spec.sequence:
        *draws, order = draws
        return split_support_query(source.examples(tuple(draws)), spec.shots, order)
    return split_support_query(source.examples(draws), spec.shots)


class EpisodeSource(Protocol):
    """One split of a data set, as the sampler and the fixed evaluation sets see it."""

    task: Task
    input_shape: tuple[int, ...]

    def draw(self, spec: EpisodeSpec, episodes: int, generator: torch.Generator) -> Draws:
        """Choose `episodes` episodes with `generator` (and no other randomness)."""

    def examples(self, draws: Draws) -> Examples:
        """The examples of the episodes `draws` describes, on the source's device."""

    def check(self, spec: EpisodeSpec, split_name: str, data_name: str, key_prefix: str) -> None:
        """Raise MetarunError if no episode of `spec` can be drawn from this split."""

    def figures(self, spec: EpisodeSpec, seed: int) -> list:
        """Pictures to draw of a finished run (callables taking the algorithm), if any."""

    def to(self, device: torch.device | str) -> EpisodeSource:
        ...


def derive_seed(seed: int, purpose: str) -> int:
    """An independent seed per purpose ("train", "val", "test"), stable across runs and platforms."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class EpisodeSampler:
    """Draws meta-batches of training episodes from one split; seeded and resumable.

    meta_batch(source, spec, tasks, generator, share): how a meta-batch is drawn; by default N-way
    K-shot episodes of `spec` (episode=variable passes metarun.variable_episodes.variable_meta_batch)."""

    def __init__(self, source: EpisodeSource, spec: EpisodeSpec, seed: int, repeat_every: int = 0,
                 meta_batch: Callable[..., EpisodeBatch] | None = None):
        """repeat_every > 0 cycles through the same `repeat_every` meta-batches (debug=overfit)."""
        self.source = source
        self.spec = spec
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "train"))
        self.repeat_every = repeat_every
        self.initial_state = self.generator.get_state()
        self.drawn = 0
        self.meta_batch = meta_batch or fixed_meta_batch

    def sample(self, tasks: int, share: slice = slice(None)) -> EpisodeBatch:
        """A meta-batch of `tasks` episodes, or only its `share` of them (one process's under
        trainer=ddp: the generator moves on by the whole meta-batch either way)."""
        if self.repeat_every and self.drawn % self.repeat_every == 0:
            self.generator.set_state(self.initial_state)
        self.drawn += 1
        return self.meta_batch(self.source, self.spec, tasks, self.generator, share)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.drawn = state["drawn"]


def fixed_meta_batch(source: EpisodeSource, spec: EpisodeSpec, tasks: int, generator: torch.Generator,
                     share: slice = slice(None)) -> EpisodeBatch:
    """`tasks` episodes of `spec`, or their `share`."""
    draws = tuple(drawn[share] for drawn in draw_episodes(source, spec, tasks, generator))
    return episode_batch(source, spec, draws)


class FixedEpisodes:
    """A fixed set of evaluation episodes drawn once from its own seed.

    The set depends only on the split, the episode spec, the count and (seed, purpose), so every
    algorithm run with the same seed is evaluated on the very same episodes.
    """

    def __init__(self, source: EpisodeSource, spec: EpisodeSpec, count: int, seed: int, purpose: str):
        self.source = source
        self.spec = spec
        generator = torch.Generator().manual_seed(derive_seed(seed, purpose))
        self.draws = draw_episodes(source, spec, count, generator)

    def __len__(self) -> int:
        return self.draws[0].shape[0]

    def groups(self) -> tuple[str, Tensor] | None:
        """(axis, each episode's group [E]) where the source groups its episodes (data=multi_source: by
        source), for metrics per group; None otherwise."""
        return self.source.groups(self.draws) if hasattr(self.source, "groups") else None

    def batches(self, tasks_per_batch: int) -> Iterator[EpisodeBatch]:
        for start in range(0, len(self), tasks_per_batch):
            draws = tuple(drawn[start : start + tasks_per_batch] for drawn in self.draws)
            yield episode_batch(self.source, self.spec, draws)
