"""Reproduce the published numbers: train each run of benchmarks/reproduce.yaml, score its rows, write RESULTS.md.

    python benchmarks/reproduce.py --data ../shared/data                       # every run not yet in benchmarks/results/
    python benchmarks/reproduce.py --data ../shared/data --runs 'protonet_*'   # some of them
    python benchmarks/reproduce.py --table                                     # only RESULTS.md, from the committed results

Each run trains with `trainer.resume=auto` in outputs/reproduce/<run>/, so an interrupted table
continues where it stopped; its rows are then scored (the run's own test, or `metarun-eval` on
other test episodes) and everything the table needs goes to benchmarks/results/<run>.json, which
is committed with the code. RESULTS.md is drawn from those files alone.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from metarun.cli import config_dir
from metarun.errors import MetarunError

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "benchmarks" / "reproduce.yaml"
RESULTS = ROOT / "benchmarks" / "results"
TABLE = ROOT / "RESULTS.md"
CHECKPOINTS = ROOT / "benchmarks" / "checkpoints"  # of runs stopped short of their budget: see keep_checkpoints
KEEP_AT_MOST_MB = 8  # a run's checkpoints above this stay in its run folder: the repository is no weights store
RUNS = Path("outputs") / "reproduce"  # relative to the repository root, as the commands are printed
DRIVER_OVERRIDES = ["trainer.resume=auto", "trainer.progress=false"]  # every run's, after its own
WITHIN = 1.0  # points: a row "matches" its paper when at most this far below it
CURVE_POINTS = 10  # validation points shown per short run: enough to see the trend, few enough to read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="the folder holding omniglot/ and cifar100/ (../shared/data)")
    parser.add_argument("--runs", nargs="*", default=["*"], help="run ids or patterns, run in this order (default: all, in the file's order)")
    parser.add_argument("--table", action="store_true", help="only write RESULTS.md from benchmarks/results/")
    args = parser.parse_args()
    plan = load_plan()
    if not args.table:
        if args.data is None:
            parser.error("--data is needed to train (or give --table)")
        os.environ["METARUN_DATA"] = str(args.data.resolve())
        os.chdir(ROOT)  # run folders and commands relative to the repository root
        # In the order asked for: a queue of runs for the background, cheapest first if you like.
        chosen = list(dict.fromkeys(run for pattern in args.runs for run in plan["runs"] if fnmatch.fnmatch(run, pattern)))
        for run in chosen:
            try:
                reproduce(run, plan["runs"][run], prior_steps=prior_training(plan, load_records(), run)[0])
            except (subprocess.CalledProcessError, MetarunError) as error:  # the next runs still go
                print(f"{run}: failed ({error}); continuing with the next run", file=sys.stderr, flush=True)
            TABLE.write_text(render(plan, load_records()))  # after each run: the table grows as rows land
    TABLE.write_text(render(plan, load_records()))
    print(f"wrote {TABLE.relative_to(ROOT)}")


def load_plan(path: Path = PLAN) -> dict:
    return yaml.safe_load(path.read_text())


def load_records(folder: Path = RESULTS) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def run_overrides(spec: dict) -> list[str]:
    """The run's own overrides; a run that `starts_from` another begins from its best weights (init_from)."""
    return [*spec["train"], *([f"init_from={RUNS / spec['starts_from']}"] if spec.get("starts_from") else [])]


def train_command(run: str, spec: dict) -> list[str]:
    return ["metarun", *run_overrides(spec), *DRIVER_OVERRIDES, f"hydra.run.dir={RUNS / run}"]


def eval_command(run: str, overrides: list[str]) -> list[str]:
    return ["metarun-eval", f"run={RUNS / run}", *overrides]


