"""The MAML paper's pre-trained baseline: one network fitted to every task's points jointly,
then fine-tuned on each test task's support set with the same inner SGD steps as MAML."""

from __future__ import annotations

import torch
from torch import Tensor

from metarun.algorithms.maml import MAML
from metarun.algorithms.per_task import TaskOutput
from metarun.errors import MetarunError
from metarun.tasks import Regression


class Pretrain(MAML):
    """Training is plain regression on support and query points together; evaluation adapts with
    `eval_inner_steps` SGD steps of `inner_lr`, exactly as MAML's evaluation does.

    Regression only: episode labels are per episode, so a joint classifier would need global
    class ids (the Baseline methods do that).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.task, Regression):
            raise MetarunError("algo=pretrain fits one network to the points of every task, which needs a regression "
                               f"data set (data=sinusoid); this one is a {self.task.name} task")

    def task_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor, steps: int, train: bool,
                  ways: int | None = None) -> TaskOutput:
        if not train:
            return super().task_loss(support_x, support_y, query_x, query_y, steps, train, ways)
        x, y = torch.cat([support_x, query_x]), torch.cat([support_y, query_y])
        out = self.net(self.features(x))
        loss = self.task.loss(out, y)
        return TaskOutput(loss, {"loss": loss.detach(), **self.task.metrics(out.detach(), y)}, {})
