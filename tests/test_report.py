"""metarun-report on run folders made by hand: rows, order, swept columns, seeds grouped, files, errors."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest

from metarun.report import collect, main, swept_keys, table, write_report


def fake_run(folder: Path, algorithm: str, acc: float, overrides: list[str], metric: str = "acc", ci: float = 0.01) -> None:
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    results = {"metric": metric, "test": {metric: acc, f"{metric}_ci95": ci, "episodes": 600},
               "val": {f"best_{metric}": acc + 0.01, "best_step": 10}, "steps": 100, "wall_s": 150.0,
               "train": {"seconds": 120.0}, "algorithm": algorithm, "data": "omniglot", "ways": 5, "shots": 1}
    (folder / "results.json").write_text(json.dumps(results))


def seed_sweep(folder: Path) -> None:
    """2 methods x 3 seeds, as `metarun -m algo=maml,protonet seed=0,1,2` lays them out."""
    scores = {"maml": [0.90, 0.92, 0.94], "protonet": [0.97, 0.96, 0.98]}
    for a, algo in enumerate(scores):
        for seed, acc in enumerate(scores[algo]):
            job = 3 * a + seed
            fake_run(folder / f"{job}_algo={algo},seed={seed}", algo, acc, [f"algo={algo}", f"seed={seed}", "debug=smoke"])


def test_one_row_per_run_best_first_with_the_swept_overrides_as_columns(tmp_path):
    fake_run(tmp_path / "0_algo=maml,seed=0,optim.lr=0.01", "maml", 0.90, ["algo=maml", "seed=0", "optim.lr=0.01", "debug=smoke"])
    fake_run(tmp_path / "1_algo=protonet,seed=0,optim.lr=0.001", "protonet", 0.97, ["algo=protonet", "seed=0", "optim.lr=0.001", "debug=smoke"])
    fake_run(tmp_path / "2_algo=protonet,seed=1,optim.lr=0.001", "protonet", 0.95, ["algo=protonet", "seed=1", "optim.lr=0.001", "debug=smoke"])
    runs = collect(tmp_path)
    assert swept_keys(runs) == ["optim.lr", "seed"]  # debug=smoke is the same everywhere; algo is the algorithm column
    header, rows = table(runs)
    assert header[:7] == ["run", "algorithm", "data", "ways", "shots", "optim.lr", "seed"]
    assert len(set(header)) == len(header)
    assert [row[0] for row in rows] == ["#1", "#2", "#0"]
    assert rows[0][7:] == ["acc", 0.97, 0.01, pytest.approx(0.98), 100, 2.0]


def test_regression_runs_are_ordered_lowest_error_first(tmp_path):
    fake_run(tmp_path / "0_seed=0", "maml", 0.5, ["seed=0"], metric="mse")
    fake_run(tmp_path / "1_seed=1", "maml", 0.2, ["seed=1"], metric="mse")
    text, _ = write_report(tmp_path, tmp_path)
    _, rows = table(collect(tmp_path))
    assert [row[0] for row in rows] == ["#1", "#0"] and rows[0][7] == 0.2
    assert "| 0.2 | ± 0.01 |" in text


def test_the_csv_holds_numbers_and_seeds_are_averaged_into_one_row_per_configuration(tmp_path, capsys):
    seed_sweep(tmp_path)
    main([str(tmp_path), "--latex"])
    printed = capsys.readouterr().out
    per_run = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert len(per_run) == 6 and float(per_run[0]["test"]) == 0.98 and float(per_run[0]["test_ci95"]) == 0.01
    grouped = {row["algorithm"]: row for row in csv.DictReader((tmp_path / "report_grouped.csv").open())}
    assert set(grouped) == {"maml", "protonet"} and grouped["maml"]["runs"] == "3"
    assert float(grouped["maml"]["mean_test"]) == pytest.approx(0.92)
    assert float(grouped["maml"]["ci95_over_runs"]) == pytest.approx(1.96 * 0.02 / 3 ** 0.5)  # sample std 0.02 over 3 seeds
    assert float(grouped["maml"]["mean_episode_ci95"]) == pytest.approx(0.01)
    assert grouped["protonet"]["run_ids"] == "#3 #4 #5"
    assert "| protonet | omniglot | 5 | 1 | 3 | acc | 97.00% | ± 1.13% | ± 1.00% |" in printed
    tex = (tmp_path / "report.tex").read_text()
    assert r"protonet & omniglot & 5 & 1 & $97.00 \pm 1.13$ \\" in tex and r"\toprule" in tex
    assert printed.strip().splitlines()[-1] == (f"wrote report.md, report.csv, report_grouped.csv, val_curves.png, "
                                                f"test_scores.png, report.tex to {tmp_path}")


def test_run_ids_stay_unique_across_sweeps_and_plots_lay_out_without_warnings(tmp_path):
    seed_sweep(tmp_path / "2026-11-22_12-00-00")
    seed_sweep(tmp_path / "2026-11-23_09-00-00")
    runs = collect(tmp_path)
    ids = [run.id for run in runs]
    assert len(set(ids)) == 12 and "2026-11-23_09-00-00/#4" in ids
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Tight layout not applied" and friends would fail here
        write_report(tmp_path, tmp_path / "report")
    assert (tmp_path / "report" / "val_curves.png").stat().st_size > 0


def test_group_by_names_the_keys_of_a_configuration(tmp_path):
    seed_sweep(tmp_path)
    text, _ = write_report(tmp_path, tmp_path, group_by=["seed"])  # one group per seed, methods apart
    grouped = list(csv.DictReader((tmp_path / "report_grouped.csv").open()))
    assert len(grouped) == 6 and "Mean over the runs" not in text  # no group holds two runs


def test_a_run_started_again_and_not_finished_keeps_the_overrides_of_its_results(tmp_path):
    fake_run(tmp_path / "0_seed=0", "maml", 0.90, ["seed=0", "trainer.steps=100"])
    fake_run(tmp_path / "1_seed=1", "maml", 0.92, ["seed=1", "trainer.steps=100"])
    for job in tmp_path.iterdir():  # each records its command; job 1 is then resumed to 200 steps and stopped
        results = json.loads((job / "results.json").read_text())
        started = [line[2:] for line in (job / ".hydra" / "overrides.yaml").read_text().splitlines()]
        (job / "results.json").write_text(json.dumps(results | {"overrides": started}))
    (tmp_path / "1_seed=1" / ".hydra" / "overrides.yaml").write_text("- seed=1\n- trainer.steps=200\n")
    runs = collect(tmp_path)
    assert [run.overrides["trainer.steps"] for run in runs] == ["100", "100"]
    assert swept_keys(runs) == ["seed"]
    text, _ = write_report(tmp_path, tmp_path)
    assert "#1 was started again, with `seed=1 trainer.steps=200`, and has not finished" in text
    assert "#0 was started again" not in text


def test_a_folder_without_runs_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path)])
    assert "no results.json" in str(stopped.value)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing")])
    assert "is not a folder" in capsys.readouterr().err
