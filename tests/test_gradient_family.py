"""Reptile, Meta-SGD and the MAML++ options, each checked against plain autograd on tiny nets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metarun.algorithms import MAML, Reptile
from metarun.algorithms.maml import multi_step_weights
from metarun.errors import MetarunError
from tests.helpers import meta_gradient, random_batch, tiny_conv


def grads_of(algorithm, batch, names=None) -> dict[str, torch.Tensor]:
    """Meta-gradient per parameter name (after one training step's backward)."""
    algorithm.zero_grad()
    algorithm.step(batch, train=True).objective.backward()
    return {n: p.grad.clone() for n, p in algorithm.named_parameters() if p.grad is not None and (names is None or n in names)}


def all_images(batch, t=0):
    return torch.cat([batch.support_x[t], batch.query_x[t]]), torch.cat([batch.support_y[t], batch.query_y[t]])


# Reptile ---------------------------------------------------------------------------------------


def reptile(**kwargs) -> Reptile:
    return Reptile(tiny_conv(), ways=3, inner_optimizer="sgd", inner_lr=0.1, inner_batch_size=100, **kwargs).double()


def test_reptile_meta_gradient_is_theta_minus_the_adapted_theta():
    algorithm = reptile(inner_steps=3)
    batch = random_batch(tasks=1)
    got = grads_of(algorithm, batch)
    # Reference: three full-batch SGD steps with plain autograd on every image of the task.
    x, y = all_images(batch)
    theta = {n: p.detach().clone() for n, p in algorithm.net.named_parameters()}
    fast = {n: p.clone().requires_grad_() for n, p in theta.items()}
    for _ in range(3):
        loss = F.cross_entropy(functional_call(algorithm.net, fast, (x,)), y)
        g = torch.autograd.grad(loss, list(fast.values()))
        fast = {n: (p - 0.1 * gi).detach().requires_grad_() for (n, p), gi in zip(fast.items(), g)}
    for name, value in theta.items():
        torch.testing.assert_close(got[f"net.{name}"], value - fast[name].detach(), rtol=1e-10, atol=1e-12)


def test_reptile_with_one_sgd_step_equals_the_first_order_gradient_on_the_same_data():
    batch = random_batch(tasks=2)
    got = meta_gradient(reptile(inner_steps=1), batch)
    # First-order MAML with no inner step, scored on all of each task's images: the plain gradient.
    x = torch.stack([all_images(batch, t)[0] for t in range(2)])
    y = torch.stack([all_images(batch, t)[1] for t in range(2)])
    joint = type(batch)(x, y, x, y, batch.classes)
    first_order = meta_gradient(MAML(tiny_conv(), ways=3, inner_steps=0, first_order=True).double(), joint)
    torch.testing.assert_close(got, 0.1 * first_order)


def test_reptile_vmap_equals_the_loop_and_adam_moves_toward_lower_loss():
    batch = random_batch(tasks=3)
    torch.manual_seed(5)
    loop = meta_gradient(Reptile(tiny_conv(), ways=3, inner_batch_size=4, inner_steps=4).double(), batch)
    torch.manual_seed(5)
    vmapped = meta_gradient(Reptile(tiny_conv(), ways=3, inner_batch_size=4, inner_steps=4, task_batching="vmap").double(), batch)
    torch.testing.assert_close(vmapped, loop)
    # Evaluation: Adam steps on the support set lower its loss (scored here as the query set).
    algorithm = Reptile(tiny_conv(), ways=3, inner_lr=0.01, eval_inner_steps=20, eval_curve=True).double().eval()
    support_as_query = type(batch)(batch.support_x, batch.support_y, batch.support_x, batch.support_y, batch.classes)
    with torch.no_grad():
        output = algorithm.step(support_as_query, train=False)
    assert output.metrics["loss@0"].shape == (3,) and set(output.predictions) == set(range(11)) | {20}
    assert (output.metrics["loss"] < output.metrics["loss@0"]).all()


def test_reptile_can_carry_one_inner_adam_from_task_to_task_as_the_papers_code():
    torch.manual_seed(0)
    algorithm = Reptile(tiny_conv(), ways=3, inner_lr=0.01, inner_steps=3, inner_batch_size=100, inner_state="carried").double()
    tasks = [random_batch(tasks=1, seed=seed) for seed in (1, 2)]
    got = [grads_of(algorithm, batch) for batch in tasks]  # two meta-iterations, no outer step between
    # Reference: one Adam (TF's, beta1 0, as the paper's code) through both tasks, with one step
    # count and second moment, its weights reset to theta for the second task.
    theta = {n: p.detach().clone() for n, p in algorithm.net.named_parameters()}
    v, step = {n: torch.zeros_like(p) for n, p in theta.items()}, 0
    for batch, carried in zip(tasks, got):
        fast = {n: p.clone() for n, p in theta.items()}
        x, y = all_images(batch)
        for _ in range(3):
            params = {n: p.requires_grad_() for n, p in fast.items()}
            g = dict(zip(params, torch.autograd.grad(F.cross_entropy(functional_call(algorithm.net, params, (x,)), y), list(params.values()))))
            step += 1
            v = {n: 0.999 * v[n] + 0.001 * g[n] ** 2 for n in v}
            fast = {n: (p - 0.01 * (1 - 0.999**step) ** 0.5 * g[n] / (v[n].sqrt() + 1e-8)).detach() for n, p in fast.items()}
        for n, value in theta.items():
            torch.testing.assert_close(carried[f"net.{n}"], value - fast[n], rtol=1e-9, atol=1e-10)  # atol: biases before batch norm, noise-level gradients
    assert int(algorithm.carried.steps) == 6
    # Reset per task (the default), the second task starts from a fresh Adam: another update.
    fresh = Reptile(tiny_conv(), ways=3, inner_lr=0.01, inner_steps=3, inner_batch_size=100).double()
    fresh.load_state_dict({k: v for k, v in algorithm.state_dict().items() if not k.startswith("carried.")})
    first = "net.0.blocks.0.0.weight"
    reset = grads_of(fresh, tasks[1])[first]
    assert ((reset - got[1][first]).norm() / reset.norm()) > 0.05
    with pytest.raises(MetarunError, match="algo.inner_state=carried .* algo.task_batching=loop"):
        Reptile(tiny_conv(), ways=3, inner_state="carried", task_batching="vmap")


# Meta-SGD --------------------------------------------------------------------------------------


def test_metasgd_rates_have_the_weights_shapes_receive_gradients_and_change_after_a_step():
    algorithm = MAML(tiny_conv(), ways=3, inner_lr=0.3, inner_steps=1, learn_inner_lr="per_weight").double()
    weights = dict(algorithm.net.named_parameters())
    assert {n: r.shape for n, r in algorithm.inner_lrs.items()} == {n.replace(".", "__"): p.shape for n, p in weights.items()}
    before = {n: r.detach().clone() for n, r in algorithm.inner_lrs.items()}
    optimizer = torch.optim.SGD(algorithm.parameters(), lr=0.1)
    grads = grads_of(algorithm, random_batch())
    # Every weight's rates learn (a conv bias right before batch norm has no effect, so no gradient).
    learning = [n for n in before if n.endswith("weight")]
    assert len(learning) == 5 and all(grads[f"inner_lrs.{n}"].abs().sum() > 0 for n in learning)
    optimizer.step()
    assert all(not torch.equal(algorithm.inner_lrs[n], before[n]) for n in learning)


def test_metasgd_with_every_rate_at_inner_lr_has_maml_s_meta_gradient_for_the_weights():
    batch = random_batch()
    metasgd = grads_of(MAML(tiny_conv(), ways=3, inner_lr=0.3, inner_steps=2, learn_inner_lr="per_weight").double(), batch)
    maml = grads_of(MAML(tiny_conv(), ways=3, inner_lr=0.3, inner_steps=2).double(), batch)
    for name, grad in maml.items():
        torch.testing.assert_close(metasgd[name], grad)


def test_metasgd_with_unequal_rates_steps_each_weight_by_its_own_rate():
    algorithm = MAML(tiny_conv(), ways=3, inner_steps=1, learn_inner_lr="per_weight", inner_lr_range=(0.01, 0.5)).double()
    batch = random_batch()
    x, y = batch.support_x[0], batch.support_y[0]
    theta = {n: p.detach().clone().requires_grad_() for n, p in algorithm.learner.named_parameters()}
    # Reference: theta - alpha * grad, elementwise, with plain autograd.
    grads = torch.autograd.grad(F.cross_entropy(functional_call(algorithm.learner, theta, (x,)), y), list(theta.values()))
    rates = {n: algorithm.inner_lrs[n.replace(".", "__")].detach() for n in theta}
    assert len({float(r.flatten()[0]) for r in rates.values()}) > 1  # the rates really differ
    with torch.no_grad():
        adapted = algorithm.adapt(theta, x, y, steps=1)
    for (name, weight), g in zip(theta.items(), grads):
        torch.testing.assert_close(adapted[name], weight - rates[name] * g)


def test_an_unknown_rate_kind_or_a_range_without_learned_rates_is_one_line():
    with pytest.raises(MetarunError, match="learn_inner_lr='per_layer' is not known"):
        MAML(tiny_conv(), ways=3, learn_inner_lr="per_layer")
    with pytest.raises(MetarunError, match="inner_lr_range draws learned rates"):
        MAML(tiny_conv(), ways=3, inner_lr_range=(0.1, 0.2))


def test_metasgd_draws_its_initial_rates_from_the_range():
    torch.manual_seed(0)
    rates = torch.cat([r.flatten() for r in MAML(tiny_conv(), ways=3, learn_inner_lr="per_weight", inner_lr_range=(0.005, 0.1)).inner_lrs.values()])
    assert 0.005 <= rates.min() < rates.max() <= 0.1


# MAML++ ----------------------------------------------------------------------------------------


def test_multi_step_weights_start_uniform_sum_to_one_and_end_on_the_last_step():
    assert multi_step_weights(5, 0.0) == pytest.approx([0.2] * 5)
    for progress in (0.0, 0.3, 0.7, 0.99):
        weights = multi_step_weights(5, progress)
        assert sum(weights) == pytest.approx(1.0) and min(weights) >= 0.03 / 5 - 1e-12
        assert weights[-1] >= weights[0]
    assert multi_step_weights(5, 1.0) == [0, 0, 0, 0, 1.0]


def test_multi_step_loss_is_the_weighted_per_step_query_loss_and_plain_maml_once_annealed():
    batch = random_batch(tasks=1)
    plain = meta_gradient(MAML(tiny_conv(), ways=3, inner_lr=0.3, inner_steps=3).double(), batch)
    msl = MAML(tiny_conv(), ways=3, inner_lr=0.3, inner_steps=3, multi_step_loss_steps=10).double()
    early = meta_gradient(msl, batch)
    # Reference: the same weights on the query losses after steps 1..3, with plain autograd.
    params = dict(msl.net.named_parameters())
    fast, objective = params, 0.0
    for weight in multi_step_weights(3, 0.0):
        loss = F.cross_entropy(functional_call(msl.net, fast, (batch.support_x[0],)), batch.support_y[0])
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
        fast = {n: p - 0.3 * g for (n, p), g in zip(fast.items(), grads)}
        objective = objective + weight * F.cross_entropy(functional_call(msl.net, fast, (batch.query_x[0],)), batch.query_y[0])
    expected = torch.cat([g.flatten() for g in torch.autograd.grad(objective, list(params.values()))])
    torch.testing.assert_close(early, expected)
    msl.meta_steps.fill_(10)  # annealed: all the weight on the last step
    torch.testing.assert_close(meta_gradient(msl, batch), plain)


def test_learned_per_step_rates_start_at_the_fixed_rate_and_learn():
    batch = random_batch()
    lslr = MAML(tiny_conv(), ways=3, inner_lr=0.3, inner_steps=2, learn_inner_lr=True).double()
    assert all(torch.equal(r, torch.full((2,), 0.3).double()) for r in lslr.inner_lrs.values())
    got = grads_of(lslr, batch)
    fixed = grads_of(MAML(tiny_conv(), ways=3, inner_lr=0.3, inner_steps=2).double(), batch)
    for name, grad in fixed.items():
        torch.testing.assert_close(got[name], grad)
    assert all(got[f"inner_lrs.{n}"].abs().min() > 0 for n in lslr.inner_lrs if n.endswith("weight"))  # both steps learn


def test_per_step_batch_norm_has_one_learned_copy_per_step_that_the_inner_loop_leaves_alone():
    algorithm = MAML(tiny_conv(), ways=3, inner_lr=0.3, inner_steps=2, per_step_bn=True).double()
    norms = dict(algorithm.step_norms.items())
    assert len(norms) == 4 and all(p.shape == (3, 4) for p in norms.values())  # 2 norms x (weight, bias); steps 0..2
    assert len(algorithm._norm_names) == 4 and not set(algorithm._norm_names) & set(algorithm.fast_weights())
    grads = grads_of(algorithm, random_batch())
    for name in norms:
        per_step = grads[f"step_norms.{name}"]
        assert (per_step.abs().sum(dim=1) > 0).all()  # each step's copy is used and learns
    assert all(p.grad is None for n, p in algorithm.net.named_parameters() if not p.requires_grad)


def test_derivative_order_annealing_is_first_order_then_second_order():
    batch = random_batch(tasks=1)
    first = meta_gradient(MAML(tiny_conv(), ways=3, inner_lr=0.3, inner_steps=2, first_order=True).double(), batch)
    second = meta_gradient(MAML(tiny_conv(), ways=3, inner_lr=0.3, inner_steps=2).double(), batch)
    annealed = MAML(tiny_conv(), ways=3, inner_lr=0.3, inner_steps=2, first_order_steps=1).double()
    torch.testing.assert_close(meta_gradient(annealed, batch), first)
    annealed.end_meta_step()  # the trainer's call after each update
    assert int(annealed.meta_steps) == 1
    torch.testing.assert_close(meta_gradient(annealed, batch), second)


def test_every_maml_plus_plus_option_together_gives_the_same_meta_gradient_under_vmap():
    batch = random_batch(tasks=3)
    options = dict(ways=3, inner_lr=0.3, inner_steps=2, multi_step_loss_steps=10, learn_inner_lr=True, per_step_bn=True)
    loop = grads_of(MAML(tiny_conv(), **options).double(), batch)
    vmapped = grads_of(MAML(tiny_conv(), task_batching="vmap", **options).double(), batch)
    assert loop.keys() == vmapped.keys()
    for name, grad in loop.items():
        torch.testing.assert_close(vmapped[name], grad, atol=1e-5, rtol=1e-5)


# The inner loss's reduction ---------------------------------------------------------------------


def test_class_sum_inner_loss_is_the_mean_loss_with_a_step_ways_times_larger():
    batch = random_batch(tasks=2, ways=3)
    summed = MAML(tiny_conv(), ways=3, inner_lr=0.1, inner_steps=2, inner_loss="class_sum").double()
    mean = MAML(tiny_conv(), ways=3, inner_lr=0.3, inner_steps=2).double()
    got, expected = grads_of(summed, batch), grads_of(mean, batch)
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name])
    scaled = grads_of(MAML(tiny_conv(), ways=3, inner_lr=0.1, inner_steps=2).double(), batch)
    assert any(not torch.allclose(scaled[name], expected[name]) for name in got)  # the scale matters
    with pytest.raises(Exception, match="algo.inner_loss='sum' is not known"):
        MAML(tiny_conv(), ways=3, inner_loss="sum")
