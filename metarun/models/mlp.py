"""MLP: fully connected layers with ReLU on flattened inputs."""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Linear + ReLU per hidden width; the algorithm adds its own output layer.

    The MAML paper's sinusoid network (1-40-40-1) is MLP((1,), hidden=[40, 40]) plus the head.
    x: [B, *input_shape] -> [B, out_features]
    """

    def __init__(self, input_shape: Sequence[int], hidden: Sequence[int] = (40, 40)):
        super().__init__()
        widths = [math.prod(input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        self.layers = nn.Sequential(*layers)
        self.out_features = widths[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
