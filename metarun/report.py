"""`metarun-report <folder>`: the runs under a run or sweep folder as tables and two plots.

Reads each run's results.json, the overrides Hydra saved beside it (.hydra/overrides.yaml) and
its TensorBoard events. One row per run, and, where runs differ only in their seed (or in keys
left out of `--group-by`), one row per configuration with the mean over its runs. Writes
report.md, report.csv (numbers, as in results.json), report_grouped.csv, val_curves.png,
test_scores.png and, with `--latex`, report.tex to the folder (or `--out`), prints the tables and
names the files it wrote.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from matplotlib.figure import Figure

# Overrides that the fixed columns (algorithm, data, ways, shots) already show.
SHOWN = {"algo", "data", "episode", "episode.ways", "episode.shots"}


@dataclass
class Run:
    id: str  # unique under the report's folder: "#3" for a sweep's job 3, "<sweep>/#3" when several sweeps
    results: dict
    overrides: dict[str, str]
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, validation score)
    restarted_with: list[str] | None = None  # the overrides of a later start that has not finished

    @property
    def metric(self) -> str:
        return self.results["metric"]

    @property
    def test(self) -> float | None:
        return self.results["test"][self.metric]

    @property
    def ci95(self) -> float | None:
        return self.results["test"][f"{self.metric}_ci95"]

    @property
    def best_val(self) -> float | None:
        return self.results["val"].get(f"best_{self.metric}")


@dataclass
class Group:
    """The runs of one configuration (they differ only in keys left out of the grouping, such as the seed)."""

    key: tuple[str, ...]  # the values of the grouping keys
    runs: list[Run]

    @property
    def metric(self) -> str:
        return self.runs[0].metric

    @property
    def scores(self) -> list[float]:
        return [run.test for run in self.runs if run.test is not None]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.scores) if self.scores else None

    @property
    def ci95_over_runs(self) -> float | None:
        """1.96 standard errors of the mean over the runs (seeds); None for a single run."""
        scores = self.scores
        return 1.96 * statistics.stdev(scores) / math.sqrt(len(scores)) if len(scores) > 1 else None

    @property
    def mean_episode_ci95(self) -> float | None:
        cis = [run.ci95 for run in self.runs if run.ci95 is not None]
        return statistics.fmean(cis) if cis else None


def collect(folder: Path) -> list[Run]:
    """Every finished run under `folder` (a results.json marks one), with its validation curve.

    A run's overrides are those its results.json records, the command behind its numbers: Hydra
    rewrites .hydra/overrides.yaml at every start, so after a resume to more steps that has not
    finished it names the new command (older results record none: then that file is read)."""
    runs = []
    for results_file in sorted(folder.rglob("results.json")):
        run_dir = results_file.parent
        started_file = run_dir / ".hydra" / "overrides.yaml"
        started = (yaml.safe_load(started_file.read_text()) or []) if started_file.exists() else []
        results = json.loads(results_file.read_text())
        overrides = results.get("overrides", started)
        runs.append(Run(
            id=run_id(run_dir.relative_to(folder)),
            results=results,
            overrides=dict(item.lstrip("+").split("=", 1) for item in overrides if "=" in item),
            curve=validation_curve(run_dir / "tb", f"val/{results['metric']}"),
            restarted_with=started if started_file.exists() and started != overrides else None,
        ))
    return runs


def run_id(path: Path) -> str:
    """A sweep job's folder "<num>_<overrides>" as "#<num>" (its overrides have their own columns),
    under the sweep's folder name when the report spans several sweeps; any other run by its path."""
    number = path.name.partition("_")[0]
    if not number.isdigit():
        return str(path)
    return f"#{number}" if str(path.parent) == "." else f"{path.parent}/#{number}"


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
    """The overrides whose values differ between the runs (what the sweep varied), but for those
    the fixed columns show."""
    keys = sorted({key for run in runs for key in run.overrides} - SHOWN)
    return [key for key in keys if len({run.overrides.get(key) for run in runs}) > 1]


