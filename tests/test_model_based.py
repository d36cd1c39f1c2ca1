"""The model-based meta-learners: the Meta-LSTM meta-learner and SNAIL."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from metarun.algorithms import SNAIL, MetaLSTM
from metarun.algorithms.metalstm import preprocess
from metarun.episodes import EpisodeBatch
from metarun.models import MLP
from tests.helpers import random_batch, tiny_conv


def test_metalstm_with_gates_fixed_at_lr_and_one_is_plain_sgd():
    lr, steps = 0.3, 3
    batch = random_batch(tasks=1, ways=3, shots=2)
    algorithm = MetaLSTM(tiny_conv(), ways=3).double()
    algorithm.cell.gates = lambda x, cell_state, previous: (torch.full_like(cell_state, lr), torch.ones_like(cell_state))
    adapted = algorithm.adapt(batch.support_x[0], batch.support_y[0], steps)

    params = {name: p.detach().clone().requires_grad_() for name, p in algorithm.learner.named_parameters()}
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(algorithm.learner, params, (batch.support_x[0],)), batch.support_y[0])
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {name: (p - lr * g).detach().requires_grad_() for (name, p), g in zip(params.items(), grads)}
    torch.testing.assert_close(adapted, torch.cat([p.flatten() for p in params.values()]))


def test_metalstm_cell_state_is_the_flattened_learner_parameters():
    batch = random_batch(tasks=1, ways=3, shots=2)
    algorithm = MetaLSTM(tiny_conv(), ways=3).double()
    parameters = list(algorithm.learner.parameters())
    initial = algorithm.initial_cell_state()
    assert initial.shape == (sum(p.numel() for p in parameters),)
    torch.testing.assert_close(initial, torch.cat([p.detach().flatten() for p in parameters]))
    torch.testing.assert_close(algorithm.forward_with(initial, batch.query_x[0]), algorithm.learner(batch.query_x[0]))
    assert algorithm.adapt(batch.support_x[0], batch.support_y[0], steps=2).shape == initial.shape


def test_metalstm_starts_with_a_small_learning_rate_and_no_decay_and_trains_every_part():
    batch = random_batch(tasks=2, ways=3, shots=2)
    algorithm = MetaLSTM(tiny_conv(), ways=3, inner_steps=2).double()
    cell_state = algorithm.initial_cell_state().detach()
    x = torch.zeros(len(cell_state), algorithm.lstm.hidden_size, dtype=torch.float64)
    i, f = algorithm.cell.gates(x, cell_state, (torch.zeros_like(cell_state), torch.zeros_like(cell_state)))
    assert 0.006 < float(i.min().detach()) and float(i.max().detach()) < 0.02  # sigmoid of [-5, -4]
    assert float(f.min().detach()) > 0.98
    algorithm.step(batch, train=True).objective.backward()
    for name, part in (("learner (c_0)", algorithm.learner), ("lstm", algorithm.lstm), ("cell", algorithm.cell)):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), name


def test_gradient_preprocessing_keeps_sign_and_log_magnitude():
    out = preprocess(torch.tensor([1.0, -1e-2, 1e-6, 0.0]))
    torch.testing.assert_close(out[:, 0], torch.tensor([0.0, -0.2 * torch.log(torch.tensor(10.0)).item(), -1.0, -1.0]))
    torch.testing.assert_close(out[:, 1], torch.tensor([1.0, -1.0, 1e-6 * torch.e**10, 0.0]))


def snail_states(seed: int = 0, support: int = 6, queries: int = 4, channels: int = 19):
    torch.manual_seed(seed)
    model = SNAIL(tiny_conv(), ways=3, shots=2, filters=8).double()
    assert model.blocks[0].query.in_features == channels
    return model, torch.randn(2, support, channels, dtype=torch.float64), torch.randn(2, queries, channels, dtype=torch.float64)


def test_snail_is_causal_a_later_position_never_changes_an_earlier_output():
    model, support, query = snail_states()
    before_support, before_query = model.read(support, query)
    for position in range(support.shape[1]):
        changed = support.clone()
        changed[:, position] += 1.0
        after_support, after_query = model.read(changed, query)
        torch.testing.assert_close(after_support[:, :position], before_support[:, :position], rtol=0, atol=0)
        assert not torch.allclose(after_support[:, position:], before_support[:, position:])
        assert not torch.allclose(after_query, before_query)  # every query reads the whole support set


def test_snail_queries_never_see_each_other_and_match_a_sequence_of_their_own():
    model, support, query = snail_states()
    _, before = model.read(support, query)
    changed = query.clone()
    changed[:, 1] += 1.0
    _, after = model.read(support, changed)
    torch.testing.assert_close(after[:, [0, 2, 3]], before[:, [0, 2, 3]], rtol=0, atol=0)
    assert not torch.allclose(after[:, 1], before[:, 1])
    # A query's state is the state at the last position of the sequence (support..., query).
    sequence_states, _ = model.read(torch.cat([support, query[:, 2:3]], dim=1), query[:, :1])
    torch.testing.assert_close(before[:, 2], sequence_states[:, -1])


def test_snail_outputs_one_row_per_query():
    batch = random_batch(tasks=2, ways=3, shots=2, queries=4)
    model = SNAIL(tiny_conv(), ways=3, shots=2, filters=8).double()
    output = model.step(batch, train=False)
    assert output.predictions[0].shape == (2, 12, 3)
    assert output.metrics["acc"].shape == output.metrics["loss"].shape == (2,)


def prototype_episodes(tasks: int, generator: torch.Generator, ways: int = 5, queries: int = 3, features: int = 16) -> EpisodeBatch:
    """5-way 1-shot episodes of vectors: each class a random point, its examples noisy copies of it."""
    points = torch.randn(tasks, ways, features, generator=generator)
    labels = lambda k: torch.arange(ways).repeat_interleave(k).repeat(tasks, 1)  # noqa: E731
    noisy = lambda k: points.repeat_interleave(k, 1) + 0.3 * torch.randn(tasks, ways * k, features, generator=generator)  # noqa: E731
    return EpisodeBatch(noisy(1), labels(1), noisy(queries), labels(queries), torch.arange(ways).repeat(tasks, 1))


def test_trained_snail_predictions_do_not_depend_on_the_support_order():
    torch.manual_seed(0)
    model = SNAIL(MLP((16,), hidden=(32,)), ways=5, shots=1, filters=16)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(250):  # about 8 s; training accuracy passes 0.95 near step 150
        optimizer.zero_grad()
        model.step(prototype_episodes(16, generator), train=True).objective.backward()
        optimizer.step()
    batch = prototype_episodes(64, generator)
    with torch.no_grad():
        reference = model.logits(batch).argmax(-1)
        assert (reference == batch.query_y).float().mean() > 0.9  # chance is 0.2
        for seed in range(3):
            order = torch.randperm(5, generator=torch.Generator().manual_seed(seed))
            permuted = EpisodeBatch(batch.support_x[:, order], batch.support_y[:, order], batch.query_x, batch.query_y)
            assert (model.logits(permuted).argmax(-1) == reference).float().mean() > 0.97
