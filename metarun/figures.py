"""Pictures of a finished run, written as PNG files to the run folder and to TensorBoard."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from metarun.episodes import EpisodeSpec, derive_seed, split_support_query


class SinusoidFits:
    """The MAML paper's figure 2 on one fixed test curve: the true curve, the K support points,
    and the prediction before adaptation, after 1 step and after the last recorded step."""

    name = "sinusoid_fits"

    def __init__(self, tasks, shots: int, seed: int, points: int = 200):
        generator = torch.Generator().manual_seed(derive_seed(seed, self.name))
        amplitude, phase, x = tasks.draw(EpisodeSpec(1, shots, 0), 1, generator)
        grid = torch.linspace(*tasks.x_range, points).view(1, points, 1)
        self.tasks = tasks
        self.draws = (amplitude, phase, torch.cat([x, grid], dim=1))
        self.shots = shots

    def __call__(self, algorithm) -> Figure | None:
        """Called in eval mode under torch.no_grad(); None for a method without inner steps."""
        batch = split_support_query(self.tasks.examples(self.draws), shots=self.shots)
        predictions = algorithm.step(batch, train=False).predictions
        if not predictions:
            return None
        figure = Figure(figsize=(6, 4), dpi=100)
        axes = figure.add_subplot()
        grid = batch.query_x[0, :, 0].cpu()
        axes.plot(grid, batch.query_y[0, :, 0].cpu(), color="black", label="ground truth")
        shown = sorted({0, 1, max(predictions)} & set(predictions))
        for step, style in zip(shown, (":", "--", "-")):
            axes.plot(grid, predictions[step][0, :, 0].cpu(), style, label=f"after {step} step{'s' * (step != 1)}")
        axes.plot(batch.support_x[0, :, 0].cpu(), batch.support_y[0, :, 0].cpu(), "^", color="tab:purple", label="support points")
        axes.set(xlabel="x", ylabel="y", title=f"{self.shots}-shot sinusoid regression")
        axes.legend(loc="lower right", fontsize="small")
        figure.tight_layout()
        return figure
