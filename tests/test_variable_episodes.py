"""episode=variable: Meta-Dataset's sampler (ways, balanced queries, support size and per-class caps,
log-uniform imbalance), seeded and resumable; methods that read labels train on it, others are refused."""

from __future__ import annotations

import pytest
import torch

from metarun.build import build_trainer
from metarun.data.synthetic import make_synthetic
from metarun.episodes import EpisodeSampler, EpisodeSpec, VariableRules
from metarun.errors import MetarunError
from metarun.rescore import rescore
from metarun.variable_episodes import FixedVariableEpisodes, draw_episode, episode_of, variable_meta_batch
from tests.helpers import compose_run, trained_run

RULES = VariableRules()


def episodes(split, count: int, seed: int = 0, rules: VariableRules = RULES):
    generator = torch.Generator().manual_seed(seed)
    return [episode_of(split, draw_episode(split, rules, generator)) for _ in range(count)]


def test_ways_queries_and_support_follow_meta_datasets_rules():
    split = make_synthetic(train_classes=64, images_per_class=240).train  # 240 images: the 100-shot cap can bind
    drawn = episodes(split, 60)
    ways = [batch.ways for batch in drawn]
    assert min(ways) >= 5 and max(ways) <= 50 and len(set(ways)) > 10  # uniform over 5..50
    for batch in drawn:
        shots, queries = batch.support_y[0].bincount(minlength=batch.ways), batch.query_y[0].bincount(minlength=batch.ways)
        assert (queries == 10).all()  # min(10, 240 // 2), the same for every class
        assert shots.min() >= 1 and shots.max() <= 100 and shots.sum() <= 500
        assert torch.equal(batch.support_y[0], batch.support_y[0].sort().values)  # class by class
        assert len(set(batch.classes[0].tolist())) == batch.ways
    assert any(len(set(batch.support_y[0].bincount().tolist())) > 1 for batch in drawn)  # unbalanced shots


def test_a_small_split_caps_ways_by_its_classes_and_queries_by_half_its_images():
    split = make_synthetic(train_classes=7, images_per_class=12).train
    for batch in episodes(split, 20):
        assert 5 <= batch.ways <= 7 and (batch.query_y[0].bincount() == 6).all()
        assert batch.support_y[0].bincount().max() <= 12 - 6  # a class's shots leave room for its queries


def variable_sampler(split, seed: int) -> EpisodeSampler:
    return EpisodeSampler(split, EpisodeSpec(5, 1, 1, variable=RULES), seed, meta_batch=variable_meta_batch)


def test_the_sampler_is_seeded_and_resumes_its_stream():
    split = make_synthetic().train
    sampler = variable_sampler(split, seed=0)
    sampler.sample(3)
    state = sampler.state_dict()
    following = sampler.sample(3)
    resumed = variable_sampler(split, seed=0)
    resumed.load_state_dict(state)
    again = resumed.sample(3)
    assert following.tasks == again.tasks == 3
    for a, b in zip(following.split(1), again.split(1)):
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    other = variable_sampler(split, seed=1).sample(3).split(1)
    assert any(a.support_x.shape != b.support_x.shape for a, b in zip(following.split(1), other))


def test_fixed_variable_episodes_are_the_same_for_the_same_seed():
    split = make_synthetic().test
    first, second = (list(FixedVariableEpisodes(split, RULES, 5, seed=0, purpose="test").batches(25)) for _ in range(2))
    assert len(first) == 5 and all(batch.tasks == 1 for batch in first)
    assert all(torch.equal(a.support_x, b.support_x) for a, b in zip(first, second))


def test_protonet_trains_and_tests_on_variable_episodes(tmp_path):
    cfg, choices = compose_run(["debug=smoke", "logger=none", "algo=protonet", "episode=variable", "episode.max_ways=8",
                                "episode.queries=4"])
    results = build_trainer(cfg, tmp_path, choices).fit()
    assert results["test"]["episodes"] == 8 and 0 <= results["test"]["acc"] <= 1


def test_maml_scores_each_episode_with_its_first_ways_outputs_of_a_head_of_the_most_ways(tmp_path):
    cfg, choices = compose_run(["debug=smoke", "logger=none", "algo=maml", "episode=variable", "episode.max_ways=8",
                                "episode.queries=4"])
    trainer = build_trainer(cfg, tmp_path, choices)
    assert trainer.algorithm.net[1].out_features == 8
    batch = next(trainer.test_episodes.batches(1))
    with torch.no_grad():
        output = trainer.algorithm.eval().step(batch, train=False)
    assert output.predictions[cfg.algo.eval_inner_steps].shape == (1, batch.query_y.shape[1], batch.ways)
    assert 0 <= trainer.fit()["test"]["acc"] <= 1


@pytest.mark.parametrize("algo", ["reptile", "snail"])
def test_a_method_that_needs_fixed_ways_and_shots_is_refused_in_one_line(algo, tmp_path):
    cfg, choices = compose_run(["debug=smoke", "logger=none", f"algo={algo}", "episode=variable"])
    with pytest.raises(MetarunError, match="episode=variable episodes differ in ways and shots"):
        build_trainer(cfg, tmp_path, choices)


def test_metarun_eval_names_variable_episodes_as_such(tmp_path):
    run = trained_run(tmp_path / "run", ["debug=smoke", "logger=none", "algo=protonet", "episode=variable", "episode.max_ways=8"])
    result, path = rescore(run, ["trainer.test_episodes=4"])
    assert path.name == "eval_synthetic_5-8way_variableshot_max10q_4ep_seed0.json" and result["setting"]["shots"] == "variable"
