"""End to end through build.py and the trainer: a smoke run, resume, reproducibility, bad input."""

from __future__ import annotations

import json
import logging
import math
import os
import signal

import pytest
import torch

from metarun.build import build_trainer, train
from metarun.errors import MetarunError
from metarun.interrupts import RunInterrupted
from metarun.loggers import NullLogger
from metarun.trainer import Trainer
from tests.helpers import NARROW, compose_run


def read_results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_a_smoke_run_writes_checkpoints_results_and_tensorboard_events(smoke_cfg, tmp_path):
    cfg, choices = smoke_cfg("logger=tensorboard")
    results = train(cfg, tmp_path, choices)
    assert {"best.pt", "last.pt", "results.json", "tb"} <= {p.name for p in tmp_path.iterdir()}
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert [p for p in (tmp_path / "tb").iterdir() if p.is_dir()] == []  # no stray hparams sub-run
    saved = read_results(tmp_path)
    assert saved["test"]["acc"] == results["test"]["acc"]
    assert 0 <= saved["test"]["acc"] <= 1 and saved["test"]["acc_ci95"] >= 0
    assert saved["test"]["episodes"] == cfg.trainer.test_episodes
    assert saved["steps"] == cfg.trainer.steps and saved["train"]["tasks_per_s"] > 0
    assert (saved["algorithm"], saved["data"], saved["ways"], saved["shots"]) == ("maml", "synthetic", 5, 1)
    assert "val" in saved and "best_acc" in saved["val"] and saved["wall_s"] > 0


