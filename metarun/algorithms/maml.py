"""MAML (Finn et al. 2017) and first-order MAML: inner SGD on a parameter dict, second order by default."""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from metarun.algorithms.base import Algorithm, StepOutput, accuracy, gradient_surrogate
from metarun.episodes import EpisodeBatch
from metarun.errors import MetarunError
from metarun.models import use_batch_statistics

TaskBatching = Literal["loop", "vmap"]
Params = dict[str, Tensor]


class MAML(Algorithm):
    """Model-agnostic meta-learning over `backbone` plus a linear head of `ways` outputs.

    inner_lr, inner_steps: the inner SGD loop on each task's support set during meta-training;
    eval_inner_steps: the steps used at evaluation (often more than in training);
    first_order: drop the second-order terms (FOMAML): the meta-gradient is the query-loss
    gradient at the adapted weights;
    task_batching: "loop" adapts the tasks one by one with a backward per task (least memory,
    fastest on a small CPU); "vmap" vectorises them with torch.func.vmap (fills a GPU).
    """

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int = 3,
        first_order: bool = False,
        task_batching: TaskBatching = "loop",
    ):
        super().__init__()
        if task_batching not in ("loop", "vmap"):
            raise MetarunError(f"algo.task_batching={task_batching!r} is not known; use loop, vmap or auto")
        self.net = nn.Sequential(backbone, nn.Linear(backbone.out_features, ways))
        # Batch statistics per task, in training and evaluation, as the MAML protocol does;
        # running statistics would mix tasks and break the inner loop's functional calls.
        use_batch_statistics(self.net, explicit=task_batching == "vmap")
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.first_order = first_order
        self.task_batching = task_batching

    # Hooks that ANIL overrides: which module the inner loop adapts, and what it reads.
    @property
    def learner(self) -> nn.Module:
        return self.net

    def features(self, x: Tensor) -> Tensor:
        return x

    def step(self, batch: EpisodeBatch, train: bool) -> StepOutput:
        steps = self.inner_steps if train else self.eval_inner_steps
        task = partial(self.task_loss, steps=steps)
        if self.task_batching == "vmap":
            loss, acc = vmap(task, randomness="different")(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
            return StepOutput(loss.mean(), {"loss": loss.detach(), "acc": acc})
        return self._task_loop(task, batch)

    def _task_loop(self, task, batch: EpisodeBatch) -> StepOutput:
        """One task at a time; in training, backward per task so one task's graph is alive at once."""
        params = [p for p in self.parameters() if p.requires_grad]
        meta_grads: list[Tensor | None] = [None] * len(params)
        losses, accs = [], []
        for t in range(batch.tasks):
            loss, acc = task(batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t])
            if loss.requires_grad:
                grads = torch.autograd.grad(loss / batch.tasks, params, allow_unused=True)
                meta_grads = [_add(total, g) for total, g in zip(meta_grads, grads)]
            losses.append(loss.detach())
            accs.append(acc)
        losses = torch.stack(losses)
        objective = gradient_surrogate(params, meta_grads) if torch.is_grad_enabled() else losses.mean()
        return StepOutput(objective, {"loss": losses, "acc": torch.stack(accs)})

    def task_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor, steps: int) -> tuple[Tensor, Tensor]:
        """Adapt on one task's support set, score its query set.

        support_x: [N*K, C, H, W], query_x: [N*Q, C, H, W] -> (query loss [], query accuracy [])
        """
        support, query = self.features(support_x), self.features(query_x)
        adapted = self.adapt(dict(self.learner.named_parameters()), support, support_y, steps)
        logits = functional_call(self.learner, adapted, (query,))
        return F.cross_entropy(logits, query_y), accuracy(logits, query_y).detach()

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int) -> Params:
        """`steps` SGD steps on the support loss; differentiable unless first-order.

        torch.func.grad rather than torch.autograd.grad, so the same code runs under vmap; it
        also computes inner gradients under the trainer's torch.no_grad() at evaluation.
        """
        if self.first_order:
            # Adapt without an outer graph, then pass the query gradient straight through to
            # the initial weights: d(query loss)/d(theta) = gradient at the adapted weights.
            with torch.no_grad():
                adapted = self._sgd(params, x, y, steps)
            return {name: p + (adapted[name] - p).detach() for name, p in params.items()}
        return self._sgd(params, x, y, steps)

    def _sgd(self, params: Params, x: Tensor, y: Tensor, steps: int) -> Params:
        support_grad = grad(self._support_loss)
        for _ in range(steps):
            grads = support_grad(params, x, y)
            params = {name: p - self.inner_lr * grads[name] for name, p in params.items()}
        return params

    def _support_loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(self.learner, params, (x,)), y)


def _add(total: Tensor | None, g: Tensor | None) -> Tensor | None:
    if g is None:
        return total
    return g if total is None else total + g
