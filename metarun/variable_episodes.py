"""Variable-way, variable-shot episodes (episode=variable): Meta-Dataset's sampler (Triantafillou et
al. 2020, "Meta-Dataset", ICLR, Section 3.2 and Appendix), seeded and resumable like the fixed ones.

Per episode, with n the images per class of the split and every draw from the sampler's generator:
  ways   N ~ U{min_ways, ..., min(max_ways, classes)}
  queries per class q = min(max_queries, floor(n / 2)), the same for every class (balanced)
  support size |S| = min(max_support, N * ceil(beta * min(max_shots, n - q))), beta ~ U(0, 1]
  shots of class c: k_c = min(floor(R_c / sum(R) * (|S| - N)) + 1, n - q, max_shots), R_c = exp(U(log 0.5, log 2))
(Meta-Dataset's code bounds a class's share of |S| by max_shots but not its shots: imbalance could
give a class more than 100; here no class has more.)
Meta-Dataset takes n per class; metarun's splits hold the same count for every class of a split
(Omniglot 20, CIFAR 600, miniImageNet 600) or n is its smallest class's count.

A meta-batch of such episodes is an EpisodeList: the trainer passes it one episode at a time (each
an EpisodeBatch of one task, support set class by class, unbalanced), so methods that take labels
rather than shapes (ProtoNet, Matching Networks, Baseline) run on it unchanged, and MAML with a head
of the most ways, of which each episode scores its first N outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from metarun.episodes import Draws, EpisodeBatch, EpisodeSource, EpisodeSpec, VariableRules, derive_seed, split_unbalanced


@dataclass
class VariableDraw:
    spec: EpisodeSpec  # N ways, the largest shot count, q queries per class
    shots: Tensor  # [N] each class's shots
    draws: Draws  # the source's draw of one episode of `spec`


def draw_episode(source: EpisodeSource, rules: VariableRules, generator: torch.Generator) -> VariableDraw:
    """One episode's size by Meta-Dataset's rules, then its classes and images (the source's draw).
    A multi-source split first chooses the episode's source, whose own counts then size it."""
    if hasattr(source, "draw_sized"):
        return VariableDraw(*source.draw_sized(lambda split: episode_size(split, rules, generator), generator))
    spec, shots = episode_size(source, rules, generator)
    return VariableDraw(spec, shots, source.draw(spec, 1, generator))


def episode_size(source: EpisodeSource, rules: VariableRules, generator: torch.Generator) -> tuple[EpisodeSpec, Tensor]:
    """(N ways, the most shots, q queries per class; each class's shots [N]) for one episode of `source`."""
    images, classes = int(source.min_images_per_class), int(source.num_classes)
    ways = int(torch.randint(rules.min_ways, min(rules.max_ways, classes) + 1, (), generator=generator))
    queries = min(rules.max_queries, images // 2)
    beta = 1 - float(torch.rand((), generator=generator))  # (0, 1]
    support = min(rules.max_support, ways * math.ceil(beta * min(rules.max_shots, images - queries)))
    proportions = torch.empty(ways).uniform_(math.log(0.5), math.log(2), generator=generator).exp()
    shots = ((proportions / proportions.sum() * (support - ways)).floor().long() + 1).clamp(max=min(images - queries, rules.max_shots))
    return EpisodeSpec(ways, int(shots.max()), queries), shots


def episode_of(source: EpisodeSource, drawn: VariableDraw) -> EpisodeBatch:
    """The drawn episode as a batch of one task: class c's first shots[c] images its support."""
    return split_unbalanced(source.examples(drawn.draws), drawn.shots, drawn.spec.shots)


class EpisodeList:
    """A meta-batch of episodes of different shapes; the trainer passes it one episode at a time."""

    def __init__(self, episodes: list[EpisodeBatch]):
        self.episodes = episodes

    @property
    def tasks(self) -> int:
        return len(self.episodes)

    def split(self, tasks: int) -> list[EpisodeBatch]:
        return self.episodes


def variable_meta_batch(source: EpisodeSource, spec: EpisodeSpec, tasks: int, generator: torch.Generator,
                        share: slice = slice(None)) -> EpisodeList:
    """EpisodeSampler's meta-batch under episode=variable: `tasks` episodes of their own sizes, or their `share`."""
    drawn = [draw_episode(source, spec.variable, generator) for _ in range(tasks)][share]
    return EpisodeList([episode_of(source, episode) for episode in drawn])


class FixedVariableEpisodes:
    """FixedEpisodes for episode=variable: drawn once from (seed, purpose), scored one at a time."""

    def __init__(self, source: EpisodeSource, rules: VariableRules, count: int, seed: int, purpose: str):
        self.source = source
        generator = torch.Generator().manual_seed(derive_seed(seed, purpose))
        self.drawn = [draw_episode(source, rules, generator) for _ in range(count)]

    def __len__(self) -> int:
        return len(self.drawn)

    def batches(self, tasks_per_batch: int) -> Iterator[EpisodeBatch]:
        for drawn in self.drawn:
            yield episode_of(self.source, drawn)

    def groups(self) -> tuple[str, Tensor] | None:
        if not hasattr(self.source, "groups"):
            return None
        parts = [self.source.groups(drawn.draws) for drawn in self.drawn]
        return parts[0][0], torch.cat([ids for _, ids in parts])
