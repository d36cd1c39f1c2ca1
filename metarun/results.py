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
    {"acc_by_step": {k: ..}, "acc_by_step_ci95": {k: ..}}; "acc@<axis>=k" a curve along another
    axis, as "acc@instance=k" (the k-th presentation of a class) becomes "acc_by_instance".
    """
    summary: dict = {}
    for name, values in per_episode.items():
        mean, ci95 = mean_ci95(values)
        base, at, position = name.partition("@")
        if at:
            axis, _, index = position.rpartition("=")
            curve = f"{base}_by_{axis or 'step'}"
            summary.setdefault(curve, {})[int(index)] = mean
            summary.setdefault(f"{curve}_ci95", {})[int(index)] = ci95
        else:
            summary[name], summary[f"{name}_ci95"] = mean, ci95
    for name, value in summary.items():
        if isinstance(value, dict):
            summary[name] = dict(sorted(value.items()))  # steps, instances, sources in order
    summary["episodes"] = next(iter(per_episode.values())).numel()
    return summary


def run_results(metric: str, test: dict, tested: dict, progress, meta_batch_size: int, wall_seconds: float,
                metadata: dict) -> dict:
    """results.json of a finished run: its test summary, which weights were tested, its best validation,
    training time and speed, and the run's metadata (config, data, device, versions)."""
    tasks = progress.step * meta_batch_size
    return {
        "metric": metric,
        "test": test,
        "tested": tested,
        "val": {f"best_{metric}": progress.best_val, "best_step": progress.best_step},
        "train": {"seconds": progress.train_seconds, "tasks_per_s": tasks / max(progress.train_seconds, 1e-9)},
        "steps": progress.step,
        "wall_s": wall_seconds,
        **metadata,
    }


def final_scalars(results: dict) -> dict[str, float]:
    """A finished run's numbers as scalars at its last step, so TensorBoard's HParams table shows
    each of them for every run (a value that is None, as a best of no validation, is left out)."""
    metric, test = results["metric"], results["test"]
    final = {f"test/{metric}": test[metric], f"test/{metric}_ci95": test[f"{metric}_ci95"], "test/loss": test["loss"],
             f"val/best_{metric}": results["val"][f"best_{metric}"], "train/minutes": results["train"]["seconds"] / 60,
             "train/tasks_per_s": results["train"]["tasks_per_s"]}
    return {name: value for name, value in final.items() if value is not None}


def write_json(path: Path, payload: dict) -> None:
    """Write atomically, so a reader never sees half a file; a NaN or infinity becomes null (valid
    JSON for every reader) and its key is listed under "not_finite"."""
    not_finite: list[str] = []
    payload = finite_or_null(payload, not_finite)
    if not_finite:
        payload["not_finite"] = not_finite
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(payload, handle, indent=2, default=str, allow_nan=False)
    os.replace(handle.name, path)


def finite_or_null(value, not_finite: list[str], key: str = ""):
    """`value` with every non-finite float replaced by None, recording the dotted keys replaced."""
    if isinstance(value, dict):
        return {name: finite_or_null(item, not_finite, f"{key}{name}.") for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item, not_finite, key) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        not_finite.append(key.rstrip("."))
        return None
    return value
