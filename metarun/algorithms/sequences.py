"""What the sequence learners (MANN, the LSTM baseline, SNAIL) share: reading an episode as a
sequence of (image, label) steps, and scoring Santoro et al.'s sequence protocol by instance.

Under episode.protocol=sequence an episode has no support set: its queries are one shuffled
sequence in which the label of step t is fed with the image of step t + 1, and every step is
predicted (metarun.episodes.EpisodeSpec.sequence).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metarun.algorithms.base import StepOutput, classify_queries
from metarun.episodes import EpisodeBatch
from metarun.errors import MetarunError
from metarun.tasks import Classification

PROTOCOLS = ("standard", "sequence", "variable")


def check_protocol(protocol: str) -> bool:
    """Whether `protocol` (episode.protocol) is the sequence protocol; one line if it is not known."""
    if protocol not in PROTOCOLS:
        raise MetarunError(f"episode.protocol={protocol!r} is not known; use standard, sequence or variable")
    return protocol == "sequence"


def labels_one_step_late(labels: Tensor, ways: int, dtype: torch.dtype) -> Tensor:
    """One-hot labels [T, L] -> [T, L, N] in which step t holds the label of step t - 1 (zeros at
    t = 0): what a sequence learner reads beside each image, never its own label."""
    one_hot = F.one_hot(labels, ways).to(dtype)
    return torch.cat([torch.zeros_like(one_hot[:, :1]), one_hot[:, :-1]], dim=1)


def presentations(labels: Tensor) -> Tensor:
    """For each step of sequences [T, L], the how-manieth time its class appears there (1, 2, ...)."""
    same = labels.unsqueeze(2) == labels.unsqueeze(1)  # [T, L, L]: step s has the class of step t
    return torch.tril(same).sum(dim=2)


def accuracy_by_instance(scores: Tensor, labels: Tensor, instances: int) -> dict[str, Tensor]:
    """Santoro et al.'s table: per task [T], the accuracy at the k-th presentation of a class,
    as "acc@instance=k" for k = 1..instances (results.summarize makes it "acc_by_instance")."""
    correct = (scores.argmax(dim=-1) == labels).float()
    shown = presentations(labels)
    metrics = {}
    for k in range(1, instances + 1):
        at_k = (shown == k).float()
        metrics[f"acc@instance={k}"] = (correct * at_k).sum(dim=1) / at_k.sum(dim=1).clamp(min=1)
    return metrics


def classify_sequence(scores: Tensor, labels: Tensor, task: Classification, instances: int, train: bool) -> StepOutput:
    """The step output of a sequence protocol episode: every step's scores [T, L, N] against its
    label [T, L], and at evaluation the accuracy by instance too."""
    output = classify_queries(scores, labels, task)
    if not train:
        output.metrics |= accuracy_by_instance(scores.detach(), labels, instances)
    return output


def shuffle_support(batch: EpisodeBatch) -> EpisodeBatch:
    """The same episodes with each one's support set in a random order (from the global generator,
    which checkpoints keep), so that a sequence learner cannot read a label from a position."""
    order = torch.argsort(torch.rand(batch.support_y.shape), dim=1).to(batch.support_y.device)  # [T, S]
    image_order = order.view(*order.shape, *[1] * (batch.support_x.dim() - 2)).expand_as(batch.support_x)
    return EpisodeBatch(batch.support_x.gather(1, image_order), batch.support_y.gather(1, order),
                        batch.query_x, batch.query_y, batch.classes)
