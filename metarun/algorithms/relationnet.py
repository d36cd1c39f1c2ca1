"""Relation Networks (Sung et al. 2018): a learned module scores each (query, class) pair."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarun.algorithms.base import Algorithm, StepOutput, classification, embed_episodes
from metarun.compute import full
from metarun.episodes import EpisodeBatch
from metarun.errors import MetarunError
from metarun.tasks import Task


class RelationNet(Algorithm):
    """Class feature maps are the sums of their support embeddings; each is concatenated with a
    query's feature map along the channels and scored in [0, 1] by the relation module.

    loss: "mse" regresses the scores on one-hot targets (the paper); "ce" treats the
    pre-sigmoid scores as logits. The backbone must keep its spatial map (`out_shape`), as
    backbone=relationnet_embedding does.
    """

    def __init__(self, backbone: nn.Module, task: Task | None = None, loss: Literal["mse", "ce"] = "mse",
                 filters: int = 64, hidden: int = 8):
        super().__init__()
        self.task = classification(task, "relationnet")
        if loss not in ("mse", "ce"):
            raise MetarunError(f"algo.loss={loss!r} is not known; use mse (the paper) or ce")
        if len(getattr(backbone, "out_shape", ())) != 3:
            raise MetarunError("algo=relationnet compares feature maps; use backbone=relationnet_embedding (or conv4)")
        self.backbone = backbone
        self.loss = loss
        self.relation = RelationModule(backbone.out_shape, filters, hidden)

    def step(self, batch: EpisodeBatch, train: bool) -> StepOutput:
        logits = self.relation_logits(batch)  # [T, N*Q, N], before the sigmoid
        if self.loss == "mse":
            targets = F.one_hot(batch.query_y, batch.ways).to(logits.dtype)
            loss = (logits.sigmoid() - targets).pow(2).sum(-1).mean(-1)  # [T]
        else:
            loss = F.cross_entropy(logits.transpose(1, 2), batch.query_y, reduction="none").mean(-1)
        metrics = {"loss": loss.detach(), **self.task.metrics(logits.detach(), batch.query_y)}
        return StepOutput(loss.mean(), metrics, {0: logits.detach()})

    def relation_logits(self, batch: EpisodeBatch) -> Tensor:
        tasks, n_query, ways = batch.tasks, batch.query_y.shape[1], batch.ways
        support, query = embed_episodes(self.backbone, batch)  # flattened maps [T, S, C*h*w], [T, M, C*h*w]
        query = query.view(tasks, n_query, *self.backbone.out_shape)
        one_hot = F.one_hot(batch.support_y, ways).to(support.dtype)  # [T, S, N]
        classes = (one_hot.transpose(1, 2) @ support).view(tasks, ways, *self.backbone.out_shape)  # sums over shots
        pairs = torch.cat([
            query[:, :, None].expand(-1, -1, ways, -1, -1, -1),
            classes[:, None].expand(-1, n_query, -1, -1, -1, -1),
        ], dim=3)  # [T, M, N, 2C, h, w]
        return full(self.relation(pairs.flatten(0, 2))).view(tasks, n_query, ways)  # float32: the MSE needs the bits


class RelationModule(nn.Module):
    """Two conv blocks (conv3x3, batch norm, ReLU, max-pool 2) on a pair's 2C channels, then
    a ReLU layer of `hidden` units and one output: the relation score's logit (the paper's
    Omniglot module: 64x5x5 pairs pooled to 1x1, 64 -> 8 -> 1)."""

    def __init__(self, in_shape: tuple[int, int, int], filters: int, hidden: int):
        super().__init__()
        channels, height, width = in_shape

        # The paper's code pools 5x5 maps to 1x1 (floor); ceil keeps a 1x1 map from maps under 4x4.
        ceil = min(height, width) < 4

        def block(c_in: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, filters, 3, padding=1), nn.BatchNorm2d(filters), nn.ReLU(inplace=True),
                                 nn.MaxPool2d(2, ceil_mode=ceil))

        self.blocks = nn.Sequential(block(2 * channels), block(filters))
        pooled = (lambda s: -(-s // 4)) if ceil else (lambda s: s // 4)
        cells = pooled(height) * pooled(width)
        self.score = nn.Sequential(nn.Flatten(), nn.Linear(filters * cells, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, pairs: Tensor) -> Tensor:  # [P, 2C, h, w] -> [P]
        return self.score(self.blocks(pairs)).squeeze(-1)
