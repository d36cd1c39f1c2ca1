"""Sweeps beyond the basic one: the Optuna sweeper, the joblib and submitit launchers, and
metarun-report over a sweep folder. The plugins are the [sweep] and [slurm] extras, which
`make install` (and so CI) installs: without them these tests fail rather than skip."""

from __future__ import annotations

import hydra_plugins.hydra_joblib_launcher  # noqa: F401  (the extras: an ImportError fails the module)
import hydra_plugins.hydra_optuna_sweeper  # noqa: F401
import hydra_plugins.hydra_submitit_launcher  # noqa: F401
import pytest
import yaml
from hydra import compose, initialize_config_dir
from PIL import Image

from metarun.cli import config_dir
from metarun.report import main as report_main
from tests.helpers import metarun, results_under

SHORT = ["debug=smoke", "trainer.steps=2", "trainer.eval_every=1", "trainer.test_episodes=4"]
SMOKE = [*SHORT, "logger=none"]


@pytest.mark.parametrize("search", ["maml_omniglot", "protonet_omniglot"])
def test_every_hparams_search_composes_into_an_optuna_sweep_maximising_the_runs_value(search):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"hparams_search={search}"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.optimized_metric == "val/best_acc"
    assert cfg.hydra.sweeper.params  # something to search


def test_an_optuna_search_of_three_trials_reports_its_best_run(tmp_path):
    done = metarun("hparams_search=protonet_omniglot", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   *SMOKE, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    results = results_under(tmp_path / "sweep")
    assert len(results) == 3
    assert best["best_value"] == pytest.approx(max(r["val"]["best_acc"] for r in results))
    assert set(best["best_params"]) == {"optim.lr", "episode.train_ways"}


def test_a_joblib_sweep_of_four_jobs_and_its_report(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    done = metarun("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "algo=protonet,maml", "seed=0,1",
                   *SHORT, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted((r["algorithm"], r["seed"]) for r in results_under(sweep)) == [
        ("maml", 0), ("maml", 1), ("protonet", 0), ("protonet", 1)]

    report_main([str(sweep)])
    printed = capsys.readouterr().out
    table = (sweep / "report.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| #")]
    assert len(rows) == 4 and printed.split("\nwrote ")[0].strip() in table
    assert "| shots | seed | metric |" in table  # the swept seed is a column; algo is the algorithm column
    assert len((sweep / "report.csv").read_text().splitlines()) == 5
    grouped = (sweep / "report_grouped.csv").read_text().splitlines()
    assert len(grouped) == 3 and all(",2,acc," in line for line in grouped[1:])  # each method's two seeds, averaged
    for name in ("val_curves.png", "test_scores.png"):
        with Image.open(sweep / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] >= 600


def test_the_slurm_preset_composes_and_the_local_submitit_executor_runs_a_sweep(tmp_path):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu" and launcher.gpus_per_node == 1

    done = metarun("-m", "hydra/launcher=submitit_local", "seed=0,1", "algo=protonet", *SMOKE,
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(r["seed"] for r in results_under(tmp_path / "sweep")) == [0, 1]
