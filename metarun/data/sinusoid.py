"""Sinusoid regression (Finn et al. 2017, section 5.1): y = A sin(x - phase), K points per task."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from metarun.data.split import DataSplits
from metarun.episodes import EpisodeSpec, Examples
from metarun.tasks import Regression


@dataclass(frozen=True)
class SinusoidTasks:
    """An endless source of sine curves: amplitude, phase and inputs uniform in their ranges.

    A task's K support and Q query points lie on the same curve (K = episode.shots,
    Q = episode.queries); `ways` does not apply.
    """

    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    device: torch.device = torch.device("cpu")
    task = Regression(target_dim=1)
    input_shape = (1,)

    def draw(self, spec: EpisodeSpec, episodes: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Amplitudes [E], phases [E] and inputs [E, K+Q, 1]."""
        amplitude = _uniform(self.amplitude, (episodes,), generator)
        phase = _uniform(self.phase, (episodes,), generator)
        x = _uniform(self.x_range, (episodes, spec.images_per_class, 1), generator)
        return amplitude, phase, x

    def examples(self, draws: tuple[Tensor, Tensor, Tensor]) -> Examples:
        """Points [E, 1, K+Q, 1] on each curve: one "class" per episode."""
        amplitude, phase, x = (drawn.to(self.device) for drawn in draws)
        return Examples(x[:, None], curve(amplitude, phase, x)[:, None])

    def check(self, spec: EpisodeSpec, split_name: str, data_name: str, key_prefix: str = "") -> None:
        """Any number of points can be drawn from a curve."""

    def figures(self, spec: EpisodeSpec, seed: int) -> list:
        from metarun.figures import SinusoidFits  # matplotlib only where a figure is drawn

        return [SinusoidFits(self, spec.shots, seed)]

    def to(self, device: torch.device | str) -> SinusoidTasks:
        return replace(self, device=torch.device(device))


def curve(amplitude: Tensor, phase: Tensor, x: Tensor) -> Tensor:
    """A sin(x - phase): amplitude, phase [E]; x [E, M, 1] -> [E, M, 1]."""
    return amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))


def make_sinusoid(amplitude=(0.1, 5.0), phase=(0.0, math.pi), x_range=(-5.0, 5.0)) -> DataSplits:
    """Train, validation and test tasks come from the same distribution; the seeds differ."""
    tasks = SinusoidTasks(tuple(amplitude), tuple(phase), tuple(x_range))
    return DataSplits(tasks, tasks, tasks)


def _uniform(bounds: tuple[float, float], shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=generator)
