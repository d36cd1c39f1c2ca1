"""Accuracy with its 95% confidence interval, and the run's results.json."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from torch import Tensor


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and 95% confidence half-width 1.96 * std / sqrt(n) over episodes: values [E]."""
    values = values.double()
    n = values.numel()
    std = float(values.std(unbiased=True)) if n > 1 else 0.0
    return float(values.mean()), 1.96 * std / math.sqrt(n)


def summarize(per_episode: dict[str, Tensor]) -> dict:
    """Mean and 95% CI of each per-episode metric [E]: {"acc": .., "acc_ci95": .., "episodes": E}.

    Metrics after k inner steps ("acc@k") become curves keyed by step:
    {"acc_by_step": {k: ..}, "acc_by_step_ci95": {k: ..}}.
    """
    summary: dict = {}
    for name, values in per_episode.items():
        mean, ci95 = mean_ci95(values)
        base, at, step = name.partition("@")
        if at:
            summary.setdefault(f"{base}_by_step", {})[int(step)] = mean
            summary.setdefault(f"{base}_by_step_ci95", {})[int(step)] = ci95
        else:
            summary[name], summary[f"{name}_ci95"] = mean, ci95
    summary["episodes"] = next(iter(per_episode.values())).numel()
    return summary


def write_json(path: Path, payload: dict) -> None:
    """Write atomically, so a reader never sees half a file."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(payload, handle, indent=2, default=str)
    os.replace(handle.name, path)
