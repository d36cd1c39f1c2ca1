"""Learned inner learning rates of the MAML family: the rate an inner SGD step gives each weight.

A fixed rate needs none of this (MAML's inner_lr); MAML++ learns one rate per parameter tensor and
inner step, Meta-SGD one per weight. Each is a ParameterDict, so the outer optimiser learns the
rates with the initial weights and checkpoints hold them as `inner_lrs.<tensor>`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metarun.algorithms.per_task import param_key
from metarun.errors import MetarunError


class PerStepRates(nn.ParameterDict):
    """MAML++'s LSLR: a rate per parameter tensor and training inner step, each [steps]; an
    evaluation with more steps than training reuses the last step's rate."""

    def __init__(self, weights: dict[str, Tensor], steps: int, lr: float):
        super().__init__({param_key(name): nn.Parameter(torch.full((steps,), float(lr))) for name in weights})

    def rate(self, name: str, k: int) -> Tensor:
        rates = self[param_key(name)]
        return rates[min(k, len(rates) - 1)]


class PerWeightRates(nn.ParameterDict):
    """Meta-SGD's rates: one per weight, of the weight's shape, shared by every inner step."""

    def __init__(self, weights: dict[str, Tensor], lr: float):
        super().__init__({param_key(name): nn.Parameter(torch.full(p.shape, float(lr))) for name, p in weights.items()})

    def rate(self, name: str, k: int) -> Tensor:
        return self[param_key(name)]


def learned_rates(kind: bool | str, weights: dict[str, Tensor], steps: int, lr: float,
                  init_range: tuple[float, float] | None = None) -> PerStepRates | PerWeightRates | None:
    """The rates `algo.learn_inner_lr` asks for (false: none; true or per_step: MAML++'s; per_weight:
    Meta-SGD's), starting at `lr` or drawn uniformly from `init_range`."""
    if kind not in (False, True, "per_step", "per_weight"):
        raise MetarunError(f"algo.learn_inner_lr={kind!r} is not known; use false, per_step (true) or per_weight")
    if kind is False:
        if init_range is not None:
            raise MetarunError("algo.inner_lr_range draws learned rates; set algo.learn_inner_lr=per_weight or per_step")
        return None
    rates = PerWeightRates(weights, lr) if kind == "per_weight" else PerStepRates(weights, steps, lr)
    if init_range is not None:
        low, high = init_range
        with torch.no_grad():
            for values in rates.values():
                values.uniform_(low, high)
    return rates
