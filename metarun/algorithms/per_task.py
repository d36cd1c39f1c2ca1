"""The engine of the methods that adapt to each task on its own (the MAML family, Reptile, Meta-LSTM).

A method writes one function of one task (its inner loop, with its own update rule or learned
optimiser) returning a TaskOutput; `run_per_task` runs it over a meta-batch, either one task at a
time with a backward per task, so one task's graph is alive at once, or vectorised with
torch.func.vmap, and hands the trainer one objective whose gradient is the meta-gradient.
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor

from metarun.algorithms.base import StepOutput, gradient_surrogate
from metarun.errors import MetarunError

TaskBatching = Literal["loop", "vmap"]


class TaskOutput(NamedTuple):
    """What one task's function returns (under vmap, each field gains a leading task axis)."""

    objective: Tensor  # [] the meta-objective in training; the query loss at evaluation
    metrics: dict[str, Tensor]  # {name: []}
    predictions: dict[int, Tensor]  # evaluation: the query outputs after the recorded inner steps {k: [N*Q, outputs]}


def check_batching(batching: str) -> TaskBatching:
    if batching not in ("loop", "vmap"):
        raise MetarunError(f"algo.task_batching={batching!r} is not known; use loop, vmap or auto (the device's choice)")
    return batching


def run_per_task(task: Callable[..., TaskOutput], inputs: tuple[Tensor, ...], params: list[Tensor],
                 batching: TaskBatching, train: bool) -> StepOutput:
    """Apply `task` to every task of the meta-batch (inputs [T, ...] each); `params` are the
    trainable parameters the meta-gradient is for."""
    if batching == "vmap":
        out = vmap_tasks(task, inputs)
        return StepOutput(out.objective.mean(), out.metrics, out.predictions or None)
    meta_grads: list[Tensor | None] = [None] * len(params)
    outputs = []
    tasks = inputs[0].shape[0]
    for t in range(tasks):
        out = task(*(x[t] for x in inputs))
        if train and out.objective.requires_grad:
            grads = torch.autograd.grad(out.objective / tasks, params, allow_unused=True)
            meta_grads = [_add(total, g) for total, g in zip(meta_grads, grads)]
        outputs.append(out._replace(objective=out.objective.detach()))
    if torch.is_grad_enabled():
        objective = gradient_surrogate(params, meta_grads)
    else:
        objective = torch.stack([out.objective for out in outputs]).mean()
    predictions = [out.predictions for out in outputs]
    return StepOutput(objective, stack([out.metrics for out in outputs]), stack(predictions) if predictions[0] else None)


def vmap_tasks(task: Callable[..., TaskOutput], inputs: tuple[Tensor, ...]) -> TaskOutput:
    from torch.func import vmap

    return vmap(task, randomness="different")(*inputs)


def stack(per_task: list[dict]) -> dict:
    """Per-task dicts of tensors -> one dict of tensors with a leading task axis."""
    return {key: torch.stack([values[key] for values in per_task]) for key in per_task[0]}


def param_key(name: str) -> str:
    """A parameter's name as a ParameterDict key (no dots): for per-parameter learned values."""
    return name.replace(".", "__")


def _add(total: Tensor | None, g: Tensor | None) -> Tensor | None:
    if g is None:
        return total
    return g if total is None else total + g
