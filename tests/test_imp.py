"""Infinite Mixture Prototypes: ProtoNet at one extreme, nearest neighbour at the other, and a
class of two far-apart groups gets two clusters."""

from __future__ import annotations

import math

import pytest
import torch

from metarun.algorithms import IMP, ProtoNet
from metarun.algorithms.protonet import squared_distances
from tests.helpers import float_batch, tiny_conv


def test_with_an_infinite_threshold_imp_is_protonet():
    batch = float_batch(tasks=2, ways=3, shots=4, queries=3)
    imp = IMP(tiny_conv(), initial_sigma=0.5, threshold=math.inf)  # log-likelihoods -d / (2 * 0.5) + a constant
    protonet = ProtoNet(tiny_conv())
    got, expected = imp.step(batch, train=True), protonet.step(batch, train=True)
    torch.testing.assert_close(got.objective, expected.objective)  # cross-entropy ignores the constant
    torch.testing.assert_close(got.metrics["acc"], expected.metrics["acc"])
    torch.testing.assert_close(got.predictions[0].softmax(-1), expected.predictions[0].softmax(-1))


def test_with_a_zero_threshold_every_example_is_a_cluster_and_imp_is_nearest_neighbour():
    batch = float_batch(tasks=3, ways=3, shots=3, queries=4)
    imp = IMP(tiny_conv(), initial_sigma=1e-4, threshold=0.0).eval()  # a tiny sigma: hard reassignment
    with torch.no_grad():
        support = imp.backbone(batch.support_x.flatten(0, 1)).view(3, 9, -1)
        query = imp.backbone(batch.query_x.flatten(0, 1)).view(3, 12, -1)
        means, owners = imp.clusters(support[0], batch.support_y[0], 3)
        predicted = imp.step(batch, train=False).predictions[0].argmax(-1)
    assert len(means) == 9 and torch.equal(owners.sort().values, batch.support_y[0].sort().values)
    nearest = squared_distances(query, support).argmin(-1)  # [T, M]
    assert torch.equal(predicted, batch.support_y.gather(1, nearest))


def test_a_class_of_two_far_apart_groups_gets_two_clusters_and_a_tight_one_keeps_one():
    torch.manual_seed(0)
    near = lambda centre, n: centre + 0.05 * torch.randn(n, 2)  # noqa: E731
    support = torch.cat([near(torch.tensor([0.0, 0.0]), 3), near(torch.tensor([10.0, 0.0]), 3),  # class 0: two groups
                         near(torch.tensor([5.0, 5.0]), 6)])  # class 1: one
    labels = torch.tensor([0] * 6 + [1] * 6)
    imp = IMP(tiny_conv(), initial_sigma=1.0, threshold=4.0)
    means, owners = imp.clusters(support, labels, 2)
    assert owners.tolist().count(0) == 2 and owners.tolist().count(1) == 1
    centres = sorted(means[owners == 0].tolist())
    assert centres[0] == pytest.approx([0.0, 0.0], abs=0.2) and centres[1] == pytest.approx([10.0, 0.0], abs=0.2)
    # The paper's lambda splits the same class too: its rho is the spread of the class means.
    formula = IMP(tiny_conv(), initial_sigma=1.0)
    assert formula.limit(torch.stack([support[:6].mean(0), support[6:].mean(0)])) > 0


def test_the_embeddings_and_sigma_learn_and_sigma_is_read_through_the_likelihoods():
    batch = float_batch(tasks=2, ways=3, shots=3, queries=2)
    imp = IMP(tiny_conv(), threshold=0.5)
    imp.step(batch, train=True).objective.backward()
    assert imp.log_sigma.grad is not None and torch.isfinite(imp.log_sigma.grad)
    assert all(p.grad is not None for p in imp.backbone.parameters())
