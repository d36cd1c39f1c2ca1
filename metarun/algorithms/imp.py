"""Infinite Mixture Prototypes (Allen, Shelhamer, Shin & Tenenbaum 2019, "Infinite Mixture Prototypes
for Few-Shot Learning", ICML): a class is a set of clusters in embedding space, as many as its
support examples call for, between one prototype per class (ProtoNet) and one per example
(nearest neighbour)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarun.algorithms.base import Algorithm, StepOutput, classification, classify_queries, embed_episodes
from metarun.algorithms.protonet import squared_distances
from metarun.compute import float32
from metarun.episodes import EpisodeBatch
from metarun.tasks import Task


class IMP(Algorithm):
    """Each class starts as one cluster at its support mean. A support example farther than lambda
    (squared distance) from every cluster of its own class starts a cluster of its own, with

        lambda = -2 sigma log(alpha) + d sigma log(1 + rho / sigma),

    sigma the clusters' variance (learned, from `initial_sigma`), rho the variance of the class
    means over the classes, d the embedding size. Then the support examples are reassigned softly
    among their own class's clusters, the means recomputed and the clusters left empty removed;
    `cluster_steps` times. A query's score for a cluster is its Gaussian log-likelihood there, and
    for a class its best cluster's; the loss is cross-entropy over the classes, as the paper's
    code's "or" over a class's clusters. The clustering decisions and responsibilities carry no
    gradient; the means carry it to the embeddings, the likelihoods to sigma.

    threshold: a fixed lambda instead of the formula (inf: one cluster per class, ProtoNet up to
    the scale 1 / (2 sigma); 0: every example its own cluster). The defaults are the paper's code's
    Omniglot settings: sigma from 5, alpha 0.1, one clustering step.
    """

    def __init__(self, backbone: nn.Module, task: Task | None = None, initial_sigma: float = 5.0, alpha: float = 0.1,
                 cluster_steps: int = 1, threshold: float | None = None):
        super().__init__()
        self.task = classification(task, "imp")
        self.backbone = backbone
        self.log_sigma = nn.Parameter(torch.tensor(math.log(initial_sigma)))
        self.alpha = alpha
        self.cluster_steps = cluster_steps
        self.threshold = threshold

    def step(self, batch: EpisodeBatch, train: bool) -> StepOutput:
        support, query = embed_episodes(self.backbone, batch)  # [T, N*K, D], [T, N*Q, D] in float32
        with float32(support.device):
            scores = torch.stack([self.class_scores(s, y, q, batch.ways)
                                  for s, y, q in zip(support, batch.support_y, query)])  # [T, N*Q, N]
        return classify_queries(scores, batch.query_y, self.task)

    def class_scores(self, support: Tensor, labels: Tensor, query: Tensor, ways: int) -> Tensor:
        """support [S, D], labels [S], query [M, D] -> each query's best-cluster log-likelihood per class [M, N]."""
        means, owners = self.clusters(support, labels, ways)
        log_likelihoods = self.log_likelihoods(query, means)  # [M, C]
        others = owners[None] != torch.arange(ways, device=owners.device)[:, None]  # [N, C]: clusters of other classes
        return log_likelihoods[:, None, :].masked_fill(others, float("-inf")).amax(dim=-1)

    def log_likelihoods(self, x: Tensor, means: Tensor) -> Tensor:
        """log N(x; mean, sigma I) for x [M, D] and each mean [C, D] -> [M, C]."""
        sigma, dim = self.log_sigma.exp(), x.shape[-1]
        distances = squared_distances(x[None], means[None])[0]
        return -distances / (2 * sigma) - 0.5 * dim * (self.log_sigma + math.log(2 * math.pi))

    def clusters(self, support: Tensor, labels: Tensor, ways: int) -> tuple[Tensor, Tensor]:
        """The clusters' means [C, D] and the class of each [C]."""
        responsibilities = F.one_hot(labels, ways).to(support.dtype)  # [S, C]: one cluster per class to start
        owners = torch.arange(ways, device=support.device)
        means = weighted_means(support, responsibilities)
        limit = self.threshold if self.threshold is not None else self.limit(means.detach())
        for _ in range(self.cluster_steps):
            centres = means.detach()
            # Clusters only ever come closer, so only an example beyond the limit now may start one.
            distances = squared_distances(support.detach()[None], centres[None])[0]  # [S, C]
            distances = distances.masked_fill(labels[:, None] != owners[None], float("inf"))
            for index in (distances.amin(dim=1) > limit).nonzero().flatten().tolist():
                example, label = support[index].detach(), labels[index]
                own = owners == label
                if squared_distances(example[None, None], centres[own][None]).min() > limit:
                    centres = torch.cat([centres, example[None]])
                    owners = torch.cat([owners, label[None]])
            if len(centres) > len(responsibilities[0]):
                with torch.no_grad():  # soft reassignment, each example among its own class's clusters
                    scores = self.log_likelihoods(support.detach(), centres)
                    scores = scores.masked_fill(labels[:, None] != owners[None], float("-inf"))
                    responsibilities = scores.softmax(dim=1)
            means = weighted_means(support, responsibilities)
            kept = responsibilities.sum(dim=0) > 1e-3  # the empty clusters go
            means, owners, responsibilities = means[kept], owners[kept], responsibilities[:, kept]
        return means, owners

    def limit(self, class_means: Tensor) -> Tensor:
        """lambda: the squared distance beyond which an example starts a cluster."""
        sigma, dim = self.log_sigma.detach().exp(), class_means.shape[-1]
        rho = class_means.var(dim=0).mean()
        return -2 * sigma * math.log(self.alpha) + dim * sigma * torch.log(1 + rho / sigma)


def weighted_means(x: Tensor, weights: Tensor) -> Tensor:
    """x [S, D], weights [S, C] -> each column's weighted mean of x [C, D] (a column summing to 0 gives 0)."""
    return (weights.T @ x) / weights.sum(dim=0).clamp_min(1e-12)[:, None]
