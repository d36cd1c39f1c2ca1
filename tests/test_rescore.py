"""metarun-eval: a trained run's best weights scored again on other fixed test episodes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from metarun.errors import MetarunError
from metarun.rescore import main, rescore

RUN_ARGS = ["debug=smoke", "logger=none", "algo=protonet", "episode.ways=3", "episode.queries=4", "trainer.test_episodes=12"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One ProtoNet run on synthetic data, trained by the `metarun` command (it writes .hydra/overrides.yaml)."""
    run = tmp_path_factory.mktemp("rescore") / "run"
    metarun = Path(sys.executable).with_name("metarun")
    done = subprocess.run([str(metarun), *RUN_ARGS, f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return run


def test_with_no_overrides_it_repeats_the_runs_own_test_exactly(trained_run):
    result, path = rescore(trained_run, [])
    trained = json.loads((trained_run / "results.json").read_text())
    assert result["test"] == trained["test"]  # the same fixed episodes, the same best weights
    assert path.name == "eval_synthetic_3way_1shot_4q_12ep_seed0.json"
    assert json.loads(path.read_text())["test"] == trained["test"]


def test_other_episodes_score_the_same_model_elsewhere_and_are_named_by_their_setting(trained_run):
    trained = json.loads((trained_run / "results.json").read_text())
    result, path = rescore(trained_run, ["episode.ways=2", "episode.shots=2", "trainer.test_episodes=20", "eval_seed=3"])
    assert path.name == "eval_synthetic_2way_2shot_4q_20ep_seed3.json"
    assert result["setting"] == {"data": "synthetic", "ways": 2, "shots": 2, "queries": 4, "episodes": 20, "eval_seed": 3}
    assert result["test"]["episodes"] == 20
    assert result["test"]["acc"] != trained["test"]["acc"]
    assert result["weights"] == "best.pt"
    assert result["command"].endswith("episode.ways=2 episode.shots=2 trainer.test_episodes=20 eval_seed=3")


def test_a_change_that_would_score_another_model_is_refused_in_one_line(trained_run):
    for change in ("seed=1", "backbone.filters=8", "optim.lr=0.5"):
        with pytest.raises(MetarunError, match="scores the run's trained model, so .* cannot change"):
            rescore(trained_run, [change])


def test_the_command_answers_bad_input_in_one_line(trained_run, tmp_path, capsys):
    for args, message in [([], "usage: metarun-eval"), ([f"run={tmp_path}"], "has no last.pt"),
                          ([f"run={trained_run}", "episode=nope"], "Could not find 'episode/nope'"),
                          ([f"run={trained_run}", "loose"], "unknown argument loose")]:
        if not args:
            main(["--help"])
            assert message in capsys.readouterr().out
            continue
        with pytest.raises(SystemExit):
            main(args)
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    copied = tmp_path / "copied"
    shutil.copytree(trained_run, copied, ignore=shutil.ignore_patterns(".hydra"))
    with pytest.raises(MetarunError, match="overrides.yaml is missing"):
        rescore(copied, [])


def test_a_final_model_trained_on_the_validation_classes_too_is_scored_with_its_own_heads(tmp_path):
    run = tmp_path / "final"
    metarun = Path(sys.executable).with_name("metarun")
    done = subprocess.run([str(metarun), "debug=smoke", "logger=none", "algo=baseline", "train_on_val=true",
                           "trainer.test_weights=last", "trainer.test_episodes=6", f"hydra.run.dir={run}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result, _ = rescore(run, [])  # Baseline's pre-training head has train + val classes
    assert result["test"] == json.loads((run / "results.json").read_text())["test"] and result["weights"] == "last.pt"