def group_runs(runs: list[Run], keys: list[str]) -> list[Group]:
    """Runs with the same algorithm, data, ways, shots and values of `keys`, best mean first."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(fixed(run) + tuple(run.overrides.get(key, "") for key in keys), []).append(run)
    return sorted((Group(key, members) for key, members in groups.items()), key=lambda g: order(g.metric, g.mean))


def fixed(run: Run) -> tuple[str, ...]:
    r = run.results
    return tuple(str(r.get(name)) for name in ("algorithm", "data", "ways", "shots"))


def order(metric: str, value: float | None) -> float:
    """Sort key: best first (highest accuracy, lowest error), missing values last."""
    if value is None:
        return math.inf
    return -value if metric == "acc" else value


# ---------------------------------------------------------------- tables


def table(runs: list[Run]) -> tuple[list[str], list[list]]:
    """One row per run, best test score first: header and rows of numbers (as in results.json)."""
    swept = swept_keys(runs)
    header = ["run", "algorithm", "data", "ways", "shots", *swept, "metric", "test", "test_ci95", "best_val", "steps", "train_min"]
    rows = []
    for run in sorted(runs, key=lambda run: order(run.metric, run.test)):
        r = run.results
        rows.append([run.id, *fixed(run), *(run.overrides.get(key, "") for key in swept), run.metric, run.test,
                     run.ci95, run.best_val, r.get("steps"), round(r.get("train", {}).get("seconds", 0) / 60, 2)])
    return header, rows


def grouped_table(groups: list[Group], keys: list[str]) -> tuple[list[str], list[list]]:
    """One row per configuration: the mean over its runs, a 95% CI over the runs and the mean of
    the runs' 95% CIs over test episodes."""
    header = ["algorithm", "data", "ways", "shots", *keys, "runs", "metric", "mean_test", "ci95_over_runs",
              "mean_episode_ci95", "run_ids"]
    rows = [[*group.key, len(group.runs), group.metric, group.mean, group.ci95_over_runs, group.mean_episode_ci95,
             " ".join(run.id for run in group.runs)] for group in groups]
    return header, rows


def shown(value, metric: str | None, signed: bool = False) -> str:
    """A cell for reading: accuracies in percent, errors as they are, nothing for a missing value."""
    if value is None:
        return ""
    if not isinstance(value, float) or metric is None:
        return str(value)
    text = f"{100 * value:.2f}%" if metric == "acc" else f"{value:.4g}"
    return f"± {text}" if signed else text


