"""Checkpoints hold tensors and plain values only: a crafted one is refused before its pickle runs."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from metarun import checkpoints
from metarun.build import build_trainer, train
from metarun.errors import MetarunError
from metarun.predict import predict
from tests.helpers import NARROW, SMOKE, compose_run


class RunsCode:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a crafted file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_run_writes_checkpoints_that_load_weights_only(tmp_path):
    cfg, choices = compose_run(["debug=smoke", "logger=none", "scheduler=cosine"])
    train(cfg, tmp_path, choices)
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / name, map_location="cpu", weights_only=True)
        assert "algorithm" in state


def test_random_states_survive_the_plain_form():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    saved = checkpoints.rng_states()
    expected = random.random(), np.random.rand(), torch.rand(1)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoints.restore_rng_states(saved)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_a_crafted_checkpoint_is_refused_in_one_line_and_its_payload_never_runs(tmp_path, name):
    marker = tmp_path / "payload-ran"
    torch.save({"algorithm": RunsCode(marker), "metadata": {}}, tmp_path / name)
    with pytest.raises(MetarunError, match="holds more than tensors and plain values, so it was not loaded"):
        checkpoints.load(tmp_path / name)
    assert not marker.exists()


def test_resuming_or_predicting_with_a_crafted_checkpoint_is_refused(tmp_path):
    cfg, choices = compose_run(["debug=smoke", "logger=none", "algo=protonet"])
    train(cfg, tmp_path, choices)
    marker = tmp_path / "payload-ran"
    torch.save({"algorithm": RunsCode(marker), "metadata": {}}, tmp_path / "last.pt")
    resume, _ = compose_run(["debug=smoke", "logger=none", "algo=protonet", "trainer.resume=true"])
    with pytest.raises(MetarunError, match="last.pt holds more than tensors"):
        train(resume, tmp_path, choices)
    with pytest.raises(MetarunError, match="holds more than tensors"):
        predict(tmp_path, tmp_path, [])
    assert not marker.exists()


def test_an_option_added_since_a_run_was_saved_does_not_block_its_resume_but_a_changed_one_does():
    from metarun.checkpoints import config_differences

    saved = {"trainer": {"steps": 10, "grad_clip": 0.5}, "algo": {"inner_lr": 0.4}, "data": {"root": "/a"}}
    now = {"trainer": {"steps": 20, "grad_clip": 0.5, "test_weights": "best"}, "algo": {"inner_lr": 0.4},
           "data": {"root": "/elsewhere"}, "train_on_val": False}
    assert config_differences(saved, now) == []  # more steps, the data moved, two options metarun gained since
    assert config_differences(saved, {**now, "algo": {"inner_lr": 0.1}}) == ["algo.inner_lr"]
    assert config_differences(saved, {"trainer": {"steps": 10}, "data": {"root": "/a"}}) == ["algo.inner_lr", "trainer.grad_clip"]


def test_init_from_starts_a_new_run_from_another_runs_best_weights_with_a_fresh_optimiser(tmp_path):
    first = tmp_path / "first"
    cfg, choices = compose_run([*SMOKE, "algo=protonet", NARROW])
    train(cfg, first, choices)
    best = checkpoints.load(first / "best.pt")["algorithm"]
    for source in (first, first / "best.pt"):  # the run folder or one of its checkpoints
        cfg, choices = compose_run([*SMOKE, "algo=protonet", NARROW, f"init_from={source}", "scheduler=step"])
        trainer = build_trainer(cfg, tmp_path / "second", choices)
        weights = trainer.algorithm.state_dict()
        assert weights.keys() == best.keys() and all(torch.equal(weights[key].cpu(), best[key]) for key in best)
        assert trainer.progress.step == 0 and not trainer.optimizer.state


def test_init_from_weights_of_another_architecture_or_no_run_is_refused_in_one_line(tmp_path):
    cfg, choices = compose_run([*SMOKE, "algo=protonet", NARROW])
    train(cfg, tmp_path / "narrow", choices)
    wide, choices = compose_run([*SMOKE, "algo=protonet", f"init_from={tmp_path / 'narrow'}"])
    with pytest.raises(MetarunError, match=r"do not fit algo=protonet backbone=conv4: .* has shape") as refused:
        build_trainer(wide, tmp_path / "wide", choices)
    assert "\n" not in str(refused.value)
    nowhere, choices = compose_run([*SMOKE, "algo=protonet", f"init_from={tmp_path / 'nowhere'}"])
    with pytest.raises(MetarunError, match="no such run folder or checkpoint file"):
        build_trainer(nowhere, tmp_path / "wide", choices)
