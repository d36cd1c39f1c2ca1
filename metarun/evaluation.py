"""Scoring a model on fixed episodes: the trainer's validation and test, and `metarun-eval`."""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch import Tensor, nn

from metarun.algorithms.base import Algorithm
from metarun.compute import Compute, full
from metarun.distributed import SingleProcess
from metarun.episodes import FixedEpisodes
from metarun.tasks import Classification


def evaluate(algorithm: Algorithm, episodes: FixedEpisodes, compute: Compute, batch_size: int,
             distributed: SingleProcess | None = None, batch_norm: str = "running") -> dict[str, Tensor]:
    """Per-episode metrics [E] on fixed episodes, in eval mode without an outer graph; the
    algorithm is left in training mode. `batch_size` episodes per pass unless memory allows fewer
    (compute.eval_tasks_per_pass); under several processes each scores its share of the batches.
    batch_norm "batch": batch norm layers normalise with each pass's own statistics (transductive,
    as Relation Networks' code tests; per episode with batch_size 1), "running": with the running ones."""
    distributed = distributed or SingleProcess()
    algorithm.eval()
    per_episode = defaultdict(list)
    per_pass = compute.eval_tasks_per_pass or batch_size
    statistics = batch_statistics(algorithm) if batch_norm == "batch" else nullcontext()
    groups, start = episodes.groups(), 0
    with torch.no_grad(), compute.autocast(), statistics:
        for index, batch in enumerate(episodes.batches(per_pass)):
            if distributed.owns(index):
                metrics = algorithm.step(batch, train=False).metrics
                if groups is not None:
                    axis, ids = groups
                    metrics |= by_group(metrics, axis, ids[start : start + batch.tasks])
                for name, values in metrics.items():
                    per_episode[name].append(values)
            start += batch.tasks
    algorithm.train()
    per_episode = distributed.gather_episodes(per_episode)
    return {name: torch.cat(values).cpu() for name, values in per_episode.items()}


def by_group(metrics: dict[str, Tensor], axis: str, groups: Tensor) -> dict[str, Tensor]:
    """Each metric of a batch's episodes [T] also for each group among them, as "<metric>@<axis>=<g>"
    (results.summarize makes "acc@source=1" part of "acc_by_source")."""
    groups = groups.to(next(iter(metrics.values())).device)
    return {f"{name}@{axis}={int(g)}": values[groups == g] for name, values in metrics.items() if "@" not in name
            for g in groups.unique()}


def evaluate_ensemble(algorithm: Algorithm, weights: list[dict], episodes: FixedEpisodes, compute: Compute, batch_size: int,
                      task: Classification, batch_norm: str = "running") -> dict[str, Tensor]:
    """Per-episode loss and metrics [E] of the mean class probabilities of several weights of
    `algorithm` (MAML++'s ensemble of its best validation checkpoints); the algorithm is left
    with the last weights, in training mode."""
    per_pass = compute.eval_tasks_per_pass or batch_size
    members, labels = [], []
    for state in weights:
        algorithm.load_state_dict(state)
        algorithm.eval()
        statistics = batch_statistics(algorithm) if batch_norm == "batch" else nullcontext()
        probabilities = []
        with torch.no_grad(), compute.autocast(), statistics:
            for batch in episodes.batches(per_pass):
                scores = algorithm.step(batch, train=False).predictions
                probabilities.append(full(scores[max(scores)]).softmax(dim=-1).cpu())  # [B, N*Q, N]
                if len(members) == 0:
                    labels.append(batch.query_y.cpu())
        members.append(torch.cat(probabilities))
    algorithm.train()
    probabilities = torch.stack(members).mean(dim=0)
    labels = torch.cat(labels)  # [E, N*Q]
    loss = -probabilities.clamp_min(1e-12).log().gather(-1, labels[..., None]).squeeze(-1).mean(dim=-1)
    return {"loss": loss, **task.metrics(probabilities, labels)}


@contextmanager
def batch_statistics(module: nn.Module) -> Iterator[None]:
    """Batch norm layers that keep running statistics normalise with the batch's instead, and keep
    their running statistics unchanged (momentum 0), while in the block."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in layers]
    for layer in layers:
        layer.train()
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, (momentum, tracked) in zip(layers, saved):
            layer.eval()
            layer.momentum = momentum
            layer.num_batches_tracked.copy_(tracked)
