"""Prototypical Networks (Snell et al. 2017): classify queries by distance to class means."""

from __future__ import annotations

from torch import Tensor, nn

from metarun.algorithms.base import Algorithm, StepOutput, class_means, classification, classify_queries, embed_episodes
from metarun.episodes import EpisodeBatch
from metarun.tasks import Task


class ProtoNet(Algorithm):
    """Logits are negative squared Euclidean distances from query embeddings to prototypes."""

    variable_episodes = True  # it reads labels, not shapes

    def __init__(self, backbone: nn.Module, task: Task | None = None):
        super().__init__()
        self.task = classification(task, "protonet")
        self.backbone = backbone

    def step(self, batch: EpisodeBatch, train: bool) -> StepOutput:
        return classify_queries(self.logits(batch), batch.query_y, self.task)

    def logits(self, batch: EpisodeBatch) -> Tensor:
        """[T, N*Q, N]: one forward pass embeds every support and query image of the meta-batch."""
        support, query = embed_episodes(self.backbone, batch)  # [T, N*K, F], [T, N*Q, F]
        prototypes = class_means(support, batch.support_y, batch.ways)  # [T, N, F]
        return -squared_distances(query, prototypes)


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """||a_i - b_j||^2: a [T, M, F], b [T, N, F] -> [T, M, N]."""
    return (a.unsqueeze(2) - b.unsqueeze(1)).pow(2).sum(dim=-1)

