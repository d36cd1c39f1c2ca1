"""Config composition: every option of every group composes, and every object instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from metarun.algorithms import Algorithm
from metarun.build import build_algorithm, build_backbone, build_trainer, episode_specs
from metarun.cli import config_dir
from metarun.data import DataSplits
from metarun.episodes import EpisodeSampler, EpisodeSpec
from tests.helpers import NARROW_FILTERS, SMOKE, compose_run

CONFIGS = Path(config_dir())


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIGS / group).glob("*.yaml"))


def test_the_config_folder_has_every_group_of_the_design():
    groups = {path.name for path in CONFIGS.iterdir() if path.is_dir()}
    assert {"algo", "backbone", "data", "episode", "optim", "trainer", "logger", "debug", "hydra", "experiment"} <= groups


def test_defaults_are_maml_conv4_omniglot_5way_1shot_adam():
    cfg, choices = compose_run([])
    assert (choices["algo"], choices["backbone"], choices["data"], choices["episode"], choices["optim"]) == (
        "maml", "conv4", "omniglot", "5way_1shot", "adam")
    assert cfg.episode.train_ways == cfg.episode.ways == 5
    assert cfg.trainer.test_episodes == 600


REGRESSION = ["data=sinusoid", "backbone=mlp", "episode=sinusoid_10shot"]
REGRESSION_ONLY = {"pretrain"}


@pytest.mark.parametrize("algo", options("algo"))
def test_every_algorithm_instantiates_and_steps(algo):
    cfg, choices = compose_run(SMOKE + [f"algo={algo}"] + (REGRESSION if algo in REGRESSION_ONLY else []))
    splits: DataSplits = instantiate(cfg.data)
    algorithm = build_algorithm(cfg, splits.train.input_shape, splits.task, torch.device("cpu"), choices)
    assert isinstance(algorithm, Algorithm)
    spec = EpisodeSpec(cfg.episode.train_ways, cfg.episode.shots, cfg.episode.train_queries)
    output = algorithm.step(EpisodeSampler(splits.train, spec, seed=0).sample(2), train=True)
    output.objective.backward()
    assert torch.isfinite(output.objective) and any(p.grad is not None for p in algorithm.parameters())
    assert set(output.metrics) >= {"loss"} and all(values.shape == (2,) for values in output.metrics.values())


@pytest.mark.parametrize("episode", options("episode"))
def test_every_episode_setting_composes(episode):
    cfg, _ = compose_run([f"episode={episode}"])
    train, evaluation = episode_specs(cfg.episode)
    expected = f"sinusoid_{evaluation.shots}shot" if episode.startswith("sinusoid") else f"{evaluation.ways}way_{evaluation.shots}shot"
    if evaluation.sequence:
        expected = f"sequence_{evaluation.ways}way"
    if evaluation.variable:
        expected = "variable"
    assert expected == episode
    assert train.ways == evaluation.ways


@pytest.mark.parametrize("group", ["optim", "logger", "backbone"])
def test_every_option_of_the_object_groups_instantiates(group, tmp_path):
    for option in options(group):
        cfg, _ = compose_run(SMOKE + [f"{group}={option}"])
        if group == "optim":
            assert isinstance(instantiate(cfg.optim)([torch.nn.Parameter(torch.zeros(1))]), torch.optim.Optimizer)
        elif group == "logger":
            instantiate(cfg.logger, log_dir=tmp_path).close()
        else:
            input_shape = (1,) if option == "mlp" else (3, 32, 32)
            assert build_backbone(cfg.backbone, input_shape).out_features > 0


@pytest.mark.parametrize("trainer,device", [("default", "auto"), ("cpu", "cpu"), ("gpu", "cuda")])
def test_trainer_options_set_the_device(trainer, device):
    cfg, _ = compose_run([f"trainer={trainer}"])
    assert cfg.device == device
    assert cfg.trainer.steps > 0


@pytest.mark.parametrize("data", options("data"))
def test_every_data_option_composes_with_a_root_or_generator(data):
    cfg, _ = compose_run([f"data={data}"])
    assert cfg.data._target_.startswith("metarun.data.")


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_says_where_its_number_comes_from(experiment):
    cfg, choices = compose_run([f"experiment={experiment}"])
    text = (CONFIGS / "experiment" / f"{experiment}.yaml").read_text()
    assert ("%" in text or "MSE" in text) and "@package _global_" in text  # the paper's number stands in a comment
    setting = experiment.rsplit("_", 1)[1]
    assert experiment == f"{choices['algo']}_{choices['data'].replace('_', '')}_{setting}"  # e.g. protonet_cifarfs_5w1s
    if cfg.episode.get("protocol") == "sequence":  # Santoro et al.'s: no shots, every step scored
        assert setting == f"{cfg.episode.ways}wseq"
    else:
        assert setting in (f"{cfg.episode.ways}w{cfg.episode.shots}s", f"{cfg.episode.shots}shot")


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_trains_and_tests_under_debug_smoke(experiment, tmp_path):
    # debug=smoke stands synthetic images in for the data; regression keeps its own generated curves.
    # Two steps of one training query per class, a validation and a test of two episodes each show each config runs;
    # `make smoke` runs them all through the CLI for the config's four steps.
    regression = "sinusoid" in experiment
    data = ["data=sinusoid"] if regression else ["trainer.steps=2", "episode.train_queries=1"]
    cfg, choices = compose_run([f"experiment={experiment}", *SMOKE, *data, "trainer.val_episodes=2", "trainer.test_episodes=2",
                                "trainer.eval_batch_size=2"])
    if "filters" in cfg.backbone:  # not every backbone has a width to narrow, so not the NARROW override
        cfg.backbone.filters = NARROW_FILTERS
    test = build_trainer(cfg, tmp_path, choices).fit()["test"]
    if regression:
        assert test["mse"] >= 0
    else:
        assert 0 <= test["acc"] <= 1


@pytest.mark.parametrize("debug", options("debug"))
def test_debug_configs_turn_any_run_into_a_cpu_run_on_synthetic_data(debug):
    cfg, choices = compose_run([f"debug={debug}", "experiment=maml_omniglot_20w1s"])
    assert choices["data"] == "synthetic" and cfg.device == "cpu"


@pytest.mark.parametrize("algo", ["maml", "fomaml", "anil", "mamlpp", "metasgd"])
def test_a_methods_settings_for_one_data_set_come_with_the_pair(algo):
    # The natural command `metarun algo=maml data=sinusoid backbone=mlp` diverged with Omniglot's rate of 0.4.
    cfg, choices = compose_run([f"algo={algo}", "data=sinusoid", "backbone=mlp"])
    assert cfg.algo.inner_lr == 0.01 and choices["algo_data"] == f"{algo}_sinusoid"
    if algo == "metasgd":
        assert list(cfg.algo.inner_lr_range) == [0.005, 0.1] and cfg.algo.eval_inner_steps == 1
    assert compose_run([f"algo={algo}"])[0].algo.inner_lr == (0.1 if algo == "mamlpp" else 0.4)  # Omniglot keeps its own
    assert compose_run([f"algo={algo}", "data=sinusoid", "backbone=mlp", "algo.inner_lr=0.02"])[0].algo.inner_lr == 0.02
    for name in options("algo_data"):
        assert name.split("_", 1)[0] in options("algo") and name.split("_", 1)[1] in options("data")
