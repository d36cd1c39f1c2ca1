"""The one algorithm interface every method implements, and the helpers they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from metarun.compute import float32, full
from metarun.episodes import EpisodeBatch
from metarun.errors import MetarunError
from metarun.tasks import Classification, Task


@dataclass
class StepOutput:
    """What one step over a meta-batch returns to the trainer.

    objective:   scalar whose gradient with respect to the algorithm's parameters is the
                 meta-gradient, the mean over the batch's tasks (it need not equal the loss: see
                 `gradient_surrogate`); the trainer weighs passes of fewer tasks by their share.
    metrics:     per-task values [T], detached; always "loss" of the query set and the task's
                 metrics ("acc", or "mse"); "<name>@<k>" after k inner steps where there are any.
    predictions: query scores {k: [T, N*Q, outputs]} after k inner steps (at the steps an
                 inner-loop method records at evaluation; k = 0 for the other methods). For
                 classification, scores whose softmax is the method's class distribution.
    """

    objective: Tensor
    metrics: dict[str, Tensor]
    predictions: dict[int, Tensor] | None = None


class Algorithm(nn.Module, ABC):
    """A meta-learner: reads a meta-batch of episodes, returns an objective and metrics.

    The trainer calls `step(batch, train=True)` in training mode with autograd on, and
    `step(batch, train=False)` in eval mode under torch.no_grad(), both under the run's autocast
    (metarun/compute.py), possibly several times per meta-batch when it is split into passes
    that fit in memory; then `end_meta_step()` once per update.
    """

    # Whether the method adapts to each task by gradient steps: bf16 rounding compounds through
    # them, so `auto` keeps such methods in fp32 (metarun/compute.py).
    inner_loop: bool = False
    # Whether it can read episode.protocol=sequence episodes (no support set; metarun.algorithms.sequences).
    reads_sequences: bool = False
    # Whether it takes episodes of any ways and unbalanced shots (episode=variable; metarun.variable_episodes).
    variable_episodes: bool = False

    @abstractmethod
    def step(self, batch: EpisodeBatch, train: bool) -> StepOutput:
        ...

    def end_meta_step(self) -> None:
        """Called once after each meta-training update: the clock of a method's own schedules."""


def classification(task: Task | None, algorithm: str) -> Classification:
    """The task of a method that compares queries with classes: it cannot regress."""
    task = task or Classification()
    if not isinstance(task, Classification):
        raise MetarunError(f"algo={algorithm} classifies, but this data set is a {task.name} task; "
                           "use a gradient-based method (maml, fomaml, metasgd, reptile, anil, pretrain)")
    return task


def classify_queries(scores: Tensor, labels: Tensor, task: Classification) -> StepOutput:
    """The shared head of the methods that score each query against the episode's classes (ProtoNet,
    Matching Networks, SNAIL): scores [T, N*Q, N] whose softmax is the class distribution, labels
    [T, N*Q]. The objective is the task's loss of each task's queries, averaged over the tasks; the
    metrics are the task's, per task; the scores are the predictions."""
    losses = task.task_losses(scores, labels)  # [T]
    metrics = {"loss": losses.detach(), **task.metrics(scores.detach(), labels)}
    return StepOutput(losses.mean(), metrics, {0: scores.detach()})


def embed_episodes(backbone: nn.Module, batch: EpisodeBatch) -> tuple[Tensor, Tensor]:
    """Embed every support and query image of the meta-batch in one forward pass:
    support [T, N*K, F] and query [T, N*Q, F] features, in float32 whatever the autocast, since
    the distances and similarities computed from them need the bits."""
    tasks, n_support = batch.support_y.shape
    images = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
    embeddings = full(backbone(images))
    features = embeddings.shape[-1]  # not -1 in view: a sequence episode has no support images
    support = embeddings[: tasks * n_support].view(tasks, n_support, features)
    return support, embeddings[tasks * n_support :].view(tasks, batch.query_y.shape[1], features)


def class_means(embeddings: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Mean embedding per class: embeddings [T, S, F], labels [T, S] in 0..N-1 -> [T, N, F], in the
    embeddings' dtype (autocast would round the sums to bf16)."""
    one_hot = torch.nn.functional.one_hot(labels, ways).to(embeddings.dtype)  # [T, S, N]
    with float32(embeddings.device):
        sums = one_hot.transpose(1, 2) @ embeddings  # [T, N, F]
    return sums / one_hot.sum(dim=1).unsqueeze(-1)


def gradient_surrogate(params: Sequence[Tensor], grads: Iterable[Tensor | None]) -> Tensor:
    """A scalar whose gradient with respect to `params` is exactly `grads`: sum(p * g).

    Lets an algorithm that backpropagates task by task (holding one task's graph at a time)
    hand the trainer an ordinary objective to call backward on.
    """
    total = sum((param * grad.detach()).sum() for param, grad in zip(params, grads) if grad is not None)
    return total if isinstance(total, Tensor) else torch.zeros((), device=params[0].device)
