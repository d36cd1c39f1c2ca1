"""What an episode asks of a learner: classify its queries or regress their targets.

The data set chooses the task; algorithms take their loss, output size and metrics from it, and
the trainer takes the metric it selects the best weights by. Neither branches on the task type.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from metarun.compute import full


class Classification:
    """Labels 0..N-1 per episode; cross-entropy; accuracy, the higher the better."""

    name = "classification"
    monitor = "acc"
    higher_is_better = True

    def __init__(self, classes: int | None = None):
        """classes: how many classes the split has (a pre-training head classifies them all)."""
        self.classes = classes

    def outputs(self, ways: int) -> int:
        return ways

    def loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """predictions [M, N], targets [M] -> mean cross-entropy [] (in float32 under any autocast)."""
        return F.cross_entropy(full(predictions), targets)

    def task_losses(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """predictions [T, M, N], targets [T, M] -> each task's mean cross-entropy [T]."""
        per_query = F.cross_entropy(full(predictions).flatten(0, 1), targets.flatten(), reduction="none")
        return per_query.view(targets.shape).mean(dim=1)

    def metrics(self, predictions: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"acc": (predictions.argmax(dim=-1) == targets).float().mean(dim=-1)}


class Regression:
    """Real-valued targets [M, D]; mean squared error, the lower the better."""

    name = "regression"
    monitor = "mse"
    higher_is_better = False

    def __init__(self, target_dim: int = 1):
        self.target_dim = target_dim

    def outputs(self, ways: int) -> int:
        return self.target_dim

    def loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(full(predictions), targets)

    def metrics(self, predictions: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"mse": (full(predictions) - targets).pow(2).mean(dim=(-2, -1))}


Task = Classification | Regression
