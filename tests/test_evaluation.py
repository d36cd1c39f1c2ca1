"""Scoring on fixed episodes: running or per-pass batch-norm statistics."""

from __future__ import annotations

import torch

from metarun.algorithms import ProtoNet
from metarun.compute import Compute
from metarun.data.synthetic import make_synthetic
from metarun.episodes import EpisodeSampler, EpisodeSpec, FixedEpisodes
from metarun.evaluation import evaluate
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
