"""metarun-report on run folders made by hand: rows, order, swept columns, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metarun.report import collect, main, swept_keys, table


def fake_run(folder: Path, algorithm: str, acc: float, overrides: list[str], metric: str = "acc") -> None:
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    results = {"metric": metric, "test": {metric: acc, f"{metric}_ci95": 0.01, "episodes": 600},
               "val": {f"best_{metric}": acc + 0.01, "best_step": 10}, "steps": 100, "wall_s": 120.0,
               "algorithm": algorithm, "data": "omniglot", "ways": 5, "shots": 1}
    (folder / "results.json").write_text(json.dumps(results))


def test_one_row_per_run_best_first_with_the_swept_overrides_as_columns(tmp_path):
    fake_run(tmp_path / "0_algo=maml,seed=0", "maml", 0.90, ["algo=maml", "seed=0", "debug=smoke"])
    fake_run(tmp_path / "1_algo=protonet,seed=0", "protonet", 0.97, ["algo=protonet", "seed=0", "debug=smoke"])
    fake_run(tmp_path / "2_algo=protonet,seed=1", "protonet", 0.95, ["algo=protonet", "seed=1", "debug=smoke"])
    runs = collect(tmp_path)
    assert swept_keys(runs) == ["algo", "seed"]  # debug=smoke is the same everywhere
    header, rows = table(runs)
    assert header[:7] == ["run", "algorithm", "data", "ways", "shots", "algo", "seed"]
    assert [row[0] for row in rows] == ["#1", "#2", "#0"]
    assert rows[0][7:9] == ["acc 97.00%", "± 1.00%"] and rows[0][-1] == "2.0"


def test_regression_runs_are_ordered_lowest_error_first(tmp_path):
    fake_run(tmp_path / "0_seed=0", "maml", 0.5, ["seed=0"], metric="mse")
    fake_run(tmp_path / "1_seed=1", "maml", 0.2, ["seed=1"], metric="mse")
    _, rows = table(collect(tmp_path))
    assert [row[0] for row in rows] == ["#1", "#0"] and rows[0][6] == "mse 0.20"


def test_a_folder_without_runs_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path)])
    assert "no results.json" in str(stopped.value)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing")])
    assert "is not a folder" in capsys.readouterr().err