def readable(header: list[str], rows: list[list]) -> list[list[str]]:
    """The rows with the score columns formatted by their metric."""
    scores = {"test", "best_val", "mean_test"}
    spreads = {"test_ci95", "ci95_over_runs", "mean_episode_ci95"}
    metric_at = header.index("metric")
    return [[shown(cell, row[metric_at] if name in scores | spreads else None, name in spreads) for name, cell in zip(header, row)]
            for row in rows]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    escape = lambda cell: cell.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def latex(header: list[str], rows: list[list], keys: list[str]) -> str:
    """A booktabs table for a paper: one row per configuration, mean ± CI over runs (or episodes)."""
    escape = lambda text: str(text).replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")  # noqa: E731
    at = {name: header.index(name) for name in header}
    columns = ["algorithm", "data", "ways", "shots", *keys]
    lines = [r"\begin{tabular}{" + "l" * len(columns) + "r}", r"\toprule",
             " & ".join(escape(c) for c in columns) + r" & Test \\", r"\midrule"]
    for row in rows:
        metric, mean = row[at["metric"]], row[at["mean_test"]]
        spread = row[at["ci95_over_runs"]] if row[at["ci95_over_runs"]] is not None else row[at["mean_episode_ci95"]]
        scale = 100 if metric == "acc" else 1
        score = "--" if mean is None else f"${scale * mean:.2f} \\pm {scale * (spread or 0):.2f}$"
        lines.append(" & ".join(escape(row[at[c]]) for c in columns) + f" & {score} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots


def label(run: Run, swept: list[str]) -> str:
    """What tells a run apart in a legend: its id, algorithm, episode and swept values."""
    r = run.results
    parts = [run.id, f"{r.get('algorithm')} {r.get('ways')}w{r.get('shots')}s"]
    parts += [f"{key.rpartition('.')[2]}={run.overrides[key]}" for key in swept if key in run.overrides]
    return textwrap.fill(" ".join(parts), 40)


def plot_curves(runs: list[Run], swept: list[str]) -> Figure:
    """Validation curves, the legend outside the axes (to their right)."""
    drawn = [run for run in runs if run.curve]
    figure = Figure(figsize=(11, 5), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for run in drawn:
        steps, values = zip(*run.curve)
        axes.plot(steps, values, marker="o", markersize=3, label=label(run, swept))
    axes.set(xlabel="meta-training step", ylabel=f"validation {runs[0].metric}", title="Validation during meta-training")
    axes.grid(alpha=0.3)
    if drawn:
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return figure


def plot_tests(groups: list[Group], keys: list[str]) -> Figure:
    """Each configuration's test score: the mean over its runs with its 95% CI (over runs where
    there are several, else over test episodes)."""
    shown_groups = [g for g in groups if g.mean is not None]
    figure = Figure(figsize=(10, 1.5 + 0.45 * max(len(shown_groups), 1)), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    positions = range(len(shown_groups))
    spreads = [g.ci95_over_runs if g.ci95_over_runs is not None else (g.mean_episode_ci95 or 0) for g in shown_groups]
    axes.errorbar([g.mean for g in shown_groups], positions, xerr=spreads, fmt="o", capsize=4)
    names = [textwrap.fill(" ".join([g.key[0], f"{g.key[2]}w{g.key[3]}s", *(f"{key.rpartition('.')[2]}={value}" for key, value
                                                                       in zip(keys, g.key[4:])), f"({len(g.runs)} runs)"]), 45)
             for g in shown_groups]
    axes.set_yticks(list(positions), names, fontsize="small")
    axes.invert_yaxis()
    axes.set(xlabel=f"test {groups[0].metric} (mean, 95% CI)", title="Test score per configuration")
    axes.grid(axis="x", alpha=0.3)
    return figure


# ---------------------------------------------------------------- the command


def write_report(folder: Path, out: Path, group_by: list[str] | None = None, with_latex: bool = False) -> tuple[str, list[Path]]:
    """Write the report files to `out`; returns the printed text and the files written."""
    runs = collect(folder)
    if not runs:
        raise SystemExit(f"metarun-report: error: no results.json under {folder}: no finished run there")
    swept = swept_keys(runs)
    keys = [key for key in swept if key != "seed"] if group_by is None else group_by
    groups = group_runs(runs, keys)
    header, rows = table(runs)
    out.mkdir(parents=True, exist_ok=True)
    text = f"Runs under {folder}:\n\n" + markdown(header, readable(header, rows))
    for run in runs:
        if run.restarted_with is not None:
            text += (f"\n{run.id} was started again, with `{' '.join(run.restarted_with)}`, and has not finished: "
                     "its row is the run that finished before\n")
    written = [out / "report.md", out / "report.csv", out / "report_grouped.csv", out / "val_curves.png", out / "test_scores.png"]
    group_header, group_rows = grouped_table(groups, keys)
    if len(groups) < len(runs):
        text += f"\nMean over the runs of each configuration (grouped by {', '.join(keys) or 'algorithm, data and episode'}):\n\n"
        text += markdown(group_header, readable(group_header, group_rows))
    (out / "report.md").write_text(f"# {text}")
    for path, (head, body) in ((out / "report.csv", (header, rows)), (out / "report_grouped.csv", (group_header, group_rows))):
        with open(path, "w", newline="") as handle:
            csv.writer(handle).writerows([head, *body])
    plot_curves(runs, swept).savefig(out / "val_curves.png")
    plot_tests(groups, keys).savefig(out / "test_scores.png")
    if with_latex:
        (out / "report.tex").write_text(latex(group_header, group_rows, keys))
        written.append(out / "report.tex")
    return text, written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="metarun-report", description=__doc__.splitlines()[0],
                                     epilog="example: metarun-report outputs/multirun/2026-11-22_12-00-00 --latex")
    parser.add_argument("folder", type=Path, help="a run folder or a sweep folder (outputs/multirun/<time>)")
    parser.add_argument("--out", type=Path, help="where to write the report files (default: the folder)")
    parser.add_argument("--group-by", help="comma-separated override keys a configuration is made of "
                        "(default: every swept key but seed; '' for algorithm, data and episode alone)")
    parser.add_argument("--latex", action="store_true", help="also write report.tex, a booktabs table of the configurations")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"metarun-report: error: {args.folder} is not a folder", file=sys.stderr)
        sys.exit(2)
    group_by = None if args.group_by is None else [key for key in args.group_by.split(",") if key]
    text, written = write_report(args.folder, args.out or args.folder, group_by, args.latex)
    print(text, end="")
    print(f"\nwrote {', '.join(path.name for path in written)} to {(args.out or args.folder)}")


if __name__ == "__main__":
    main()
