"""Scoring on fixed episodes: running or per-pass batch-norm statistics."""

from __future__ import annotations

import pytest
import torch

from metarun.algorithms import ProtoNet
from metarun.compute import Compute
from metarun.data.synthetic import make_synthetic
from metarun.episodes import EpisodeSampler, EpisodeSpec, FixedEpisodes
from metarun.evaluation import evaluate, evaluate_ensemble
from metarun.models import Conv4


def trained_protonet() -> tuple[ProtoNet, FixedEpisodes]:
    torch.manual_seed(0)
    splits = make_synthetic(image_size=16)
    algorithm = ProtoNet(Conv4((1, 16, 16), filters=8))
    optimizer = torch.optim.Adam(algorithm.parameters(), 1e-3)
    sampler = EpisodeSampler(splits.train, EpisodeSpec(5, 1, 5), seed=0)
    for _ in range(5):  # the running statistics move away from their start
        optimizer.zero_grad()
        algorithm.step(sampler.sample(2), train=True).objective.backward()
        optimizer.step()
    return algorithm, FixedEpisodes(splits.test, EpisodeSpec(5, 1, 5), 6, seed=0, purpose="test")


def test_batch_statistics_score_each_pass_with_its_own_and_leave_the_running_ones_alone():
    algorithm, episodes = trained_protonet()
    norms = [m for m in algorithm.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked), m.momentum) for m in norms]
    compute = Compute(torch.device("cpu"))
    running = evaluate(algorithm, episodes, compute, batch_size=1)
    batch = evaluate(algorithm, episodes, compute, batch_size=1, batch_norm="batch")
    assert not torch.allclose(running["loss"], batch["loss"])
    for m, (mean, var, tracked, momentum) in zip(norms, before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert int(m.num_batches_tracked) == tracked and m.momentum == momentum and m.training
    # Reference: each episode scored in training mode (batch statistics), without an update that sticks.
    for index, one in enumerate(episodes.batches(1)):
        with torch.no_grad():
            algorithm.train()
            reference = algorithm.step(one, train=False).metrics["loss"]
        for m, (mean, var, tracked, _) in zip(norms, before):  # training mode moved them: put them back
            m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.fill_(tracked)
        torch.testing.assert_close(batch["loss"][index : index + 1], reference)


def test_an_ensemble_of_one_model_twice_scores_as_the_model():
    algorithm, episodes = trained_protonet()
    compute = Compute(torch.device("cpu"))
    single = evaluate(algorithm, episodes, compute, batch_size=2)
    twice = evaluate_ensemble(algorithm, [algorithm.state_dict()] * 2, episodes, compute, batch_size=2, task=algorithm.task)
    torch.testing.assert_close(twice["acc"], single["acc"])
    torch.testing.assert_close(twice["loss"], single["loss"], atol=1e-4, rtol=1e-4)  # -log p of the mean, p = the model's


def test_a_run_keeps_its_k_best_validations_and_tests_their_mean_prediction(smoke_cfg, tmp_path):
    from metarun.build import build_trainer
    from metarun.checkpoints import load

    cfg, choices = smoke_cfg("algo=protonet", "trainer.test_ensemble=2", "trainer.eval_every=1", "trainer.steps=4")
    trainer = build_trainer(cfg, tmp_path, choices)
    results = trainer.fit()
    kept = sorted(int(p.stem.split("_")[1]) for p in tmp_path.glob("top_*.pt"))
    assert len(kept) == 2 and sorted(results["tested"]["steps"]) == kept
    assert results["tested"]["weights"] == "mean of the 2 best validations"
    weights = [load(tmp_path / f"top_{step}.pt")["algorithm"] for step in results["tested"]["steps"]]
    expected = evaluate_ensemble(trainer.algorithm, weights, trainer.test_episodes, trainer.compute, cfg.trainer.eval_batch_size,
                                 trainer.algorithm.task)
    assert results["test"]["acc"] == pytest.approx(float(expected["acc"].double().mean()))
