"""`metarun-report <folder>`: one table of every run under a run or sweep folder, and two plots.

Reads each run's results.json, the overrides Hydra saved beside it (.hydra/overrides.yaml) and
its TensorBoard events; writes report.md, report.csv, val_curves.png and test_scores.png to the
folder (or `--out`) and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from matplotlib.figure import Figure


@dataclass
class Run:
    path: Path  # relative to the report's folder
    results: dict
    overrides: dict[str, str]
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, validation score)

    @property
    def metric(self) -> str:
        return self.results["metric"]

    @property
    def test(self) -> float:
        return self.results["test"][self.metric]

    @property
    def ci95(self) -> float:
        return self.results["test"][f"{self.metric}_ci95"]


def collect(folder: Path) -> list[Run]:
    """Every finished run under `folder` (a results.json marks one), with its validation curve."""
    runs = []
    for results_file in sorted(folder.rglob("results.json")):
        run_dir = results_file.parent
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        results = json.loads(results_file.read_text())
        runs.append(Run(
            path=run_dir.relative_to(folder),
            results=results,
            overrides=dict(item.split("=", 1) for item in overrides or [] if "=" in item),
            curve=validation_curve(run_dir / "tb", f"val/{results['metric']}"),
        ))
    return runs


def validation_curve(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one scalar from a run's TensorBoard events; [] without events."""
    if not log_dir.is_dir():
        return []
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0}).Reload()
    if tag not in events.Tags()[SCALARS]:
        return []
    return [(event.step, event.value) for event in events.Scalars(tag)]


def swept_keys(runs: list[Run]) -> list[str]:
    """The overrides whose values differ between the runs: what the sweep varied."""
    keys = sorted({key for run in runs for key in run.overrides})
    return [key for key in keys if len({run.overrides.get(key) for run in runs}) > 1]


def table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Header and rows, best test score first (highest accuracy, or lowest error)."""
    swept = swept_keys(runs)
    header = ["run", "algorithm", "data", "ways", "shots", *swept, "test", "test ± 95% CI", "best val", "steps", "wall (min)"]
    ordered = sorted(runs, key=lambda run: -run.test if run.metric == "acc" else run.test)
    rows = []
    for run in ordered:
        r = run.results
        scale = 100 if run.metric == "acc" else 1
        unit = "%" if run.metric == "acc" else ""
        best_val = r["val"].get(f"best_{run.metric}")
        rows.append([
            short_name(run.path), str(r.get("algorithm")), str(r.get("data")), str(r.get("ways")), str(r.get("shots")),
            *(short_value(run.overrides.get(key, "")) for key in swept),
            f"{run.metric} {run.test * scale:.2f}{unit}", f"± {run.ci95 * scale:.2f}{unit}",
            "" if best_val is None else f"{best_val * scale:.2f}{unit}",
            str(r.get("steps")), f"{r.get('wall_s', 0) / 60:.1f}",
        ])
    return header, rows


def short_name(path: Path) -> str:
    """A sweep job's folder "<num>_<overrides>" as "#<num>" (its overrides have their own columns)."""
    number, underscore, _ = path.name.partition("_")
    return f"#{number}" if underscore and number.isdigit() else str(path)


def short_value(value: str) -> str:
    """An Optuna-drawn float with 4 significant digits; anything else as it is."""
    try:
        return f"{float(value):.4g}" if "." in value else value
    except ValueError:
        return value


def markdown(header: list[str], rows: list[list[str]]) -> str:
    escape = lambda cell: cell.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def label(run: Run, swept: list[str]) -> str:
    """What tells a run apart in a legend: its algorithm, episode and swept values."""
    r = run.results
    parts = [f"{r.get('algorithm')} {r.get('ways')}w{r.get('shots')}s"]
    parts += [f"{key.rpartition('.')[2]}={short_value(run.overrides[key])}" for key in swept
              if key in run.overrides and key not in ("algo", "episode")]
    return " ".join(parts)


def plot_curves(runs: list[Run], swept: list[str]) -> Figure:
    figure = Figure(figsize=(8, 5), dpi=100)
    axes = figure.add_subplot()
    for run in runs:
        if run.curve:
            steps, values = zip(*run.curve)
            axes.plot(steps, values, marker="o", markersize=3, label=label(run, swept))
    metric = runs[0].metric
    axes.set(xlabel="meta-training step", ylabel=f"validation {metric}", title="Validation during meta-training")
    axes.grid(alpha=0.3)
    if any(run.curve for run in runs):
        axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_tests(runs: list[Run], swept: list[str]) -> Figure:
    ordered = sorted(runs, key=lambda run: label(run, swept))
    figure = Figure(figsize=(8, 1.5 + 0.4 * len(ordered)), dpi=100)
    axes = figure.add_subplot()
    positions = range(len(ordered))
    axes.errorbar([run.test for run in ordered], positions, xerr=[run.ci95 for run in ordered], fmt="o", capsize=4)
    axes.set_yticks(list(positions), [label(run, swept) for run in ordered], fontsize="small")
    axes.invert_yaxis()
    axes.set(xlabel=f"test {runs[0].metric} (95% confidence interval)", title="Test score per configuration")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def write_report(folder: Path, out: Path) -> str:
    """Write the four report files to `out`; returns the markdown table."""
    runs = collect(folder)
    if not runs:
        raise SystemExit(f"metarun-report: error: no results.json under {folder}: no finished run there")
    header, rows = table(runs)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(header, rows)
    (out / "report.md").write_text(f"# Runs under {folder}\n\n{text}")
    with open(out / "report.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    swept = swept_keys(runs)
    plot_curves(runs, swept).savefig(out / "val_curves.png")
    plot_tests(runs, swept).savefig(out / "test_scores.png")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="metarun-report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a run folder or a sweep folder (outputs/multirun/<time>)")
    parser.add_argument("--out", type=Path, help="where to write the report files (default: the folder)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"metarun-report: error: {args.folder} is not a folder", file=sys.stderr)
        sys.exit(2)
    print(write_report(args.folder, args.out or args.folder), end="")


if __name__ == "__main__":
    main()
