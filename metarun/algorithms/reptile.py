"""Reptile (Nichol et al. 2018): adapt without a graph, then move the initialisation toward the
adapted weights."""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value

from metarun.algorithms.base import Algorithm, StepOutput
from metarun.algorithms.maml import Params, recorded, step_metrics
from metarun.algorithms.per_task import TaskBatching, TaskOutput, check_batching, run_per_task
from metarun.compute import full
from metarun.episodes import EpisodeBatch
from metarun.errors import MetarunError
from metarun.models import use_batch_statistics
from metarun.tasks import Classification, Task


class Reptile(Algorithm):
    """Several inner steps of Adam (beta1 = 0, as the paper's code) or SGD on minibatches of each
    task's images, without an outer graph; the meta-gradient is theta minus the adapted weights,
    averaged over the meta-batch, so the outer optimiser is the paper's interpolation: plain SGD
    with the outer step size as its learning rate, annealed linearly (scheduler=linear).

    In training a task's data is every image of the episode (support and query: the paper's
    train_shots = episode.shots + episode.train_queries); at evaluation the support set alone,
    with eval_inner_steps steps of eval_inner_batch_size images, then the queries are scored in
    one batch (the paper's transductive setting, as MAML's evaluation is).

    inner_state: "reset", a fresh inner Adam for every task; "carried", one Adam state carried
    from task to task through training, as the paper's code keeps one optimiser for the whole
    run, with each evaluation starting from a copy of it.
    """

    inner_loop = True

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        task: Task | None = None,
        inner_lr: float = 0.001,
        inner_steps: int = 5,
        eval_inner_steps: int = 50,
        inner_batch_size: int = 10,
        eval_inner_batch_size: int = 5,
        inner_optimizer: Literal["adam", "sgd"] = "adam",
        inner_state: Literal["reset", "carried"] = "reset",
        task_batching: TaskBatching = "loop",
        eval_curve: bool = False,
    ):
        super().__init__()
        check_batching(task_batching)
        if inner_optimizer not in ("adam", "sgd"):
            raise MetarunError(f"algo.inner_optimizer={inner_optimizer!r} is not known; use adam or sgd")
        if inner_state not in ("reset", "carried"):
            raise MetarunError(f"algo.inner_state={inner_state!r} is not known; use reset or carried")
        if inner_state == "carried" and (inner_optimizer != "adam" or task_batching != "loop"):
            raise MetarunError("algo.inner_state=carried carries inner Adam's state from one task to the next: "
                               "use algo.inner_optimizer=adam and algo.task_batching=loop")
        if min(inner_batch_size, eval_inner_batch_size) < 1:
            raise MetarunError("algo.inner_batch_size and algo.eval_inner_batch_size must be at least 1")
        self.task = task or Classification()
        self.net = nn.Sequential(backbone, nn.Linear(backbone.out_features, self.task.outputs(ways)))
        use_batch_statistics(self.net, explicit=task_batching == "vmap")  # per task, as MAML's protocol
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.inner_batch_size = inner_batch_size
        self.eval_inner_batch_size = eval_inner_batch_size
        self.inner_optimizer = inner_optimizer
        self.task_batching = task_batching
        self.eval_curve = eval_curve
        trainable = {name: p for name, p in self.net.named_parameters() if p.requires_grad}
        self.carried = CarriedAdamState(trainable) if inner_state == "carried" else None

    def step(self, batch: EpisodeBatch, train: bool) -> StepOutput:
        if train:
            x = torch.cat([batch.support_x, batch.query_x], dim=1)
            y = torch.cat([batch.support_y, batch.query_y], dim=1)
            steps, batch_size = self.inner_steps, self.inner_batch_size
        else:
            x, y = batch.support_x, batch.support_y
            steps, batch_size = self.eval_inner_steps, self.eval_inner_batch_size
        order = minibatch_order(batch.tasks, x.shape[1], steps, batch_size, x.device)
        task = partial(self.task_loss, steps=steps, train=train)
        params = [p for p in self.parameters() if p.requires_grad]
        return run_per_task(task, (x, y, batch.query_x, batch.query_y, order), params, self.task_batching, train)

    def task_loss(self, x: Tensor, y: Tensor, query_x: Tensor, query_y: Tensor, order: Tensor, steps: int, train: bool) -> TaskOutput:
        """x, y: the task's data [M, ...]; order: image indices per inner step [steps, B].

        Training returns sum(theta * (theta - adapted)) as the objective (its gradient is
        theta - adapted) with the inner minibatches' mean loss and metric; evaluation returns
        the query metrics after the recorded inner steps."""
        initial = {name: p for name, p in self.net.named_parameters() if p.requires_grad}
        fast = {name: p.detach() for name, p in initial.items()}
        moments, start = self.carried.copy() if self.carried else ({}, 0)
        inner, metrics, predictions = [], {}, {}
        for k in range(steps + 1):
            if not train and recorded(k, steps, self.eval_curve):
                out = functional_call(self.net, fast, (query_x,))
                loss = self.task.loss(out, query_y)
                metrics |= step_metrics(self.task, out, query_y, loss, k)
                predictions[k] = full(out)
            if k < steps:
                with torch.no_grad():  # no outer graph: Reptile needs only the adapted weights
                    grads, (batch_loss, batch_out) = grad_and_value(self._minibatch_loss, has_aux=True)(fast, x[order[k]], y[order[k]])
                    fast = self._inner_step(fast, grads, moments, start + k)
                inner.append({"loss": batch_loss, **self.task.metrics(batch_out, y[order[k]])})
        if train and self.carried:
            self.carried.keep(moments, start + steps)
        if train:
            objective = sum((p * (p.detach() - fast[name])).sum() for name, p in initial.items())
            return TaskOutput(objective, {name: torch.stack([m[name] for m in inner]).mean() for name in inner[0]}, {})
        metrics |= {"loss": loss, **self.task.metrics(out, query_y)}
        return TaskOutput(loss, metrics, predictions)

    def _minibatch_loss(self, fast: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The loss, and the predictions as an auxiliary output."""
        out = functional_call(self.net, fast, (x,))
        return self.task.loss(out, y), out.detach()

    def _inner_step(self, fast: Params, grads: Params, moments: dict[str, Params], k: int) -> Params:
        if self.inner_optimizer == "sgd":
            return {name: p - self.inner_lr * grads[name] for name, p in fast.items()}
        return adam_step(fast, grads, moments, k, self.inner_lr)


class CarriedAdamState(nn.Module):
    """Inner Adam's second moments and step count, carried from one task to the next through
    training (algo.inner_state=carried); buffers, so checkpoints hold them and a resumed run goes
    on exactly. With beta1 = 0 the first moment is each step's own gradient: nothing to carry."""

    def __init__(self, params: Params):
        super().__init__()
        self.names = list(params)
        for i, p in enumerate(params.values()):
            self.register_buffer(f"v{i}", torch.zeros_like(p))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def copy(self) -> tuple[dict[str, Params], int]:
        """The moments to start a task from (empty before the first step), and the steps taken."""
        if not self.steps:
            return {}, 0
        # No copy needed: adam_step makes new moments and never writes into these buffers.
        v = {name: getattr(self, f"v{i}") for i, name in enumerate(self.names)}
        return {"m": {name: torch.zeros_like(value) for name, value in v.items()}, "v": v}, int(self.steps)

    def keep(self, moments: dict[str, Params], steps: int) -> None:
        """After a training task: its moments and step count are where the next task starts."""
        if moments:
            for i, name in enumerate(self.names):
                getattr(self, f"v{i}").copy_(moments["v"][name])
        self.steps.fill_(steps)


def adam_step(params: Params, grads: Params, moments: dict[str, Params], k: int, lr: float,
              betas: tuple[float, float] = (0.0, 0.999), eps: float = 1e-8) -> Params:
    """Step k (from 0) of Adam on a parameter dict; `moments` holds "m" and "v" between steps."""
    beta1, beta2 = betas
    m = {n: beta1 * moments["m"][n] + (1 - beta1) * g if moments else (1 - beta1) * g for n, g in grads.items()}
    v = {n: beta2 * moments["v"][n] + (1 - beta2) * g * g if moments else (1 - beta2) * g * g for n, g in grads.items()}
    moments.update(m=m, v=v)
    t = k + 1
    scale = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
    return {n: p - scale * m[n] / (v[n].sqrt() + eps) for n, p in params.items()}


def minibatch_order(tasks: int, size: int, steps: int, batch_size: int, device: torch.device) -> Tensor:
    """Image indices for each task's inner steps [T, steps, B]: passes over the task's `size`
    images in a fresh random order each, cut into minibatches of B = min(batch_size, size)."""
    batch_size = min(batch_size, size)
    passes = math.ceil(steps * batch_size / size)
    order = torch.rand(tasks, passes, size, device=device).argsort(dim=-1).flatten(1)
    return order[:, : steps * batch_size].reshape(tasks, steps, batch_size)
