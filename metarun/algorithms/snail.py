"""SNAIL (Mishra et al. 2018, "A Simple Neural Attentive Meta-Learner").

An episode is a sequence: the support set's (embedding, one-hot label) pairs, then a query with
a zero label; causal temporal convolutions and causal attention read it and the output at the
query's position classifies it. Every layer here is causal, so the support positions' states do
not depend on the query: they are computed once per episode, and each query's state from them
and itself. All queries of an episode go through in one batched pass, and none sees another;
the result is exactly that of one sequence per query.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarun.algorithms.base import Algorithm, StepOutput, classification, classify_queries, embed_episodes
from metarun.algorithms.sequences import check_protocol, classify_sequence, labels_one_step_late, shuffle_support
from metarun.compute import full
from metarun.episodes import EpisodeBatch
from metarun.tasks import Task

States = tuple[Tensor, Tensor]  # (support positions [T, S, C], queries [T, M, C]), each at the last position


class SNAIL(Algorithm):
    """The paper's few-shot network on the backbone's embeddings: AttentionBlock(64, 32),
    TCBlock(S+1, filters), AttentionBlock(256, 128), TCBlock(S+1, filters), AttentionBlock(512, 256),
    then a linear layer to the `ways` classes, with S = ways * shots support positions.

    In training the support set is shuffled in every episode (from the global generator, which
    checkpoints keep), so the network cannot read a label from a position.

    protocol "sequence" (Santoro et al.'s, S = ways * instances positions): each position reads its
    image with the previous position's label, and every position is classified.
    """

    reads_sequences = True

    def __init__(self, backbone: nn.Module, ways: int, shots: int, task: Task | None = None, filters: int = 128,
                 protocol: str = "standard", instances: int = 10):
        super().__init__()
        self.task = classification(task, "snail")
        self.backbone = backbone
        self.ways = ways
        self.sequence, self.instances = check_protocol(protocol), instances
        length = ways * instances if self.sequence else ways * shots + 1
        channels = backbone.out_features + ways
        self.blocks = nn.ModuleList()
        for key_size in (64, 256, 512):
            self.blocks.append(CausalAttention(channels, key_size, key_size // 2))
            if key_size < 512:
                self.blocks.append(TCBlock(self.blocks[-1].out_channels, length, filters))
            channels = self.blocks[-1].out_channels
        self.head = nn.Linear(channels, ways)

    def step(self, batch: EpisodeBatch, train: bool) -> StepOutput:
        if self.sequence:
            _, images = embed_episodes(self.backbone, batch)  # [T, L, F]: the sequence is the query set
            sequence = torch.cat([images, labels_one_step_late(batch.query_y, self.ways, images.dtype)], dim=-1)
            states, _ = self.read(sequence, sequence[:, :0])  # every position, each reading only those before it
            return classify_sequence(full(self.head(states)), batch.query_y, self.task, self.instances, train)
        if train:
            batch = shuffle_support(batch)
        return classify_queries(self.logits(batch), batch.query_y, self.task)

    def logits(self, batch: EpisodeBatch) -> Tensor:
        support, query = embed_episodes(self.backbone, batch)  # [T, N*K, F], [T, N*Q, F]
        labels = F.one_hot(batch.support_y, self.ways).to(support.dtype)
        support = torch.cat([support, labels], dim=-1)
        query = torch.cat([query, query.new_zeros(*query.shape[:2], self.ways)], dim=-1)
        return full(self.head(self.read(support, query)[1]))

    def read(self, support: Tensor, query: Tensor) -> States:
        """Every block over the sequences (support..., query) of each query: support [T, S, C]
        and query [T, M, C] in, the states at the support positions and at each query out."""
        for block in self.blocks:
            support, query = block(support, query)
        return support, query


class CausalAttention(nn.Module):
    """Scaled dot-product attention of each position over itself and the positions before it;
    the read values are appended to the input channels."""

    def __init__(self, channels: int, key_size: int, value_size: int):
        super().__init__()
        self.query = nn.Linear(channels, key_size)
        self.key = nn.Linear(channels, key_size)
        self.value = nn.Linear(channels, value_size)
        self.scale = math.sqrt(key_size)
        self.out_channels = channels + value_size

    def forward(self, support: Tensor, query: Tensor) -> States:
        keys, values = self.key(support), self.value(support)  # [T, S, K], [T, S, V]
        length = support.shape[1]
        logits = self.query(support) @ keys.transpose(1, 2) / self.scale  # [T, S, S]
        later = torch.ones(length, length, dtype=torch.bool, device=support.device).triu(1)
        read_support = logits.masked_fill(later, float("-inf")).softmax(dim=-1) @ values
        # A query at position S attends to every support position and to itself.
        asked = self.query(query)  # [T, M, K]
        to_support = asked @ keys.transpose(1, 2) / self.scale  # [T, M, S]
        to_itself = (asked * self.key(query)).sum(dim=-1, keepdim=True) / self.scale  # [T, M, 1]
        weights = torch.cat([to_support, to_itself], dim=-1).softmax(dim=-1)
        read_query = weights[..., :length] @ values + weights[..., length:] * self.value(query)
        return torch.cat([support, read_support], dim=-1), torch.cat([query, read_query], dim=-1)


class DenseBlock(nn.Module):
    """A gated (tanh * sigmoid) causal convolution of kernel 2 and `dilation`: position t reads
    t - dilation and t; its `filters` outputs are appended to the input channels."""

    def __init__(self, channels: int, filters: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, 2 * filters, kernel_size=2, dilation=dilation)
        self.dilation = dilation
        self.out_channels = channels + filters

    def forward(self, support: Tensor, query: Tensor) -> States:
        length = support.shape[1]
        padded = F.pad(support.transpose(1, 2), (self.dilation, 0))  # zeros before the sequence
        convolved_support = self.conv(padded).transpose(1, 2)  # [T, S, 2F]
        # The query at position S: tap 1 reads itself, tap 0 the support position S - dilation.
        weight = self.conv.weight  # [2F, C, 2]
        earlier = support[:, length - self.dilation] if length >= self.dilation else support.new_zeros(support[:, 0].shape)
        convolved_query = query @ weight[:, :, 1].T + (earlier @ weight[:, :, 0].T + self.conv.bias).unsqueeze(1)
        return (torch.cat([support, gated(convolved_support)], dim=-1),
                torch.cat([query, gated(convolved_query)], dim=-1))


class TCBlock(nn.Module):
    """Dense blocks of dilation 2, 4, 8, ... until the receptive field covers `length` positions."""

    def __init__(self, channels: int, length: int, filters: int):
        super().__init__()
        blocks = []
        for i in range(1, math.ceil(math.log2(length)) + 1):
            blocks.append(DenseBlock(channels, filters, dilation=2**i))
            channels = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = channels

    def forward(self, support: Tensor, query: Tensor) -> States:
        for block in self.blocks:
            support, query = block(support, query)
        return support, query


def gated(x: Tensor) -> Tensor:
    """WaveNet's gated activation: the first half of the channels through tanh times the second through a sigmoid."""
    filters, gates = x.chunk(2, dim=-1)
    return torch.tanh(filters) * torch.sigmoid(gates)