def test_tensorboard_has_train_val_test_scalars_and_one_hparams_entry(smoke_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, choices = smoke_cfg("logger=tensorboard")
    train(cfg, tmp_path, choices)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/acc", "test/acc"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    plugin = events.PluginTagToContent("hparams")
    # The session alone: TensorBoard derives the table's columns from every run (tests/test_hparams.py).
    assert "_hparams_/session_start_info" in plugin and "_hparams_/session_end_info" in plugin
    assert "_hparams_/experiment" not in plugin
    assert {"test/acc_ci95", "val/best_acc", "train/minutes", "train/tasks_per_s"} <= tags


@pytest.mark.parametrize("algo", ["maml", "fomaml", "anil", "protonet", "metasgd", "mamlpp", "reptile", "matchingnet",
                                  "relationnet", "siamese", "baseline", "baselinepp", "imp"])
def test_every_algorithm_runs_end_to_end(smoke_cfg, tmp_path, algo):
    cfg, choices = smoke_cfg(f"algo={algo}", NARROW, *(["algo.eval_inner_steps=5"] if algo == "reptile" else []))
    assert 0 <= train(cfg, tmp_path, choices)["test"]["acc"] <= 1


def test_same_config_and_seed_give_the_same_results(smoke_cfg, tmp_path):
    cfg, choices = smoke_cfg()
    first = train(cfg, tmp_path / "a", choices)
    second = train(cfg, tmp_path / "b", choices)
    assert first["test"] == second["test"] and first["val"] == second["val"]


def test_deterministic_kernels_are_switched_on_and_the_results_repeat(smoke_cfg, tmp_path):
    cfg, choices = smoke_cfg("deterministic=true")
    try:
        first = train(cfg, tmp_path / "a", choices)
        assert torch.are_deterministic_algorithms_enabled()
        assert train(cfg, tmp_path / "b", choices)["test"] == first["test"]
    finally:
        torch.use_deterministic_algorithms(False)


def test_every_algorithm_and_training_seed_is_tested_on_the_same_fixed_episodes(smoke_cfg, tmp_path):
    def built(*overrides):
        cfg, choices = smoke_cfg(*overrides)
        return build_trainer(cfg, tmp_path / "_".join(overrides), choices)

    trainers = [built("algo=maml", "seed=0"), built("algo=protonet", "seed=0"), built("algo=maml", "seed=7")]
    for trainer in trainers[1:]:
        assert (trainer.test_episodes.draws[0] == trainers[0].test_episodes.draws[0]).all()
        assert (trainer.val_episodes.draws[0] == trainers[0].val_episodes.draws[0]).all()
    assert not (built("eval_seed=1").test_episodes.draws[0] == trainers[0].test_episodes.draws[0]).all()


# Annealing clocks and schedules (MAML++), and inner minibatches drawn from the global generator
# (Reptile) must resume exactly too.
ANNEALED = ["algo=mamlpp", "algo.multi_step_loss_steps=4", "algo.inner_steps=2", "algo.eval_inner_steps=2", "scheduler=cosine"]
REPTILE = ["algo=reptile", "algo.eval_inner_steps=5", "optim=sgd", "optim.lr=1.0", "optim.momentum=0.0", "scheduler=linear"]


def on_meta_batch(trainer: Trainer, n: int, action) -> Trainer:
    """Call `action` as `trainer` draws its n-th meta-batch (during step n of a fresh run): a crash or a signal."""
    sample, drawn = trainer.sampler.sample, [0]

    def drawing(*args):
        drawn[0] += 1
        if drawn[0] == n:
            action()
        return sample(*args)

    trainer.sampler.sample = drawing
    return trainer


def crash():
    raise KeyboardInterrupt


@pytest.mark.parametrize("algo", [[], ANNEALED, REPTILE, [*REPTILE, "algo.inner_state=carried"]],
                         ids=["maml", "mamlpp", "reptile", "reptile-carried-adam"])
def test_a_run_stopped_half_way_and_resumed_ends_with_the_same_results(smoke_cfg, tmp_path, caplog, algo):
    overrides = ("trainer.steps=6", "trainer.eval_every=2", NARROW, *algo)
    cfg, choices = smoke_cfg(*overrides)
    straight = train(cfg, tmp_path / "straight", choices)
    with pytest.raises(KeyboardInterrupt):
        on_meta_batch(build_trainer(cfg, tmp_path / "resumed", choices), 5, crash).fit()
    assert not (tmp_path / "resumed" / "results.json").exists() and (tmp_path / "resumed" / "last.pt").exists()
    with caplog.at_level(logging.INFO, logger="metarun"):
        resumed = train(*smoke_cfg(*overrides, "trainer.resume=true")[:1], tmp_path / "resumed", choices)
    # It continued from the last validation's checkpoint, not from the start.
    assert f"resuming {tmp_path / 'resumed' / 'last.pt'} from step 4 of 6" in caplog.text
    assert resumed["test"] == straight["test"]
    assert resumed["val"] == straight["val"]


class Recorder(NullLogger):
    """A logger that keeps the scalars it is given."""

    def __init__(self):
        self.scalars: dict[str, list[float]] = {}

    def log_scalars(self, scalars, step):
        for name, value in scalars.items():
            self.scalars.setdefault(name, []).append(value)


def test_overfitting_one_meta_batch_drives_the_training_loss_down(tmp_path):
    cfg, choices = compose_run(["debug=overfit", "logger=none", "algo=protonet", "trainer.steps=40", "trainer.meta_batch_size=1", "trainer.progress=false",
                                "trainer.log_every=1", "trainer.eval_every=40"])
    trainer = build_trainer(cfg, tmp_path, choices)
    trainer.logger = Recorder()
    trainer.fit()
    losses = trainer.logger.scalars["train/loss"]
    assert len(losses) == 40 and losses[-1] < 0.2 * losses[0]


BAD_INPUTS = [
    (["episode.ways=30"], "episode.ways=30 is more than the 24 classes of the val split of synthetic"),
    (["episode.train_ways=70", "algo=protonet"], "episode.train_ways=70 is more than the 64 classes"),
    (["episode.shots=10", "episode.queries=15"], "10 \\+ 15 is more than the 20 images per class"),
    (["episode.ways=1"], "episode.ways=1 is invalid: it must be at least 2 for classification, 1 for regression"),
    (["episode.shots=0"], "episode.shots=0 is invalid"),
    (["trainer.steps=0"], "trainer.steps=0 is invalid: it must be a positive integer"),
    (["trainer.meta_batch_size=-1"], "trainer.meta_batch_size=-1 is invalid"),
    (["optim.lr=0"], "optim.lr=0 is invalid: a learning rate must be positive"),
    (["algo.inner_lr=-0.1"], "algo.inner_lr=-0.1 is invalid"),
    (["algo.eval_inner_steps=-1"], "algo.eval_inner_steps=-1 is invalid"),
    (["episode.train_ways=10"], "has a head of episode.ways=5 outputs, so episode.train_ways=10 must equal it"),
    (["device=tpu"], "device='tpu' is not known"),
    (["trainer.resume=true"], "trainer.resume=true but there is no checkpoint at"),
    (["+trainer.patience=3"], "trainer.patience is not a setting of the training loop \\(trainer has: steps,"),
    (["+trainer.step=3"], "trainer.step is not a setting of the training loop; did you mean trainer.steps?"),
    (["episode.ways=0"], "episode.ways=0 is invalid: it must be at least 2 for classification, 1 for regression"),
    (["trainer.on_nonfinite=ignore"], "trainer.on_nonfinite='ignore' is not known"),
    (["trainer.test_ensemble=0"], "trainer.test_ensemble=0 is invalid: it must be a positive integer"),
    (["trainer.test_ensemble=3", "data=sinusoid", "backbone=mlp", "episode=sinusoid_10shot"],
     "trainer.test_ensemble=3 averages class probabilities; this data set is a regression task"),
    (["data=image_folder"], "data.root has no value \\(\\?\\?\\?\\); give it on the command line"),
    (["data=cifar_fs", "data.augment.jitter=2"], "jitter in \\[0, 1\\)"),
    (["backbone=resnet12", "backbone.drop_rate=1.5"], "backbone.drop_rate=1.5 is invalid"),
]


@pytest.mark.parametrize("overrides,message", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_fails_before_training_with_one_line(smoke_cfg, tmp_path, overrides, message):
    cfg, choices = smoke_cfg(*overrides)
    with pytest.raises(MetarunError, match=message) as error:
        train(cfg, tmp_path / "run", choices)
    assert "\n" not in str(error.value)
    assert not list(tmp_path.rglob("*.pt"))  # no training step ran


def test_a_missing_data_root_fails_before_training(tmp_path):
    cfg, choices = compose_run(["logger=none", f"data.root={tmp_path / 'missing'}"])
    with pytest.raises(MetarunError, match="Omniglot not found"):
        build_trainer(cfg, tmp_path / "run", choices)


def test_cuda_without_a_gpu_is_refused(smoke_cfg, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg, choices = smoke_cfg("device=cuda")
    with pytest.raises(MetarunError, match="no CUDA GPU is available"):
        build_trainer(cfg, tmp_path, choices)


def test_an_unwritable_run_folder_is_refused(smoke_cfg, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg, choices = smoke_cfg()
    with pytest.raises(MetarunError, match="cannot be written"):
        build_trainer(cfg, blocker / "run", choices)


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeping_the_last_good_checkpoint(smoke_cfg, tmp_path, monkeypatch):
    cfg, choices = smoke_cfg("trainer.steps=6", "trainer.eval_every=2")
    trainer = build_trainer(cfg, tmp_path, choices)
    poison_at_step_3(trainer, monkeypatch)
    with pytest.raises(MetarunError, match=r"non-finite loss = nan, meta-gradient norm = nan at step 3; the last good checkpoint is .*last.pt \(step 2\)"):
        trainer.fit()
    assert (tmp_path / "last.pt").exists() and not (tmp_path / "results.json").exists()


def test_on_nonfinite_skip_skips_the_update_counts_it_and_finishes(smoke_cfg, tmp_path, monkeypatch):
    cfg, choices = smoke_cfg("trainer.steps=6", "trainer.eval_every=2", "trainer.on_nonfinite=skip")
    trainer = build_trainer(cfg, tmp_path, choices)
    poison_at_step_3(trainer, monkeypatch)
    trainer.fit()
    assert trainer.progress.skipped_steps == 1
    assert all(p.isfinite().all() for p in trainer.algorithm.parameters())


# A 10-step inner loop at rate 0.5 diverges on sinusoids: every validation and test MSE is NaN.
DIVERGING = ["data=sinusoid", "algo=maml", "backbone=mlp", "episode=sinusoid_5shot", "algo.inner_lr=0.5", "algo.eval_inner_steps=10"]


def test_a_non_finite_validation_stops_the_run_in_one_line_keeping_the_last_checkpoint(smoke_cfg, tmp_path):
    cfg, choices = smoke_cfg(*DIVERGING)
    with pytest.raises(MetarunError, match=r"non-finite validation mse = nan at step 2: .* lower the learning rates"):
        train(cfg, tmp_path, choices)
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "best.pt").exists()


def test_skipped_non_finite_validations_are_counted_and_results_stay_valid_json(smoke_cfg, tmp_path, caplog):
    from metarun.cli import lookup

    cfg, choices = smoke_cfg(*DIVERGING, "trainer.on_nonfinite=skip", "logger=tensorboard")
    results = train(cfg, tmp_path, choices)
    assert "test mse is nan over 8 episodes" in caplog.text
    written = json.loads((tmp_path / "results.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert written["test"]["mse"] is None and written["val"]["best_mse"] is None
    assert {"test.mse", "test.mse_ci95"} <= set(written["not_finite"])
    assert written["steps"] == 4 and math.isnan(lookup(results, "val/best_mse"))  # what a sweeper gets: NaN, no traceback


def poison_at_step_3(trainer, monkeypatch):
    """Make the third meta-batch's images NaN, so its loss and meta-gradient are NaN."""
    sample = trainer.sampler.sample
    calls = {"n": 0}

    def poisoned(*args):
        batch = sample(*args)
        calls["n"] += 1
        if calls["n"] == 3:
            batch.query_x = batch.query_x * float("nan")
        return batch

    monkeypatch.setattr(trainer.sampler, "sample", poisoned)


def sigterm() -> None:
    """SIGTERM to this process, as a cluster preempting the job would."""
    os.kill(os.getpid(), signal.SIGTERM)


def test_tensorboard_curves_of_a_resumed_run_have_every_step_once(smoke_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = ("logger=tensorboard", "trainer.steps=6", "trainer.eval_every=2", "trainer.log_every=1")
    cfg, choices = smoke_cfg(*overrides)
    with pytest.raises(KeyboardInterrupt):  # at step 6, after step 5 was logged, while last.pt holds step 4
        on_meta_batch(build_trainer(cfg, tmp_path, choices), 6, crash).fit()
    train(*smoke_cfg(*overrides, "trainer.resume=true")[:1], tmp_path, choices)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("val/acc")] == [2, 4, 6]


def test_sigterm_saves_a_checkpoint_at_the_next_step_and_the_resumed_run_ends_identically(smoke_cfg, tmp_path):
    overrides = ("trainer.steps=6", "trainer.eval_every=4")
    cfg, choices = smoke_cfg(*overrides)
    straight = train(cfg, tmp_path / "straight", choices)
    with pytest.raises(RunInterrupted, match="stopped at step 3 of 6 \\(SIGTERM\\)") as stopped:
        on_meta_batch(build_trainer(cfg, tmp_path / "stopped", choices), 3, sigterm).fit()
    assert stopped.value.exit_code == 0
    resumed = train(*smoke_cfg(*overrides, "trainer.resume=true")[:1], tmp_path / "stopped", choices)
    assert resumed["test"] == straight["test"] and resumed["val"] == straight["val"]


def test_resuming_with_a_different_config_is_refused_naming_the_keys(smoke_cfg, tmp_path):
    cfg, choices = smoke_cfg()
    train(cfg, tmp_path, choices)
    changed, choices = smoke_cfg("trainer.resume=true", "algo=fomaml", "optim.lr=0.01")
    with pytest.raises(MetarunError, match="config differs in algo.first_order, optim.lr; only the step count"):
        train(changed, tmp_path, choices)


def test_resuming_a_different_algorithm_is_refused(smoke_cfg, tmp_path):
    cfg, choices = smoke_cfg()
    train(cfg, tmp_path, choices)
    changed, choices = smoke_cfg("trainer.resume=true", "algo=protonet")
    with pytest.raises(MetarunError, match="config differs in algo._target_"):
        train(changed, tmp_path, choices)


def test_grad_clip_bounds_the_meta_gradient_norm(smoke_cfg, tmp_path):
    import torch

    cfg, choices = smoke_cfg("trainer.grad_clip=0.01", "trainer.steps=1")
    trainer = build_trainer(cfg, tmp_path, choices)
    trainer.fit()  # the gradients of its one step stay on the weights
    grads = [p.grad for p in trainer.algorithm.parameters() if p.grad is not None]
    assert float(torch.nn.utils.get_total_norm(grads)) <= 0.01 + 1e-6


def test_a_run_stopped_before_its_first_validation_can_be_finished_at_that_step(smoke_cfg, tmp_path):
    cfg, choices = smoke_cfg()
    with pytest.raises(RunInterrupted):
        on_meta_batch(build_trainer(cfg, tmp_path, choices), 1, sigterm).fit()
    finished = train(smoke_cfg("trainer.resume=true", "trainer.steps=1")[0], tmp_path, choices)
    assert finished["steps"] == 1 and finished["val"]["best_step"] == 1


def test_a_non_finite_validation_score_never_becomes_the_best(smoke_cfg, tmp_path, monkeypatch):
    nan = {"loss": torch.tensor([float("nan")]), "acc": torch.tensor([float("nan")])}
    monkeypatch.setattr(Trainer, "evaluate", lambda self, episodes: nan)
    cfg, choices = smoke_cfg("trainer.steps=4", "trainer.eval_every=2", "trainer.on_nonfinite=skip")  # by default it stops
    results = train(cfg, tmp_path, choices)
    assert results["val"]["best_acc"] is None and not (tmp_path / "best.pt").exists()
    assert (tmp_path / "results.json").exists()  # tested with the last weights


def test_a_final_model_trains_on_the_validation_classes_too_and_tests_its_last_weights(smoke_cfg, tmp_path):
    cfg, choices = smoke_cfg("algo=protonet")
    plain = build_trainer(cfg, tmp_path / "plain", choices)
    cfg, choices = smoke_cfg("algo=protonet", "train_on_val=true", "trainer.test_weights=last")
    final = build_trainer(cfg, tmp_path / "final", choices)
    assert final.sampler.source.num_classes == plain.sampler.source.num_classes + final.val_episodes.source.num_classes
    assert final.sampler.source.class_names[-1] == final.val_episodes.source.class_names[-1]
    results = final.fit()
    assert results["tested"] == {"weights": "last", "step": cfg.trainer.steps}
    assert plain.fit()["tested"]["weights"] == "best"
