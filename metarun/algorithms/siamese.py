"""Siamese networks (Koch et al. 2015): a twin network scores whether two images show one class."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarun.algorithms.base import Algorithm, StepOutput, classification, embed_episodes
from metarun.compute import float32, full
from metarun.episodes import EpisodeBatch
from metarun.tasks import Task


class Siamese(Algorithm):
    """Similarity of two images = sigmoid(w . |e1 - e2| + b), the weighted L1 distance of their
    embeddings. Training: binary cross-entropy on every (query, support) pair of an episode,
    same class = 1, the positives weighted N - 1 so both kinds count equally. An N-way K-shot
    query takes the class whose support images are most similar on average over the shots.
    """

    def __init__(self, backbone: nn.Module, task: Task | None = None):
        super().__init__()
        self.task = classification(task, "siamese")
        self.backbone = backbone
        self.distance = nn.Linear(backbone.out_features, 1)

    def step(self, batch: EpisodeBatch, train: bool) -> StepOutput:
        logits = self.pair_logits(batch)  # [T, N*Q, N*K]
        targets = pair_labels(batch.query_y, batch.support_y)
        positive_weight = torch.tensor(float(batch.ways - 1), device=logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=positive_weight, reduction="none").mean((1, 2))
        one_hot = F.one_hot(batch.support_y, batch.ways).to(logits.dtype)  # [T, N*K, N]
        with float32(logits.device):
            class_scores = logits.sigmoid() @ one_hot / one_hot.sum(1, keepdim=True)  # mean similarity per class
        metrics = {"loss": loss.detach(), **self.task.metrics(class_scores.detach(), batch.query_y)}
        scores = class_scores.detach().clamp_min(1e-12).log()  # softmax: the mean similarities, normalised
        return StepOutput(loss.mean(), metrics, {0: scores})

    def pair_logits(self, batch: EpisodeBatch) -> Tensor:
        support, query = embed_episodes(self.backbone, batch)  # [T, N*K, F], [T, N*Q, F]
        return full(self.similarity_logits(query[:, :, None], support[:, None]))

    def similarity_logits(self, a: Tensor, b: Tensor) -> Tensor:
        """The pair's logit from embeddings a, b [..., F] (broadcast) -> [...]; symmetric in a, b."""
        return self.distance((a - b).abs()).squeeze(-1)


def pair_labels(query_y: Tensor, support_y: Tensor) -> Tensor:
    """1 where a query and a support image share a class: [T, M], [T, S] -> [T, M, S] floats."""
    return (query_y[:, :, None] == support_y[:, None, :]).float()
