"""Matching Networks (Vinyals et al. 2016): queries attend over the support set by cosine similarity."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarun.algorithms.base import Algorithm, StepOutput, classification, classify_queries, embed_episodes
from metarun.compute import float32, full
from metarun.episodes import EpisodeBatch
from metarun.errors import MetarunError
from metarun.tasks import Task


class MatchingNet(Algorithm):
    """P(class | query) = sum over support images of softmax(cosine(query, support)) * one-hot label.

    full_context_embeddings: embed the support set with a bidirectional LSTM over it (g) and
    each query with an attention LSTM that reads the support set for `processing_steps` steps
    (f), as the paper's FCE; off by default. temperature divides the similarities before the
    softmax (the paper's 1: no scaling).

    similarity: "cosine", the paper's words, bounds the attention's logits to [-1, 1], so with
    temperature 1 even a perfect match gets at most e / (e + (N-1) / e) of the attention and
    training stalls; "support_cosine" normalises only the support embeddings (the query's length
    scales every logit alike), as the reference codes that reach the paper's Omniglot numbers do
    (AntreasAntoniou/MatchingNetworks, zergylord/oneshot).
    """

    variable_episodes = True  # it reads labels, not shapes

    def __init__(self, backbone: nn.Module, task: Task | None = None, full_context_embeddings: bool = False,
                 processing_steps: int = 5, temperature: float = 1.0, similarity: Similarity = "cosine"):
        super().__init__()
        self.task = classification(task, "matchingnet")
        if similarity not in SIMILARITIES:
            raise MetarunError(f"algo.similarity={similarity!r} is not known; use {' or '.join(SIMILARITIES)}")
        self.backbone = backbone
        self.temperature = temperature
        self.similarity = SIMILARITIES[similarity]
        self.fce = FullContextEmbeddings(backbone.out_features, processing_steps) if full_context_embeddings else None

    def step(self, batch: EpisodeBatch, train: bool) -> StepOutput:
        # Log-probabilities are logits whose softmax is the probabilities themselves.
        return classify_queries(self.log_probabilities(batch), batch.query_y, self.task)

    def log_probabilities(self, batch: EpisodeBatch) -> Tensor:
        support, query = embed_episodes(self.backbone, batch)  # [T, N*K, F], [T, N*Q, F]
        if self.fce is not None:
            support, query = map(full, self.fce(support, query))
        with float32(support.device):  # the attention and its log need the bits
            attention = (self.similarity(query, support) / self.temperature).softmax(dim=-1)  # [T, N*Q, N*K]
            labels = F.one_hot(batch.support_y, batch.ways).to(attention.dtype)  # [T, N*K, N]
            return (attention @ labels).clamp_min(1e-8).log()  # [T, N*Q, N]


class FullContextEmbeddings(nn.Module):
    """g: support embeddings plus a bidirectional LSTM's states over the support set;
    f: an attention LSTM whose state reads the support set for `steps` steps per query.

    The attention LSTM's hidden state is h + r (read-out) rather than their concatenation, a
    common simplification that keeps one feature size throughout.
    """

    def __init__(self, features: int, steps: int):
        super().__init__()
        self.support_lstm = nn.LSTM(features, features, batch_first=True, bidirectional=True)
        self.query_cell = nn.LSTMCell(features, features)
        self.steps = steps

    def forward(self, support: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        """support [T, S, F], query [T, M, F] -> the same shapes, in context."""
        features = support.shape[-1]
        states, _ = self.support_lstm(support)  # [T, S, 2F]
        support = support + states[..., :features] + states[..., features:]
        tasks, queries, _ = query.shape
        flat = query.reshape(tasks * queries, features)
        hidden = torch.zeros_like(flat)
        cell = torch.zeros_like(flat)
        readout = torch.zeros_like(flat)
        for _ in range(self.steps):
            hidden, cell = self.query_cell(flat, (hidden + readout, cell))
            hidden = hidden + flat
            weights = (hidden.view(tasks, queries, features) @ support.transpose(1, 2)).softmax(dim=-1)  # [T, M, S]
            readout = (weights @ support).reshape(tasks * queries, features)
        return support, hidden.view(tasks, queries, features)


def cosine_similarities(a: Tensor, b: Tensor) -> Tensor:
    """cos(a_i, b_j): a [T, M, F], b [T, N, F] -> [T, M, N]."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(1, 2)


def support_cosine_similarities(a: Tensor, b: Tensor) -> Tensor:
    """a_i . b_j / |b_j|: the queries a [T, M, F] against unit support embeddings b [T, N, F] -> [T, M, N]."""
    return a @ F.normalize(b, dim=-1).transpose(1, 2)


Similarity = Literal["cosine", "support_cosine"]
SIMILARITIES = {"cosine": cosine_similarities, "support_cosine": support_cosine_similarities}
