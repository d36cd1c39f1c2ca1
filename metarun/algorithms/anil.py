"""ANIL (Raghu et al. 2020): MAML in which only the head adapts; the body's features are reused."""

from __future__ import annotations

from torch import Tensor, nn

from metarun.algorithms.maml import MAML


class ANIL(MAML):
    """Almost No Inner Loop: the inner loop adapts the linear head on fixed body features,
    while the outer loop trains body and head."""

    @property
    def learner(self) -> nn.Module:
        return self.net[1]

    def features(self, x: Tensor) -> Tensor:
        return self.net[0](x)
