"""The Meta-LSTM meta-learner (Ravi & Larochelle 2017, "Optimization as a Model for Few-Shot Learning").

An LSTM is the optimiser: its cell state is the learner's flattened parameters, its input gate
the per-coordinate learning rate and its forget gate the weight decay,
    c_t = f_t * c_{t-1} - i_t * grad_t.
It reads each coordinate's preprocessed gradient and the loss, with its weights shared across
coordinates; its initial cell state is the learner's initial parameters, which are meta-learned
with it through the unroll on the query loss.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from metarun.algorithms.base import Algorithm, StepOutput
from metarun.algorithms.per_task import TaskOutput, run_per_task
from metarun.compute import float32, full
from metarun.episodes import EpisodeBatch
from metarun.models import use_batch_statistics
from metarun.tasks import Classification, Task


class MetaLSTM(Algorithm):
    """A learner (backbone + linear head) whose `inner_steps` updates on the support set are
    written by a two-layer coordinate-wise meta-learner: a plain LSTM (`hidden_size`) over the
    preprocessed (gradient, loss) of every coordinate, then the MetaLSTMCell whose cell state is
    the parameters.

    As in the paper, the gradient and loss the meta-learner reads are treated as constants (no
    second derivatives), and batch norm always normalises with the current batch's statistics
    (meta-training and meta-testing alike; no running statistics).
    """

    inner_loop = True

    def __init__(self, backbone: nn.Module, ways: int, task: Task | None = None, inner_steps: int = 12,
                 eval_inner_steps: int | None = None, hidden_size: int = 20):
        super().__init__()
        self.task = task or Classification()
        self.learner = nn.Sequential(backbone, nn.Linear(backbone.out_features, self.task.outputs(ways)))
        use_batch_statistics(self.learner)
        self.shapes = {name: p.shape for name, p in self.learner.named_parameters()}
        self.sizes = [p.numel() for p in self.learner.parameters()]  # the cell state's split into parameters
        self.lstm = nn.LSTMCell(4, hidden_size)  # reads (log|g|, sign g, log|L|, sign L) per coordinate
        self.cell = MetaLSTMCell(hidden_size)
        self.inner_steps = inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps

    def step(self, batch: EpisodeBatch, train: bool) -> StepOutput:
        steps = self.inner_steps if train else self.eval_inner_steps
        params = [p for p in self.parameters() if p.requires_grad]
        inputs = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        return run_per_task(partial(self.task_loss, steps=steps), inputs, params, "loop", train)  # one unroll alive at a time

    def task_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor, steps: int) -> TaskOutput:
        """The query loss after the meta-learner's `steps` updates on the support set."""
        out = self.forward_with(self.adapt(support_x, support_y, steps), query_x)
        loss = self.task.loss(out, query_y)
        metrics = {"loss": loss.detach(), **self.task.metrics(out.detach(), query_y)}
        return TaskOutput(loss, metrics, {steps: full(out.detach())})

    def initial_cell_state(self) -> Tensor:
        """c_0: the learner's parameters flattened into one vector [P]."""
        return torch.cat([p.flatten() for p in self.learner.parameters()])

    def adapt(self, x: Tensor, y: Tensor, steps: int) -> Tensor:
        """The cell state [P] after `steps` updates on (x, y), differentiable with respect to c_0
        and the meta-learner (but not through the gradients it reads)."""
        cell_state = self.initial_cell_state()
        hidden = None
        gates = (torch.zeros_like(cell_state), torch.zeros_like(cell_state))
        support_grad = grad(self._loss, has_aux=True)
        for _ in range(steps):
            with torch.no_grad():
                gradient, loss = support_grad(cell_state.detach(), x, y)
            inputs = torch.cat([preprocess(gradient), preprocess(loss).expand(len(gradient), 2)], dim=1)
            hidden = self.lstm(inputs, hidden)
            cell_state, gates = self.cell(hidden[0], cell_state, gradient, gates)
        return cell_state

    def forward_with(self, cell_state: Tensor, x: Tensor) -> Tensor:
        """The learner's outputs on x with the parameters `cell_state` [P]."""
        chunks = cell_state.split(self.sizes)
        params = {name: chunk.view(shape) for (name, shape), chunk in zip(self.shapes.items(), chunks)}
        return functional_call(self.learner, params, (x,))

    def _loss(self, cell_state: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        loss = self.task.loss(self.forward_with(cell_state, x), y)
        return loss, loss.detach()


class MetaLSTMCell(nn.Module):
    """The update c_t = f_t * c_{t-1} - i_t * grad_t, every coordinate on its own, with
        i_t = sigmoid(W_I [x_t, c_{t-1}, i_{t-1}] + b_I),  f_t = sigmoid(W_F [x_t, c_{t-1}, f_{t-1}] + b_F).

    Initialised as the paper's code: the forget bias in [4, 6] (f near 1: no decay at first) and
    the input bias in [-5, -4] (i near 0.01: a small learning rate)."""

    def __init__(self, input_size: int):
        super().__init__()
        self.input_gate = nn.Linear(input_size + 2, 1)
        self.forget_gate = nn.Linear(input_size + 2, 1)
        for gate, bias in ((self.input_gate, (-5.0, -4.0)), (self.forget_gate, (4.0, 6.0))):
            nn.init.uniform_(gate.weight, -0.01, 0.01)
            nn.init.uniform_(gate.bias, *bias)

    def gates(self, x: Tensor, cell_state: Tensor, previous: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """(i_t, f_t) [P] each, from the first layer's output x [P, H], c_{t-1} [P] and (i_{t-1}, f_{t-1})."""
        state = cell_state.unsqueeze(1)
        i = torch.sigmoid(self.input_gate(torch.cat([x, state, previous[0].unsqueeze(1)], dim=1))).squeeze(1)
        f = torch.sigmoid(self.forget_gate(torch.cat([x, state, previous[1].unsqueeze(1)], dim=1))).squeeze(1)
        return i, f

    def forward(self, x: Tensor, cell_state: Tensor, gradient: Tensor,
                previous: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        # float32: in bf16 a forget gate near 1 could only be 1, 0.998 or 0.996.
        with float32(cell_state.device):
            i, f = self.gates(full(x), cell_state, previous)
        return f * cell_state - i * gradient, (i, f)


def preprocess(x: Tensor, p: float = 10.0) -> Tensor:
    """Andrychowicz et al. (2016)'s scaling of gradients and losses for an LSTM: x [P] (or a
    scalar) -> [P, 2] (or [1, 2]) = (log|x| / p, sign x) where |x| >= e^-p, else (-1, e^p x)."""
    x = x.reshape(-1, 1)
    big = x.abs() >= math.exp(-p)
    magnitude = torch.where(big, x.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(x, -1.0))
    direction = torch.where(big, x.sign(), x * math.exp(p))
    return torch.cat([magnitude, direction], dim=1)
