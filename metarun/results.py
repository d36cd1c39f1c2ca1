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


def summarize(per_episode: dict[str, Tensor]) -> dict[str, float]:
    """{"acc": .., "acc_ci95": .., "loss": .., "loss_ci95": .., "episodes": E} from per-episode metrics [E]."""
    summary: dict[str, float] = {}
    for name, values in per_episode.items():
        summary[name], summary[f"{name}_ci95"] = mean_ci95(values)
    summary["episodes"] = next(iter(per_episode.values())).numel()
    return summary


def write_json(path: Path, payload: dict) -> None:
    """Write atomically, so a reader never sees half a file."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(payload, handle, indent=2, default=str)
    os.replace(handle.name, path)
