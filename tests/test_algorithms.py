"""Unit properties of each algorithm on tiny networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metarun.algorithms import MAML, ProtoNet
from metarun.algorithms.base import class_means, gradient_surrogate
from tests.helpers import meta_gradient, random_batch, tiny_conv


def maml(**kwargs) -> MAML:
    return MAML(tiny_conv(), ways=3, inner_lr=0.3, **kwargs).double()


def test_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_weights():
    algorithm = maml(inner_steps=2, first_order=True)
    batch = random_batch(tasks=1)
    got = meta_gradient(algorithm, batch)
    # Reference: plain autograd, adapting a detached copy, then the query gradient there.
    params = {n: p.detach().clone().requires_grad_() for n, p in algorithm.net.named_parameters()}
    for _ in range(2):
        loss = F.cross_entropy(functional_call(algorithm.net, params, (batch.support_x[0],)), batch.support_y[0])
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {n: (p - 0.3 * g).detach().requires_grad_() for (n, p), g in zip(params.items(), grads)}
    query_loss = F.cross_entropy(functional_call(algorithm.net, params, (batch.query_x[0],)), batch.query_y[0])
    expected = torch.cat([g.flatten() for g in torch.autograd.grad(query_loss, list(params.values()))])
    torch.testing.assert_close(got, expected)


def test_second_order_meta_gradient_matches_autograd_with_create_graph_and_differs_from_first_order():
    batch = random_batch(tasks=1)
    second = maml(inner_steps=2)
    got = meta_gradient(second, batch)
    params = dict(second.net.named_parameters())
    fast = params
    for _ in range(2):
        loss = F.cross_entropy(functional_call(second.net, fast, (batch.support_x[0],)), batch.support_y[0])
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
        fast = {n: p - 0.3 * g for (n, p), g in zip(fast.items(), grads)}
    query_loss = F.cross_entropy(functional_call(second.net, fast, (batch.query_x[0],)), batch.query_y[0])
    expected = torch.cat([g.flatten() for g in torch.autograd.grad(query_loss, list(params.values()))])
    torch.testing.assert_close(got, expected)
    first = meta_gradient(maml(inner_steps=2, first_order=True), batch)
    assert (got - first).abs().max() > 1e-4


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_meta_gradient_equals_the_per_task_loop_with_batch_norm(first_order):
    batch = random_batch(tasks=4)
    loop = meta_gradient(maml(inner_steps=2, first_order=first_order, task_batching="loop"), batch)
    vmapped = meta_gradient(maml(inner_steps=2, first_order=first_order, task_batching="vmap"), batch)
    torch.testing.assert_close(vmapped, loop, atol=1e-5, rtol=1e-5)


def test_vmap_and_loop_report_the_same_per_task_metrics_at_evaluation():
    batch = random_batch(tasks=4)
    outputs = []
    for mode in ("loop", "vmap"):
        algorithm = maml(task_batching=mode).eval()
        with torch.no_grad():
            outputs.append(algorithm.step(batch, train=False).metrics)
    torch.testing.assert_close(outputs[0]["loss"], outputs[1]["loss"])
    assert outputs[0]["loss"].shape == (4,)


def test_evaluation_adapts_under_no_grad_and_more_steps_lower_the_support_loss():
    batch = random_batch(tasks=2)
    algorithm = maml(eval_inner_steps=0).eval()
    support = dict(algorithm.learner.named_parameters())
    with torch.no_grad():
        before = algorithm._support_loss(support, batch.support_x[0], batch.support_y[0])
        adapted = algorithm.adapt(support, batch.support_x[0], batch.support_y[0], steps=5)
        after = algorithm._support_loss(adapted, batch.support_x[0], batch.support_y[0])
    assert after < before


def test_maml_keeps_no_batch_norm_running_statistics():
    algorithm = maml()
    assert not any(name.endswith(("running_mean", "running_var")) for name, _ in algorithm.named_buffers())


def test_anil_adapts_only_the_head_and_trains_the_body_in_the_outer_loop():
    algorithm = MAML(tiny_conv(), ways=3, inner_lr=0.3, adapt="head").double()
    adapted = algorithm.adapt(dict(algorithm.learner.named_parameters()), torch.randn(6, algorithm.net[1].in_features, dtype=torch.float64), torch.arange(3).repeat(2), steps=1)
    assert set(adapted) == {"weight", "bias"}
    grads = meta_gradient(algorithm, random_batch())
    body = sum(p.numel() for p in algorithm.net[0].parameters())
    assert grads[:body].abs().sum() > 0  # the body still learns, from the query loss


def test_anil_equals_maml_when_the_body_has_no_parameters():
    body = nn.Sequential(nn.Flatten())
    body.out_features = 64
    batch = random_batch()
    torch.manual_seed(0)
    anil = MAML(body, ways=3, inner_lr=0.3, inner_steps=2, adapt="head").double()
    torch.manual_seed(0)
    full = MAML(body, ways=3, inner_lr=0.3, inner_steps=2).double()
    torch.testing.assert_close(meta_gradient(anil, batch), meta_gradient(full, batch))


def test_prototypes_are_class_means():
    embeddings = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]]])  # [1, 4, 2]
    labels = torch.tensor([[0, 0, 1, 1]])
    torch.testing.assert_close(class_means(embeddings, labels, ways=2), torch.tensor([[[2.0, 0.0], [0.0, 3.0]]]))


def test_protonet_logits_are_negative_squared_distances_to_prototypes():
    algorithm = ProtoNet(tiny_conv()).double().eval()
    batch = random_batch(tasks=2)
    with torch.no_grad():
        logits = algorithm.logits(batch)
        support = algorithm.backbone(batch.support_x[1])
        query = algorithm.backbone(batch.query_x[1])
    prototypes = torch.stack([support[batch.support_y[1] == c].mean(0) for c in range(3)])
    torch.testing.assert_close(logits[1], -torch.cdist(query, prototypes) ** 2)


def test_protonet_reports_per_task_metrics_and_learns_on_a_fixed_batch():
    algorithm = ProtoNet(tiny_conv()).double()
    batch = random_batch(tasks=2, queries=4)
    optimizer = torch.optim.Adam(algorithm.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        output = algorithm.step(batch, train=True)
        optimizer.zero_grad()
        output.objective.backward()
        optimizer.step()
        losses.append(output.metrics["loss"].mean().item())
    assert output.metrics["acc"].shape == (2,)
    assert losses[-1] < 0.5 * losses[0]


def test_gradient_surrogate_has_exactly_the_given_gradient():
    params = [torch.randn(3, requires_grad=True), torch.randn(2, 2, requires_grad=True)]
    grads = [torch.randn(3), torch.randn(2, 2)]
    gradient_surrogate(params, grads).backward()
    assert torch.equal(params[0].grad, grads[0]) and torch.equal(params[1].grad, grads[1])
