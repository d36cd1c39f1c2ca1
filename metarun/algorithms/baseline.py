"""Baseline and Baseline++ (Chen et al. 2019, "A Closer Look at Few-shot Classification"):
pre-train a classifier of every training class, then fit a new head per test episode."""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarun.algorithms.base import Algorithm, StepOutput, classification, embed_episodes
from metarun.compute import float32, full
from metarun.episodes import EpisodeBatch
from metarun.errors import MetarunError
from metarun.tasks import Task

Head = Literal["linear", "cosine"]


class Baseline(Algorithm):
    """Meta-training is ordinary classification of every image of an episode by its global class
    id (the episode's `classes`). At evaluation the backbone is frozen and a new head is fitted
    on each episode's support features: linear (Baseline) or scaled cosine (Baseline++), with
    `finetune_epochs` passes of SGD over the support set in minibatches of `finetune_batch_size`
    (momentum 0.9, dampening 0.9, weight decay 1e-3: the paper's code).

    finetune: "head" fits only the new head; "all" also fine-tunes a copy of the backbone on each
    episode's support images, as BSCD-FSL's fine-tuning baseline (Guo et al. 2020) does for
    cross-domain tests (batch norm keeps its running statistics; much slower: a backward through
    the backbone per minibatch and episode).
    """

    variable_episodes = True  # it reads labels, not shapes

    def __init__(self, backbone: nn.Module, task: Task | None = None, head: Head = "linear", finetune_epochs: int = 100,
                 finetune_lr: float = 0.01, finetune_batch_size: int = 4, scale: float = 10.0,
                 finetune: Literal["head", "all"] = "head"):
        super().__init__()
        task = classification(task, "baseline")
        if head not in ("linear", "cosine"):
            raise MetarunError(f"algo.head={head!r} is not known; use linear (Baseline) or cosine (Baseline++)")
        if finetune not in ("head", "all"):
            raise MetarunError(f"algo.finetune={finetune!r} is not known; use head or all (the backbone too)")
        self.finetune_all = finetune == "all"
        if not task.classes:
            raise MetarunError("algo=baseline needs the number of training classes, which this data set does not give")
        self.task = task
        self.backbone = backbone
        self.head = head
        self.classifier = EpisodeHeads(head, backbone.out_features, task.classes, scale)
        self.finetune_epochs = finetune_epochs
        self.finetune_lr = finetune_lr
        self.finetune_batch_size = finetune_batch_size
        self.scale = scale

    def step(self, batch: EpisodeBatch, train: bool) -> StepOutput:
        if train:
            return self._pretrain(batch)
        logits = self._finetuned_logits(batch) if self.finetune_all else self._head_logits(batch)  # [T, N*Q, N]
        loss = F.cross_entropy(logits.transpose(1, 2), batch.query_y, reduction="none").mean(1)
        return StepOutput(loss.mean(), {"loss": loss, **self.task.metrics(logits, batch.query_y)}, {0: logits})

    def _head_logits(self, batch: EpisodeBatch) -> Tensor:
        with torch.no_grad():  # the backbone stays as meta-training left it
            support, query = self._embed(batch)
        # The trainer evaluates under no_grad; the new heads still learn, on float32 features
        # (the heads are tiny: bf16 would save nothing and round their many small updates).
        with torch.enable_grad(), float32(support.device):
            heads = self.finetune(support.detach(), batch.support_y, batch.ways)
        with torch.no_grad(), float32(support.device):
            return heads(query)

    def _finetuned_logits(self, batch: EpisodeBatch) -> Tensor:
        """finetune=all: per episode, a copy of the backbone and a new head trained together on its
        support images; the algorithm's own backbone is never touched."""
        generator = torch.Generator().manual_seed(0)  # as `finetune`: each evaluation repeats exactly
        logits = []
        for t in range(batch.tasks):
            backbone = copy.deepcopy(self.backbone)
            head = EpisodeHeads(self.head, backbone.out_features, batch.ways, self.scale, generator=generator)
            head = head.to(batch.support_x.device)
            parameters = [p for p in [*backbone.parameters(), *head.parameters()] if p.requires_grad]
            optimizer = torch.optim.SGD(parameters, lr=self.finetune_lr, momentum=0.9, dampening=0.9, weight_decay=1e-3)
            images, labels = batch.support_x[t], batch.support_y[t]
            with torch.enable_grad():
                for _ in range(self.finetune_epochs):
                    order = torch.rand(len(labels), generator=generator).argsort().to(labels.device)
                    for chosen in order.split(self.finetune_batch_size):
                        scores = head(full(backbone(images[chosen]))[None])[0]
                        optimizer.zero_grad(set_to_none=True)
                        F.cross_entropy(scores, labels[chosen]).backward()
                        optimizer.step()
            with torch.no_grad():
                logits.append(head(full(backbone(batch.query_x[t]))[None])[0])
        return torch.stack(logits)

    def _pretrain(self, batch: EpisodeBatch) -> StepOutput:
        """Cross-entropy over every training class for each image of the meta-batch."""
        support, query = self._embed(batch)
        features = torch.cat([support, query], dim=1)  # [T, M, F]
        labels = torch.cat([batch.support_y, batch.query_y], dim=1)
        global_labels = batch.classes.gather(1, labels)  # episode-local 0..N-1 -> the split's class ids
        logits = full(self.classifier(features))  # [T, M, C]
        loss = F.cross_entropy(logits.transpose(1, 2), global_labels, reduction="none").mean(1)  # [T]
        return StepOutput(loss.mean(), {"loss": loss.detach(), **self.task.metrics(logits.detach(), global_labels)})

    def _embed(self, batch: EpisodeBatch) -> tuple[Tensor, Tensor]:
        return embed_episodes(self.backbone, batch)

    def finetune(self, support: Tensor, labels: Tensor, ways: int) -> nn.Module:
        """A new head per episode, fitted to support features [T, S, F]; the episodes' losses are
        summed, so each head gets exactly its own episode's gradient."""
        tasks, size, features = support.shape
        # Its own generator: an episode's score must not depend on what drew from the global one before
        # (training's steps, a memory probe), so metarun-eval repeats a run's test exactly.
        generator = torch.Generator().manual_seed(0)
        heads = EpisodeHeads(self.head, features, ways, self.scale, episodes=tasks, generator=generator)
        heads = heads.to(support.device, support.dtype)
        optimizer = torch.optim.SGD(heads.parameters(), lr=self.finetune_lr, momentum=0.9, dampening=0.9, weight_decay=1e-3)
        for _ in range(self.finetune_epochs):
            order = torch.rand(tasks, size, generator=generator).argsort(dim=1).to(support.device)  # [T, S]: a fresh pass per epoch
            for chosen in order.split(self.finetune_batch_size, dim=1):
                x = support.gather(1, chosen[..., None].expand(-1, -1, features))
                loss = F.cross_entropy(heads(x).transpose(1, 2), labels.gather(1, chosen), reduction="none").mean(1).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return heads


class EpisodeHeads(nn.Module):
    """One classifier per episode: features [T, M, F] -> logits [T, M, N].

    linear: W f + b. cosine: scale * cos(f, w_c), the scale learned (Baseline++).
    """

    def __init__(self, kind: Head, features: int, classes: int, scale: float, episodes: int = 1,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.kind = kind
        bound = 1 / features**0.5
        self.weight = nn.Parameter(torch.empty(episodes, classes, features).uniform_(-bound, bound, generator=generator))
        if kind == "linear":
            self.bias = nn.Parameter(torch.zeros(episodes, classes))
        else:
            self.log_scale = nn.Parameter(torch.tensor(float(scale)).log())

    def forward(self, features: Tensor) -> Tensor:
        if self.kind == "linear":
            return features @ self.weight.transpose(1, 2) + self.bias[:, None, :]
        cosines = F.normalize(features, dim=-1) @ F.normalize(self.weight, dim=-1).transpose(1, 2)
        return self.log_scale.exp() * cosines
