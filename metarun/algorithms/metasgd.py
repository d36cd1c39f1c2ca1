"""Meta-SGD (Li et al. 2017): MAML whose inner learning rates, one per weight, are meta-learned."""

from __future__ import annotations

import torch
from torch import nn

from metarun.algorithms.maml import MAML
from metarun.algorithms.per_task import param_key


class MetaSGD(MAML):
    """The inner update is theta - alpha * grad with alpha of theta's shape, learned by the outer
    optimiser with the initial weights (the paper takes one inner step).

    inner_lr_range: draw the initial rates uniformly from [low, high] (the paper's regression
    setting: [0.005, 0.1]); without it every rate starts at inner_lr.
    """

    def __init__(self, *args, inner_lr_range: tuple[float, float] | None = None, **kwargs):
        kwargs["learn_inner_lr"] = True
        super().__init__(*args, **kwargs)
        if inner_lr_range is not None:
            low, high = inner_lr_range
            with torch.no_grad():
                for rates in self.inner_lrs.values():
                    rates.uniform_(low, high)

    def _learned_inner_lrs(self) -> nn.ParameterDict:
        """One rate per weight, shared by every inner step: [1, *weight.shape]."""
        return nn.ParameterDict({
            param_key(name): nn.Parameter(torch.full((1, *p.shape), float(self.inner_lr)))
            for name, p in self.fast_weights().items()
        })