def reproduce(run: str, spec: dict, prior_steps: int = 0) -> None:
    """Train `run` unless its folder holds a finished run of the same command, score its rows, record them;
    `prior_steps`: those behind the weights it starts from, counted against its budget."""
    from metarun.report import validation_curve
    from metarun.rescore import rescore

    record_path = RESULTS / f"{run}.json"
    recorded = json.loads(record_path.read_text()) if record_path.exists() else {}
    wanted = [" ".join(row["eval"]) for row in spec["rows"] if row.get("eval")]
    if recorded.get("train") == spec["train"] and all(key in recorded["evals"] for key in wanted):
        print(f"{run}: recorded in {record_path.relative_to(ROOT)}")
        return
    folder = RUNS / run
    if not finished(folder, run_overrides(spec)):
        if spec.get("starts_from"):
            earlier = spec["starts_from"]
            restore_checkpoints(earlier, RUNS / earlier)
            if not (RUNS / earlier / "last.pt").exists():
                raise MetarunError(f"{run} starts from the weights of {earlier}: train it first (--runs {earlier} {run})")
        restore_checkpoints(run, folder)
        print(f"{run}: {' '.join(train_command(run, spec))}", flush=True)
        subprocess.run(train_command(run, spec), check=True)
        if not finished(folder, run_overrides(spec)):
            raise MetarunError(f"{run} stopped before its last step, its checkpoints saved: run the driver again to resume it")
    evals = {}
    for row in spec["rows"]:
        if row.get("eval"):
            print(f"{run}: {' '.join(eval_command(run, row['eval']))}", flush=True)
            evals[" ".join(row["eval"])], _ = rescore(folder, row["eval"])
    results = json.loads((folder / "results.json").read_text())
    logged = validation_curve(folder / "tb", f"val/{results['metric']}")
    trained = validation_curve(folder / "tb", "train/lr")
    began = min((points[0][0] for points in (trained, logged) if points), default=math.inf)  # the folder's first logged step
    curve = joined_curve(recorded.get("val_curve", []), logged, trained_from=began)
    resumed = len(curve) > len(logged)  # its earlier steps trained where the record was made, perhaps another machine
    record = {
        "train": spec["train"],
        "results": results,
        "val_curve": curve,
        "evals": evals,
        "machine": joined_machines(recorded.get("machine") if resumed else None, machine()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    keep_checkpoints(run, folder, short=stopped_short(prior_steps + results["steps"], spec.get("full_steps")))


# A run stopped short of its paper's budget keeps its checkpoints in the repository, so that a
# later session on a fresh machine (outputs/ is not committed) trains on from where it stopped.


def keep_checkpoints(run: str, folder: Path, short: bool) -> None:
    """Copy the run's checkpoints (last.pt, best.pt, an ensemble's top_*.pt) to CHECKPOINTS/<run>/
    while it is short of its budget and they are small (a Conv4's); drop them once it has reached it."""
    shutil.rmtree(CHECKPOINTS / run, ignore_errors=True)
    megabytes = sum(checkpoint.stat().st_size for checkpoint in folder.glob("*.pt")) / 2**20
    if short and megabytes > KEEP_AT_MOST_MB:
        print(f"{run}: its checkpoints ({megabytes:.0f} MB) stay in {folder}, above the {KEEP_AT_MOST_MB} MB the repository keeps", flush=True)
    elif short:
        copy_checkpoints(folder, CHECKPOINTS / run)


def restore_checkpoints(run: str, folder: Path) -> None:
    """Before training: a run folder without last.pt takes the kept checkpoints, if any, to resume from."""
    kept = CHECKPOINTS / run
    if (folder / "last.pt").exists() or not (kept / "last.pt").exists():
        return
    copy_checkpoints(kept, folder)
    print(f"{run}: resuming from the checkpoints kept in {kept}", flush=True)


def copy_checkpoints(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for checkpoint in source.glob("*.pt"):
        shutil.copy2(checkpoint, target / checkpoint.name)


def joined_curve(recorded: list[list], logged: list[tuple[int, float]], trained_from: float) -> list[list]:
    """The validation curve: what the run folder's events logged, after the recorded points of the
    steps before its events begin at `trained_from` (a run resumed from kept checkpoints has only its
    new steps' events; one trained again from the start keeps none of its record)."""
    return [list(point) for point in recorded if point[0] < trained_from] + [list(point) for point in logged]


def finished(folder: Path, overrides: list[str]) -> bool:
    """Whether `folder` holds the results of a run whose command had exactly these overrides (an
    override added, changed or taken away since, such as a raised trainer.steps, trains on,
    resuming from its last.pt). metarun records the command in results.json; for results from
    before it did, the folder's last start must have run to its end, since a run stopped by a
    signal (SIGTERM exits 0, for a scheduler's requeue) leaves the previous results behind."""
    started, results = folder / ".hydra" / "overrides.yaml", folder / "results.json"  # Hydra rewrites the first at every start
    if not results.exists() or not started.exists():
        return False
    command = [*overrides, *DRIVER_OVERRIDES]
    recorded = json.loads(results.read_text()).get("overrides")
    if recorded is not None:
        return recorded == command
    return yaml.safe_load(started.read_text()) == command and results.stat().st_mtime >= started.stat().st_mtime


def machine() -> str:
    """The CPU (or GPU) the run trained on, as a reader of the table needs it."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{model}, {os.cpu_count()} cores" + vector_unit()


def joined_machines(*machines: str | None) -> str:
    """'A then B': the machines a run's steps trained on, in order, each named once where it repeats."""
    names = [name for entry in machines if entry for name in entry.split(" then ")]
    return " then ".join(name for i, name in enumerate(names) if i == 0 or name != names[i - 1])


def vector_unit() -> str:
    """The CPU's widest vector extension, which sets its speed: a 20-way ProtoNet step on CIFAR-100 images
    took 0.13 s in bf16 on an AVX-512 bf16 EPYC (CIFAR-FS) and 0.59 s in fp32 on an AVX2 one (FC100)."""
    from metarun.compute import cpu_flags

    flags = cpu_flags()
    names = [("avx512_bf16", "AVX-512 bf16"), ("avx512f", "AVX-512"), ("avx2", "AVX2")]
    return next((f", {name}" for flag, name in names if flag in flags), "")


# ---------------------------------------------------------------- the table


def render(plan: dict, records: dict[str, dict]) -> str:
    """RESULTS.md: one row per (method, data, setting), the curves of the runs stopped short, then each run's commands."""
    lines = [
        "# Results: published numbers against metarun's",
        "",
        "Written by `python benchmarks/reproduce.py` from `benchmarks/results/` (do not edit by hand); the runs and",
        "the papers' numbers are listed in `benchmarks/reproduce.yaml`. Test accuracy is the mean over fixed test",
        "episodes (`eval_seed=0`) with its 95% confidence interval; Δ is metarun minus the paper, in points, and ✓",
        f"marks a row at most {WITHIN:g} point below its paper. Best at: the validation step that chose the tested",
        "weights, and the validation accuracy there and at the last step (still rising when the best is the last).",
        "",
        "| Method | Data | Setting | Paper | metarun | Δ | Steps (paper's) | Best at (val) | Train min | Device, precision | Protocol |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    matched = scored = 0
    hours = 0.0
    for run, spec in plan["runs"].items():
        record = records.get(run)
        if record:
            hours += record["results"]["train"]["seconds"] / 3600
        for row in spec["rows"]:
            cells, match = row_cells(run, spec, row, record, prior_training(plan, records, run))
            lines.append("| " + " | ".join(cells) + " |")
            scored += match is not None
            matched += bool(match)
    lines += ["", f"{matched} of {scored} rows with a paper number are within {WITHIN:g} point of it; "
              f"{hours:.1f} training hours in all.", ""]
    lines += curves_section(plan, records)
    lines += ["## Data", ""] + [f"- **{name}**: {note}" for name, note in plan.get("data_notes", {}).items()]
    lines += ["", "## Commands", "", "From the repository root, with `METARUN_DATA` the folder holding `omniglot/` and `cifar100/`:", ""]
    for run, spec in plan["runs"].items():
        commands = [" ".join(train_command(run, spec))] + [" ".join(eval_command(run, row["eval"])) for row in spec["rows"] if row.get("eval")]
        lines += [f"**{run}**" + ("" if run in records else " (not run yet)"), "", "```bash", *commands, "```", ""]
    return "\n".join(lines)


def curves_section(plan: dict, records: dict[str, dict]) -> list[str]:
    """The validation curve of each run stopped short of its paper's budget, so that a reader sees
    whether more steps would still pay (runs that trained on their validation classes have none)."""
    lines = ["## Validation curves of the runs stopped short", "",
             f"Validation accuracy (%) by step, at most {CURVE_POINTS} points of each run's curve, its last included.", ""]
    for run, spec in plan["runs"].items():
        record = records.get(run)
        if not record or not record["val_curve"] or record["results"].get("tested", {}).get("weights") == "last":
            continue
        prior_steps = prior_training(plan, records, run)[0]
        steps = prior_steps + record["results"]["steps"]
        if not stopped_short(steps, spec.get("full_steps")):
            continue
        points = ", ".join(f"{prior_steps + step:,}: {100 * acc:.1f}" for step, acc in sampled(record["val_curve"], CURVE_POINTS))
        lines.append(f"- **{run}** ({steps:,} of {spec['full_steps']:,} steps): {points}")
    return lines + [""]


def sampled(curve: list, count: int) -> list:
    """At most `count` evenly spaced points of `curve`, its first and last among them."""
    if len(curve) <= count:
        return curve
    return [curve[round(i * (len(curve) - 1) / (count - 1))] for i in range(count)]


def prior_training(plan: dict, records: dict[str, dict], run: str) -> tuple[int, float, str | None]:
    """What `run` continues (starts_from, and what that one starts from): the steps behind the
    weights it starts from (an earlier best counts its own step, not the steps trained after it),
    and the seconds and machines of every step trained."""
    earlier = plan["runs"][run].get("starts_from")
    if not earlier or earlier not in records:
        return 0, 0.0, None
    steps, seconds, machines = prior_training(plan, records, earlier)
    results = records[earlier]["results"]
    return steps + results["tested"]["step"], seconds + results["train"]["seconds"], joined_machines(machines, records[earlier]["machine"])


def row_cells(run: str, spec: dict, row: dict, record: dict | None, prior: tuple[int, float, str | None] = (0, 0.0, None)) -> tuple[list[str], bool | None]:
    """The row's cells, and whether it is within WITHIN of its paper (None: no paper number, or not run);
    `prior`: the steps, seconds and machines of the runs it continues, counted in its steps, best step, minutes and device."""
    paper = row.get("paper")
    paper_cell = f"{paper:.2f} ({row['source']})" if paper is not None else f"— ({row['source']})"
    scored = record is not None and (not row.get("eval") or " ".join(row["eval"]) in record["evals"])
    if not scored:
        return [run.split("_")[0], planned_data(spec), row["setting"], paper_cell, "not run yet", "", str(spec["paper_steps"]), "", "", "", row["protocol"]], None
    results, (prior_steps, prior_seconds, prior_machines) = record["results"], prior
    test = record["evals"][" ".join(row["eval"])]["test"] if row.get("eval") else results["test"]
    ours, ci = row_accuracy(test, row)
    delta = ours - paper if paper is not None else None
    match = None if delta is None else delta >= -WITHIN
    curve = record["val_curve"]
    best_step = prior_steps + results["val"]["best_step"]
    if results.get("tested", {}).get("weights") == "last":  # no validation chose them (train_on_val: it saw those classes)
        best_cell = f"— (the last weights, of step {prior_steps + results['tested']['step']:,})"
    elif curve:
        best_cell = f"{best_step} ({100 * results['val']['best_acc']:.1f}; last {100 * curve[-1][1]:.1f})"
    else:
        best_cell = str(best_step)
    cells = [
        results["algorithm"], results["data"], row["setting"], paper_cell,
        f"{ours:.2f} ± {ci:.2f} ({test['episodes']} ep.)",
        "" if delta is None else f"{delta:+.2f}" + (" ✓" if match else ""),
        steps_cell(prior_steps, results["steps"], spec["paper_steps"]),
        best_cell,
        train_minutes(prior_steps + results["steps"], prior_seconds + results["train"]["seconds"], spec.get("full_steps")),
        f"{joined_machines(prior_machines, record['machine'])}; {results.get('precision', 'fp32')}",
        row["protocol"],
    ]
    return cells, match


def planned_data(spec: dict) -> str:
    """The data set a run will train on, as its finished rows name it: a data= override, else its experiment's."""
    overrides = dict(item.split("=", 1) for item in spec["train"] if "=" in item)
    if "data" in overrides:
        return overrides["data"]
    return experiment_data(overrides["experiment"])


def experiment_data(name: str) -> str:
    """The data set an experiment config overrides, or the one it builds on (a plain defaults entry)."""
    defaults = yaml.safe_load((Path(config_dir()) / "experiment" / f"{name}.yaml").read_text())["defaults"]
    for entry in defaults:
        if isinstance(entry, dict) and "override /data" in entry:
            return entry["override /data"]
    parent = next(entry for entry in defaults if isinstance(entry, str) and entry != "_self_")
    return experiment_data(parent)


def steps_cell(prior_steps: int, steps: int, paper_steps: str) -> str:
    """16,000 (11,000 + 5,000; the paper's): a continued run's steps with those it continues."""
    parts = f"{prior_steps:,} + {steps:,}; " if prior_steps else ""
    return f"{prior_steps + steps:,} ({parts}{paper_steps})"


def stopped_short(steps: int, full_steps: int | None) -> bool:
    """Whether a run of `steps` is short of its paper's `full_steps` (None: a run trained to its paper's own stopping rule)."""
    return bool(full_steps) and steps < full_steps


def train_minutes(steps: int, seconds: float, full_steps: int | None) -> str:
    """Minutes trained; for a run stopped short of the paper's `full_steps`, also the hours all of
    them would take at the rate this run measured."""
    minutes = seconds / 60
    if not stopped_short(steps, full_steps):
        return f"{minutes:.0f}"
    return f"{minutes:.0f} ({minutes * full_steps / steps / 60:.1f} h for {full_steps:,} steps)"


def row_accuracy(test: dict, row: dict) -> tuple[float, float]:
    """The row's test accuracy and its CI in %: over all queries, or (a sequence protocol row with
    `instance: k`) at the k-th presentation of a class."""
    if "instance" in row:
        k = str(row["instance"])  # JSON keys are strings
        return 100 * test["acc_by_instance"][k], 100 * test["acc_by_instance_ci95"][k]
    return 100 * test["acc"], 100 * test["acc_ci95"]


if __name__ == "__main__":
    sys.exit(main())
