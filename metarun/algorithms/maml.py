"""MAML (Finn et al. 2017), first-order MAML, ANIL (Raghu et al. 2020), Meta-SGD (Li et al. 2017)
and the MAML++ options (Antoniou et al. 2019): one inner loop, varied by what it adapts and how.

The inner loop is SGD on a dict of the learner's parameters through torch.func.grad, so one
task function runs per task or under torch.func.vmap; second order unless first order.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from metarun.algorithms.base import Algorithm, StepOutput
from metarun.algorithms.inner_rates import learned_rates
from metarun.algorithms.per_task import TaskBatching, TaskOutput, check_batching, param_key, run_per_task
from metarun.compute import full
from metarun.episodes import EpisodeBatch
from metarun.errors import MetarunError
from metarun.models import use_batch_statistics
from metarun.tasks import Classification, Task

Params = dict[str, Tensor]


class MAML(Algorithm):
    """Model-agnostic meta-learning over `backbone` plus a linear head (one output per way, or
    the regression target's size).

    inner_lr, inner_steps: the inner SGD loop on each task's support set during meta-training;
    eval_inner_steps: the steps used at evaluation (often more than in training);
    first_order: drop the second-order terms (FOMAML): the meta-gradient is the query-loss
    gradient at the adapted weights;
    task_batching: "loop" adapts the tasks one by one with a backward per task (least memory,
    fastest on a small CPU); "vmap" vectorises them with torch.func.vmap (fills a GPU);
    eval_curve: at evaluation also score the queries after each of the first ten inner steps
    (metrics "acc@k", a forward pass of the queries per step), not only after the last.

    adapt: "all" adapts every weight; "head" only the linear head on the body's fixed features
    (ANIL, Almost No Inner Loop: the outer loop still trains body and head);
    learn_inner_lr: false keeps inner_lr; "per_weight" learns a rate for every weight, shared by the
    steps (Meta-SGD); true or "per_step" one per parameter tensor and inner step (MAML++);
    inner_lr_range: draw the initial learned rates uniformly from [low, high] (Meta-SGD's regression
    setting: [0.005, 0.1]) instead of starting them all at inner_lr.

    MAML++ options, each usable alone (cosine annealing of the outer rate is `scheduler=cosine`):
    multi_step_loss_steps > 0: the objective weighs the query loss after every inner step,
    annealed toward the last step over this many meta-steps (then the last step alone);
    per_step_bn: batch-norm weights and biases per inner step, learned in the outer loop only;
    first_order_steps > 0: first order for this many meta-steps, then second order.

    inner_loss: how the support loss is reduced. "mean" (the default; learn2learn's and most
    re-implementations') averages it over the support set; "class_sum" sums the per-class means, as
    cbfinn/maml's code does (the cross-entropy divided by the shots, summed by tf.gradients), so an
    inner step is `ways` times the mean's: inner_lr 0.4 at 5-way is a step of 2.0 on the mean loss.
    """

    inner_loop = True
    variable_episodes = True  # a head of episode.max_ways outputs; an episode of N ways scores the first N

    def __init__(
        self,
        backbone: nn.Module,
        ways: int,
        task: Task | None = None,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int = 3,
        first_order: bool = False,
        task_batching: TaskBatching = "loop",
        eval_curve: bool = False,
        multi_step_loss_steps: int = 0,
        multi_step_loss_floor: float = 0.03,
        adapt: Literal["all", "head"] = "all",
        learn_inner_lr: bool | Literal["per_step", "per_weight"] = False,
        inner_lr_range: tuple[float, float] | None = None,
        per_step_bn: bool = False,
        first_order_steps: int = 0,
        inner_loss: Literal["mean", "class_sum"] = "mean",
    ):
        super().__init__()
        check_batching(task_batching)
        if inner_loss not in ("mean", "class_sum"):
            raise MetarunError(f"algo.inner_loss={inner_loss!r} is not known; use mean or class_sum")
        if adapt not in ("all", "head"):
            raise MetarunError(f"algo.adapt={adapt!r} is not known; use all (MAML) or head (ANIL)")
        self.head_only = adapt == "head"
        self.task = task or Classification()
        self.net = nn.Sequential(backbone, nn.Linear(backbone.out_features, self.task.outputs(ways)))
        # Batch statistics per task, in training and evaluation, as the MAML protocol does;
        # running statistics would mix tasks and break the inner loop's functional calls.
        use_batch_statistics(self.net, explicit=task_batching == "vmap")
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.first_order = first_order
        self.task_batching = task_batching
        self.eval_curve = eval_curve
        self.multi_step_loss_steps = multi_step_loss_steps
        self.multi_step_loss_floor = multi_step_loss_floor
        self.first_order_steps = first_order_steps
        self.inner_loss_scale = float(ways) if inner_loss == "class_sum" and isinstance(self.task, Classification) else 1.0
        # Meta-steps taken: the clock of the MAML++ annealing, saved and restored with the weights.
        self.register_buffer("meta_steps", torch.zeros((), dtype=torch.long))
        self._norm_names: list[str] = []  # the batch-norm weights per_step_bn keeps per step
        self.step_norms = self._per_step_norms() if per_step_bn else None
        self.inner_lrs = learned_rates(learn_inner_lr, self.fast_weights(), inner_steps, inner_lr, inner_lr_range)

    @property
    def learner(self) -> nn.Module:
        """The module the inner loop adapts: the whole net, or (adapt=head) only its head."""
        return self.net[1] if self.head_only else self.net

    def features(self, x: Tensor) -> Tensor:
        """What the learner reads: the inputs, or (adapt=head) the body's features of them."""
        return self.net[0](x) if self.head_only else x

    def step(self, batch: EpisodeBatch, train: bool) -> StepOutput:
        steps = self.inner_steps if train else self.eval_inner_steps
        ways = batch.ways if batch.classes is not None else None  # episode=variable: fewer than the head's outputs
        task = partial(self.task_loss, steps=steps, train=train, ways=ways)
        return self.run_tasks(task, (batch.support_x, batch.support_y, batch.query_x, batch.query_y), train)

    def end_meta_step(self) -> None:
        self.meta_steps += 1

    def run_tasks(self, task: Callable[..., TaskOutput], inputs: tuple[Tensor, ...], train: bool) -> StepOutput:
        """Apply `task` to every task of the meta-batch (inputs [T, ...] each), batched or one by one."""
        params = [p for p in self.parameters() if p.requires_grad]
        return run_per_task(task, inputs, params, self.task_batching, train)

    def task_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor, steps: int, train: bool,
                  ways: int | None = None) -> TaskOutput:
        """Adapt on one task's support set, score its query set.

        support_x: [N*K, ...], query_x: [N*Q, ...]. The objective is the query loss after
        `steps` inner steps, or the multi-step mix; at evaluation the metrics are recorded after
        the last step ("acc@<steps>") and, with eval_curve, after the first ten. `ways`: the
        episode's classes, scored by the head's first `ways` outputs (the rest masked out).
        """
        support, query = self.features(support_x), self.features(query_x)
        weights = self.query_loss_weights(steps) if train else None
        first_order = self.first_order or (train and int(self.meta_steps) < self.first_order_steps)
        fast = self.fast_weights()
        objective, metrics, predictions = 0.0, {}, {}
        for k in range(steps + 1):
            scored = weights[k] > 0 if train else self.recorded(k, steps)
            if scored:
                out = self.forward_at(fast, query, k, ways)
                loss = self.task.loss(out, query_y)
                if train:
                    objective = objective + weights[k] * loss
                else:
                    metrics |= step_metrics(self.task, out, query_y, loss, k)
                    predictions[k] = full(out.detach())
            if k < steps:
                fast = self.inner_update(fast, support, support_y, k, first_order, ways)
        metrics |= {"loss": loss.detach(), **self.task.metrics(out.detach(), query_y)}
        if train:
            return TaskOutput(objective, metrics, {})
        return TaskOutput(loss.detach(), metrics, predictions)

    def recorded(self, k: int, steps: int) -> bool:
        return recorded(k, steps, self.eval_curve)

    def query_loss_weights(self, steps: int) -> list[float]:
        """The weight of the query loss after k = 0..steps inner steps in the training objective."""
        if self.multi_step_loss_steps and steps > 1:
            progress = int(self.meta_steps) / self.multi_step_loss_steps
            return [0.0, *multi_step_weights(steps, progress, self.multi_step_loss_floor)]
        return [0.0] * steps + [1.0]

    def fast_weights(self) -> Params:
        """The parameters the inner loop adapts, at their meta-learned initial values."""
        return {name: p for name, p in self.learner.named_parameters() if p.requires_grad}

    def forward_at(self, fast: Params, x: Tensor, k: int, ways: int | None = None) -> Tensor:
        """The learner with the fast weights, after k inner steps (per-step batch norm reads k);
        with `ways`, only the scores of the head's first `ways` classes."""
        norms = {}
        if self.step_norms is not None:
            norms = {name: self.step_norms[param_key(name)][min(k, self.inner_steps)] for name in self._norm_names}
        out = functional_call(self.learner, {**fast, **norms}, (x,))
        return out if ways is None else out[..., :ways]

    def inner_update(self, fast: Params, x: Tensor, y: Tensor, k: int, first_order: bool, ways: int | None = None) -> Params:
        """One SGD step on the support loss. First order: the gradient is a constant, computed
        without an outer graph, so the query gradient passes straight through to the initial
        weights. torch.func.grad rather than torch.autograd.grad: the same code runs under vmap,
        and it computes inner gradients under the trainer's torch.no_grad() at evaluation."""
        support_grad = grad(partial(self._support_loss, k=k, ways=ways))
        if first_order:
            with torch.no_grad():
                grads = support_grad(fast, x, y)
        else:
            grads = support_grad(fast, x, y)
        return {name: p - self.inner_rate(name, k) * grads[name] for name, p in fast.items()}

    def inner_rate(self, name: str, k: int) -> Tensor | float:
        return self.inner_lr if self.inner_lrs is None else self.inner_lrs.rate(name, k)

    def adapt(self, fast: Params, x: Tensor, y: Tensor, steps: int, ways: int | None = None) -> Params:
        """`steps` inner updates on (x, y), differentiable unless first order."""
        for k in range(steps):
            fast = self.inner_update(fast, x, y, k, self.first_order, ways)
        return fast

    def _support_loss(self, fast: Params, x: Tensor, y: Tensor, k: int = 0, ways: int | None = None) -> Tensor:
        return self.task.loss(self.forward_at(fast, x, k, ways), y) * self.inner_loss_scale

    def _per_step_norms(self) -> nn.ParameterDict:
        """MAML++: a copy of every batch-norm weight and bias for each inner step 0..inner_steps.

        The inner loop no longer adapts them (as in the paper), so the originals are frozen."""
        norm_modules = {name for name, m in self.learner.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        self._norm_names = [n for n, _ in self.learner.named_parameters() if n.rpartition(".")[0] in norm_modules]
        params = dict(self.learner.named_parameters())
        copies = {}
        for name in self._norm_names:
            copies[param_key(name)] = nn.Parameter(params[name].detach().repeat(self.inner_steps + 1, 1))
            params[name].requires_grad_(False)
        return nn.ParameterDict(copies)


def recorded(k: int, steps: int, curve: bool) -> bool:
    """Whether evaluation scores the queries after k of `steps` inner steps (with `curve`, after each of the first ten)."""
    return k == steps or (curve and k <= 10)


def multi_step_weights(steps: int, progress: float, floor: float = 0.03) -> list[float]:
    """MAML++'s weights of the query losses after inner steps 1..steps; they sum to 1.

    Uniform at progress 0, moving linearly toward the last step while the earlier ones keep at
    least floor/steps; from progress 1 on, the last step alone.
    """
    if progress >= 1:
        return [0.0] * (steps - 1) + [1.0]
    early = max((1 - progress) / steps, floor / steps)
    last = min((1 + progress * (steps - 1)) / steps, 1 - (steps - 1) * floor / steps)
    return [early] * (steps - 1) + [last]


def step_metrics(task: Task, out: Tensor, targets: Tensor, loss: Tensor, k: int) -> dict[str, Tensor]:
    """The query metrics after k inner steps, named "loss@k", "acc@k" (or "mse@k")."""
    metrics = {"loss": loss, **task.metrics(out, targets)}
    return {f"{name}@{k}": value.detach() for name, value in metrics.items()}
