"""benchmarks/reproduce.py: RESULTS.md is exactly what the committed results files say."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from metarun.cli import config_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "benchmarks" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_md_is_the_table_of_the_committed_results(reproduce):
    expected = reproduce.render(reproduce.load_plan(), reproduce.load_records())
    assert (REPO / "RESULTS.md").read_text() == expected, "RESULTS.md is stale: run python benchmarks/reproduce.py --table"


def test_every_run_names_an_experiment_config_and_every_row_a_paper_source(reproduce):
    experiments = {p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml")}
    for run, spec in reproduce.load_plan()["runs"].items():
        named = [o.partition("=")[2] for o in spec["train"] if o.startswith("experiment=")]
        assert named and named[0] in experiments, run
        assert all(row["source"] and row["protocol"] and row["setting"] for row in spec["rows"]), run


def test_a_planned_row_names_the_data_of_its_experiment_or_of_the_experiment_it_builds_on(reproduce):
    assert reproduce.planned_data({"train": ["experiment=imp_omniglotalphabets_10w10s"]}) == "omniglot_alphabets"
    # protonet_omniglotalphabets_10w10s overrides only the algorithm of IMP's experiment
    assert reproduce.planned_data({"train": ["experiment=protonet_omniglotalphabets_10w10s"]}) == "omniglot_alphabets"
    assert reproduce.planned_data({"train": ["experiment=protonet_omniglotalphabets_10w10s", "data=omniglot"]}) == "omniglot"


def record(acc: float, eval_acc: float | None = None) -> dict:
    test = {"acc": acc, "acc_ci95": 0.002, "episodes": 1000}
    return {
        "train": ["experiment=x"],
        "results": {"algorithm": "protonet", "data": "omniglot", "test": test, "steps": 20000, "precision": "bf16",
                    "val": {"best_acc": 0.95, "best_step": 19000}, "tested": {"weights": "best", "step": 19000},
                    "train": {"seconds": 1800.0}},
        "val_curve": [[1000, 0.9], [20000, 0.949]],
        "evals": {} if eval_acc is None else {"episode=5way_1shot": {"test": test | {"acc": eval_acc}}},
        "machine": "a CPU, 2 cores",
    }


def test_a_row_within_one_point_is_marked_and_counted_and_one_below_is_not(reproduce):
    plan = {"runs": {"protonet_omniglot_20w1s": {"train": ["experiment=protonet_omniglot_20w1s"], "paper_steps": "early stopping", "rows": [
        {"setting": "20-way 1-shot", "paper": 96.0, "source": "Snell", "protocol": "p"},
        {"setting": "5-way 1-shot", "eval": ["episode=5way_1shot"], "paper": 98.8, "source": "Snell", "protocol": "q"}]}}}
    table = reproduce.render(plan, {"protonet_omniglot_20w1s": record(0.9512, eval_acc=0.9770)})
    assert "| 95.12 ± 0.20 (1000 ep.) | -0.88 ✓ |" in table  # the run's own test
    assert "| 97.70 ± 0.20 (1000 ep.) | -1.10 |" in table  # the 5-way score from metarun-eval
    assert "1 of 2 rows with a paper number are within 1 point" in table
    assert "| 19000 (95.0; last 94.9) | 30 |" in table
    assert "0.5 training hours" in table
    half = reproduce.render(plan, {"protonet_omniglot_20w1s": record(0.9512)})  # trained, its 5-way row not scored yet
    assert half.count("| 95.12 ± 0.20 (1000 ep.) |") == 1 and "| 98.80 (Snell) | not run yet |" in half
    waiting = reproduce.render(plan, {})
    assert waiting.count("not run yet") == 2 + 1  # two rows, and the run's commands
    assert "| protonet | omniglot | 20-way 1-shot | 96.00 (Snell) | not run yet |" in waiting  # the experiment's data set
    plan["runs"]["protonet_omniglot_20w1s"]["train"].append("data=cifar_fs")
    assert "| protonet | cifar_fs | 20-way 1-shot |" in reproduce.render(plan, {})  # a data= override wins


def test_a_run_stopped_short_of_its_papers_budget_says_how_long_the_rest_would_take(reproduce):
    plan = {"runs": {"maml_omniglot_5w1s": {"train": ["experiment=x"], "paper_steps": "60,000", "full_steps": 60000, "rows": [
        {"setting": "5-way 1-shot", "paper": 98.7, "source": "Finn", "protocol": "p"}]}}}
    table = reproduce.render(plan, {"maml_omniglot_5w1s": record(0.97)})  # 20,000 steps in 30 minutes
    assert "| 30 (1.5 h for 60,000 steps) |" in table
    assert "- **maml_omniglot_5w1s** (20,000 of 60,000 steps): 1,000: 90.0, 20,000: 94.9" in table  # its curve shown
    long = record(0.97) | {"val_curve": [[1000 * step, step / 100] for step in range(1, 21)]}
    points = reproduce.render(plan, {"maml_omniglot_5w1s": long}).split("(20,000 of 60,000 steps): ")[1].splitlines()[0]
    assert points.split(", ") == [f"{1000 * step:,}: {step:.1f}" for step in (1, 3, 5, 7, 9, 12, 14, 16, 18, 20)]  # 10 of them
    plan["runs"]["maml_omniglot_5w1s"]["full_steps"] = 20000  # the paper's budget reached: no curve
    assert "**maml_omniglot_5w1s** (" not in reproduce.render(plan, {"maml_omniglot_5w1s": record(0.97)})


def test_a_run_is_finished_only_for_exactly_its_command_run_to_its_end(reproduce, tmp_path):
    (tmp_path / ".hydra").mkdir()
    started = ["experiment=x", "trainer.steps=5000", *reproduce.DRIVER_OVERRIDES]
    overrides = tmp_path / ".hydra" / "overrides.yaml"
    overrides.write_text("".join(f"- {o}\n" for o in started))
    results = tmp_path / "results.json"
    results.write_text("{}")
    os.utime(overrides, (1_000, 1_000))
    os.utime(results, (2_000, 2_000))
    assert reproduce.finished(tmp_path, ["experiment=x", "trainer.steps=5000"])
    assert not reproduce.finished(tmp_path, ["experiment=x", "trainer.steps=20000"])  # raised: it trains on
    assert not reproduce.finished(tmp_path, ["experiment=x"])  # the cap taken away: the config's own steps
    os.utime(overrides, (3_000, 3_000))  # started again, then stopped by a signal: the results are the earlier run's
    assert not reproduce.finished(tmp_path, ["experiment=x", "trainer.steps=5000"])
    results.write_text(json.dumps({"overrides": started}))  # results that record their command need no times
    assert reproduce.finished(tmp_path, ["experiment=x", "trainer.steps=5000"])
    overrides.write_text("- experiment=x\n- trainer.steps=20000\n")  # resumed to 20,000 steps and stopped
    assert not reproduce.finished(tmp_path, ["experiment=x", "trainer.steps=20000"])


def test_a_short_run_keeps_its_checkpoints_for_a_fresh_checkout_and_its_curve_joins_the_recorded_one(reproduce, tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "CHECKPOINTS", tmp_path / "kept")
    trained = tmp_path / "trained"
    trained.mkdir()
    for name in ("last.pt", "best.pt", "top_5000.pt"):
        (trained / name).write_bytes(name.encode())
    reproduce.keep_checkpoints("maml", trained, short=True)
    fresh = tmp_path / "fresh"  # a new machine: outputs/ is not in the repository
    reproduce.restore_checkpoints("maml", fresh)
    assert {p.name: p.read_bytes() for p in fresh.glob("*.pt")} == {p.name: p.read_bytes() for p in trained.glob("*.pt")}
    (fresh / "last.pt").write_bytes(b"newer")
    reproduce.restore_checkpoints("maml", fresh)  # a folder with its own last.pt keeps it
    assert (fresh / "last.pt").read_bytes() == b"newer"
    reproduce.keep_checkpoints("maml", trained, short=False)  # the budget reached: nothing kept
    assert not (tmp_path / "kept" / "maml").exists()
    monkeypatch.setattr(reproduce, "KEEP_AT_MOST_MB", 1e-6)
    reproduce.keep_checkpoints("maml", trained, short=True)  # too big for the repository: left in the run folder
    assert not (tmp_path / "kept" / "maml").exists() and (trained / "last.pt").exists()
    recorded = [[1000, 0.5], [2000, 0.6], [3000, 0.7]]
    resumed = reproduce.joined_curve(recorded, [(3000, 0.71), (4000, 0.8)], trained_from=2010)
    assert resumed == [[1000, 0.5], [2000, 0.6], [3000, 0.71], [4000, 0.8]]
    # trained again from the start, validated less often: nothing of the record is kept
    assert reproduce.joined_curve(recorded, [(2000, 0.4)], trained_from=10) == [[2000, 0.4]]
    # resumed on another machine, the record names both, each once however often it trained there
    assert reproduce.joined_machines("A then B", "B") == "A then B" and reproduce.joined_machines(None, "B") == "B"
    assert reproduce.joined_machines("A", "B", "A") == "A then B then A"


def test_a_run_that_starts_from_another_counts_the_steps_behind_its_weights_against_its_budget(reproduce, tmp_path, monkeypatch):
    for name in ("RUNS", "RESULTS", "CHECKPOINTS"):
        monkeypatch.setattr(reproduce, name, tmp_path / name.lower())
    spec = {"train": ["experiment=x", "trainer.steps=57000"], "starts_from": "first", "full_steps": 100000, "rows": []}
    folder = reproduce.RUNS / "second"  # trained to its end: the driver only records it
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("[]\n")
    (folder / "results.json").write_text(json.dumps({"overrides": [*reproduce.run_overrides(spec), *reproduce.DRIVER_OVERRIDES], "steps": 57000, "metric": "acc"}))
    (folder / "last.pt").write_bytes(b"weights")
    reproduce.reproduce("second", spec, prior_steps=43000)  # 43,000 + 57,000: the budget reached
    assert not (reproduce.CHECKPOINTS / "second").exists()
    (reproduce.RESULTS / "second.json").unlink()
    reproduce.reproduce("second", spec, prior_steps=0)  # 57,000 of 100,000: kept for a fresh checkout
    assert (reproduce.CHECKPOINTS / "second" / "last.pt").read_bytes() == b"weights"


def test_a_run_that_starts_from_another_trains_from_its_weights_and_counts_its_steps_and_minutes(reproduce):
    plan = {"runs": {
        "relationnet_first": {"train": ["experiment=x", "trainer.steps=20000"], "paper_steps": "1,000,000", "rows": []},
        "relationnet_decayed": {"train": ["experiment=x", "scheduler.step_size=1000"], "starts_from": "relationnet_first",
                                "paper_steps": "1,000,000", "full_steps": 1000000,
                                "rows": [{"setting": "20-way 1-shot", "paper": 97.6, "source": "Sung", "protocol": "p"}]}}}
    command = reproduce.train_command("relationnet_decayed", plan["runs"]["relationnet_decayed"])
    assert f"init_from={reproduce.RUNS / 'relationnet_first'}" in command
    decayed = record(0.97)
    decayed["machine"] = "a GPU"
    table = reproduce.render(plan, {"relationnet_first": record(0.95), "relationnet_decayed": decayed})
    assert table.count("| relationnet |") == 0 and table.count("| protonet | omniglot | 20-way 1-shot |") == 1  # one row
    # from the first run's best weights, of step 19,000: 19,000 + 20,000 steps, best at 19,000 + 19,000;
    # its minutes count every step trained, 30 + 30
    assert "| 39,000 (19,000 + 20,000; 1,000,000) | 38000 (95.0; last 94.9) | 60 (25.6 h for 1,000,000 steps) |" in table
    assert "1.0 training hours" in table
    assert "| a CPU, 2 cores then a GPU; bf16 |" in table  # the machines of both runs, in order
    # a run testing its last weights (train_on_val: validation saw its classes) names no validation step
    last = record(0.97)
    last["results"]["tested"] = {"weights": "last", "step": 20000}
    table = reproduce.render(plan, {"relationnet_first": record(0.95), "relationnet_decayed": last})
    assert "| — (the last weights, of step 39,000) |" in table
