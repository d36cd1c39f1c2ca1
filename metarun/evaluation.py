"""Scoring a model on fixed episodes: the trainer's validation and test, and `metarun-eval`."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from metarun.algorithms.base import Algorithm
from metarun.compute import Compute
from metarun.distributed import SingleProcess
from metarun.episodes import FixedEpisodes


def evaluate(algorithm: Algorithm, episodes: FixedEpisodes, compute: Compute, batch_size: int,
             distributed: SingleProcess | None = None) -> dict[str, Tensor]:
    """Per-episode metrics [E] on fixed episodes, in eval mode without an outer graph; the
    algorithm is left in training mode. `batch_size` episodes per pass unless memory allows fewer
    (compute.eval_tasks_per_pass); under several processes each scores its share of the batches."""
    distributed = distributed or SingleProcess()
    algorithm.eval()
    per_episode = defaultdict(list)
    per_pass = compute.eval_tasks_per_pass or batch_size
    with torch.no_grad(), compute.autocast():
        for index, batch in enumerate(episodes.batches(per_pass)):
            if distributed.owns(index):
                for name, values in algorithm.step(batch, train=False).metrics.items():
                    per_episode[name].append(values)
    algorithm.train()
    per_episode = distributed.gather_episodes(per_episode)
    return {name: torch.cat(values).cpu() for name, values in per_episode.items()}
