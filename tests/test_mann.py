"""MANN (Santoro et al. 2016), its LSTM baseline and the sequence protocol: LRUA's equations, read
weights, usage decay, causality, sequence episodes, accuracy by instance."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from metarun.algorithms import MANN, SNAIL
from metarun.algorithms.mann import LRUAMemory, content_weights, write_weights
from metarun.algorithms.sequences import accuracy_by_instance, presentations
from metarun.build import build_trainer
from metarun.data.synthetic import make_synthetic
from metarun.episodes import EpisodeBatch, EpisodeSampler, EpisodeSpec, FixedEpisodes
from metarun.errors import MetarunError
from metarun.rescore import rescore
from tests.helpers import compose_run, trained_run

SEQUENCE = EpisodeSpec(ways=5, shots=0, queries=4, sequence=True)


def features(size: int = 12) -> nn.Module:
    body = nn.Identity()
    body.out_features = size
    return body


def sequence_batch(tasks: int = 2, ways: int = 3, instances: int = 4, size: int = 12, seed: int = 0) -> EpisodeBatch:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(ways).repeat_interleave(instances).repeat(tasks, 1)
    labels = labels.gather(1, torch.rand(labels.shape, generator=generator).argsort(dim=1))
    x = torch.randn(tasks, ways * instances, size, generator=generator, dtype=torch.float64)
    return EpisodeBatch(x[:, :0], labels[:, :0], x, labels, torch.arange(ways).repeat(tasks, 1))


def memory_state(memory: LRUAMemory, batch: int = 2, seed: int = 0):
    """A state in the middle of a sequence: random contents, usage and last read weights."""
    generator = torch.Generator().manual_seed(seed)
    contents = torch.randn(batch, memory.slots, memory.size, generator=generator)
    usage = torch.rand(batch, memory.slots, generator=generator)
    last_read = torch.rand(batch, memory.heads, memory.slots, generator=generator).softmax(dim=-1)
    return contents, usage, last_read, torch.zeros(batch, memory.read_size)


def with_gate(memory: LRUAMemory, value: float) -> LRUAMemory:
    """The gate sigmoid(alpha) pinned near `value` (0 or 1) whatever the controller says."""
    with torch.no_grad():
        memory.gate.weight.zero_()
        memory.gate.bias.fill_(40.0 if value else -40.0)
    return memory


# LRUA --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("write", ["add", "key"])
def test_a_closed_gate_writes_each_head_to_its_own_least_used_slot_and_zeroes_the_least_used(write):
    torch.manual_seed(0)
    memory = with_gate(LRUAMemory(controller_size=8, slots=6, size=3, heads=2, write=write), 0.0)
    contents, usage, last_read, reads = memory_state(memory)
    hidden = torch.randn(2, 8)
    new_contents, _, _, _ = memory(hidden, (contents, usage, last_read, reads))
    # What each head writes: its own add vector, or its read key.
    written = torch.tanh((memory.add if write == "add" else memory.key)(hidden)).view(2, 2, 3)
    for b in range(2):
        least, second = usage[b].argsort()[:2].tolist()
        expected = contents[b].clone()
        expected[least] = written[b, 0]  # zeroed, then written by head 0
        expected[second] += written[b, 1]  # head 1 writes to the second least used
        torch.testing.assert_close(new_contents[b], expected, atol=1e-6, rtol=1e-5)


def test_the_add_vector_is_a_head_of_its_own_and_an_unknown_write_is_one_line():
    assert LRUAMemory(controller_size=8, write="key").add is None
    assert LRUAMemory(controller_size=8).add.out_features == 4 * 40
    with pytest.raises(MetarunError, match="algo.write='value' is not known"):
        LRUAMemory(controller_size=8, write="value")


def test_an_open_gate_writes_to_the_slots_last_read():
    gate = torch.ones(1, 2, 1)
    last_read = torch.tensor([[[0.0, 0.7, 0.3, 0.0], [0.5, 0.0, 0.0, 0.5]]])
    torch.testing.assert_close(write_weights(gate, last_read, torch.tensor([[3, 0]]), 4), last_read)
    half = write_weights(0.5 * gate, last_read, torch.tensor([[3, 0]]), 4)
    torch.testing.assert_close(half, 0.5 * last_read + 0.5 * torch.tensor([[[0.0, 0, 0, 1], [1, 0, 0, 0]]]))


def test_read_weights_are_a_softmax_of_cosine_similarity_and_sum_to_one_per_head():
    torch.manual_seed(0)
    memory = LRUAMemory(controller_size=8, slots=5, size=4, heads=3)
    new_contents, _, read_weights, reads = memory(torch.randn(2, 8), memory_state(memory))
    torch.testing.assert_close(read_weights.sum(dim=-1), torch.ones(2, 3))
    keys = torch.tanh(memory.key(torch.zeros(1, 8))).view(1, 3, 4)[0, 0]
    slots = torch.eye(4)[:3] * 2.0  # cosines 1 and 0 whatever the norms
    weights = content_weights(keys.view(1, 1, 4) * 0 + torch.tensor([1.0, 0, 0, 0]), slots.unsqueeze(0))
    torch.testing.assert_close(weights[0, 0], torch.tensor([math.e, 1.0, 1.0]) / (math.e + 2))
    torch.testing.assert_close(reads, (read_weights @ new_contents).flatten(1))


def test_usage_decays_by_gamma_and_adds_the_steps_read_and_write_weights():
    torch.manual_seed(0)
    memory = with_gate(LRUAMemory(controller_size=8, slots=6, size=3, heads=2, gamma=0.9), 0.0)
    contents, usage, last_read, reads = memory_state(memory)
    _, new_usage, read_weights, _ = memory(torch.randn(2, 8), (contents, usage, last_read, reads))
    writes = torch.zeros(2, 6).scatter_(1, usage.argsort(dim=1)[:, :2], 1.0)  # closed gate: one per head
    torch.testing.assert_close(new_usage, 0.9 * usage + read_weights.sum(dim=1) + writes, atol=1e-6, rtol=1e-5)


# MANN and the LSTM baseline --------------------------------------------------------------------


@pytest.mark.parametrize("slots", [16, 0])
def test_a_steps_output_never_depends_on_its_own_label_but_later_steps_do(slots):
    torch.manual_seed(0)
    algorithm = MANN(features(), ways=3, protocol="sequence", instances=4, controller_size=16, slots=slots, slot_size=8,
                     read_heads=2).double()
    batch = sequence_batch()
    t = 5
    changed = batch.query_y.clone()
    changed[:, t] = (changed[:, t] + 1) % 3
    with torch.no_grad():
        before = algorithm.read(batch.query_x, batch.query_y)
        after = algorithm.read(batch.query_x, changed)
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1])  # step t and every earlier one
    assert not torch.allclose(after[:, t + 1], before[:, t + 1])  # the label arrives with the next image


def test_standard_protocol_reads_each_query_after_the_support_and_no_query_sees_another():
    torch.manual_seed(0)
    algorithm = MANN(features(), ways=3, controller_size=16, slots=16, slot_size=8, read_heads=2).double().eval()
    sequence = sequence_batch(ways=3, instances=2)
    support_x, support_y = sequence.query_x, sequence.query_y
    queries = torch.randn(2, 4, 12, dtype=torch.float64)
    with torch.no_grad():
        scores = algorithm.read(support_x, support_y, queries)
        alone = algorithm.read(support_x, support_y, queries[:, 2:3])
        # A query is one more step of the sequence, carrying the last support label.
        as_step = algorithm.read(torch.cat([support_x, queries[:, :1]], 1), torch.cat([support_y, support_y[:, :1]], 1))
    assert scores.shape == (2, 4, 3)
    torch.testing.assert_close(alone[:, 0], scores[:, 2])
    torch.testing.assert_close(as_step[:, -1], scores[:, 0])


def test_the_lstm_baseline_has_no_memory_and_mann_reads_four_heads_of_forty():
    mann, lstm = MANN(features(400), ways=5), MANN(features(400), ways=5, slots=0)
    assert mann.head.in_features == 200 + 4 * 40 and mann.controller.input_size == 400 + 5 + 160
    assert lstm.memory is None and lstm.head.in_features == 200 and lstm.controller.input_size == 405


def test_mann_learns_from_the_labels_shown_earlier_in_its_sequence():
    """Classes are new random points in every sequence and labels are shuffled, so a network that
    ignored the labels it was shown would be at chance (1/3) at every presentation. After 250
    steps MANN gives a new class a label not yet used (first presentations) and recalls some."""
    torch.manual_seed(0)
    algorithm = MANN(features(8), ways=3, protocol="sequence", instances=4, controller_size=32, slots=16, slot_size=8,
                     read_heads=1)
    optimizer = torch.optim.Adam(algorithm.parameters(), 3e-3)

    def episodes(tasks: int, seed: int) -> EpisodeBatch:
        generator = torch.Generator().manual_seed(seed)
        batch = sequence_batch(tasks, ways=3, instances=4, size=8, seed=seed)
        points = torch.randn(tasks, 3, 8, generator=generator)
        noise = 0.05 * torch.randn(batch.query_x.shape, generator=generator)
        x = points.gather(1, batch.query_y.unsqueeze(-1).expand(-1, -1, 8)) + noise
        return EpisodeBatch(x[:, :0], batch.support_y, x, batch.query_y, batch.classes)

    for step in range(250):
        optimizer.zero_grad()
        algorithm.step(episodes(16, step), train=True).objective.backward()
        optimizer.step()
    with torch.no_grad():
        metrics = algorithm.step(episodes(200, 10_000), train=False).metrics
    later = (metrics["acc@instance=3"].mean() + metrics["acc@instance=4"].mean()) / 2
    assert metrics["acc@instance=1"].mean() > 0.5 and later > 0.42  # it measured 0.63 and 0.49


# The sequence protocol -----------------------------------------------------------------------------


def test_presentations_count_each_class_appearance_and_accuracy_is_kept_by_instance():
    labels = torch.tensor([[2, 0, 2, 1, 0, 2]])
    assert presentations(labels).tolist() == [[1, 1, 2, 1, 2, 3]]
    scores = torch.nn.functional.one_hot(torch.tensor([[0, 0, 2, 1, 1, 2]]), 3).float()  # wrong at steps 0 and 4
    metrics = accuracy_by_instance(scores, labels, instances=3)
    assert [float(metrics[f"acc@instance={k}"]) for k in (1, 2, 3)] == pytest.approx([2 / 3, 0.5, 1.0])


def test_sequence_episodes_have_no_support_and_each_class_appears_instances_times_in_a_seeded_order():
    split = make_synthetic().train
    batch = EpisodeSampler(split, SEQUENCE, seed=0).sample(tasks=3)
    assert batch.support_x.shape[1] == 0 and batch.query_x.shape[:2] == (3, 20)
    for t in range(3):
        assert torch.equal(batch.query_y[t].bincount(), torch.full((5,), 4))
    assert not torch.equal(batch.query_y[0], torch.arange(5).repeat_interleave(4))  # shuffled, not class by class
    again = EpisodeSampler(split, SEQUENCE, seed=0).sample(tasks=3)
    assert torch.equal(again.query_y, batch.query_y) and torch.equal(again.query_x, batch.query_x)
    fixed = [next(FixedEpisodes(split, SEQUENCE, 4, 0, "test").batches(4)).query_y for _ in range(2)]
    assert torch.equal(*fixed)


def test_each_sequence_image_keeps_its_label_after_shuffling():
    split = make_synthetic().train
    standard = EpisodeSampler(split, EpisodeSpec(5, 0, 4), seed=0).sample(tasks=2)  # the same draws, class by class
    shuffled = EpisodeSampler(split, SEQUENCE, seed=0).sample(tasks=2)
    for t in range(2):
        for position in range(20):
            label = shuffled.query_y[t, position]
            matches = (standard.query_x[t] == shuffled.query_x[t, position]).flatten(1).all(dim=1).nonzero().flatten()
            assert (standard.query_y[t, matches] == label).all() and len(matches) >= 1


def test_a_run_under_the_sequence_protocol_reports_accuracy_by_instance_and_scores_on_standard_episodes(tmp_path):
    run = trained_run(tmp_path / "run", ["debug=smoke", "logger=none", "algo=lstm", "episode=sequence_5way",
                                         "episode.instances=3", "algo.controller_size=16"])
    results = json.loads((run / "results.json").read_text())
    assert sorted(results["test"]["acc_by_instance"]) == ["1", "2", "3"]
    assert all(0 <= value <= 1 for value in results["test"]["acc_by_instance_ci95"].values())
    # The same weights read 5-way 1-shot episodes: the support as a sequence, each query after it.
    standard, _ = rescore(run, ["episode=5way_1shot", "trainer.test_episodes=8"])
    assert standard["setting"]["shots"] == 1 and standard["test"]["episodes"] == 8
    assert "acc_by_instance" not in standard["test"] and 0 <= standard["test"]["acc"] <= 1


def test_snail_reads_a_sequence_causally():
    torch.manual_seed(0)
    snail = SNAIL(features(), ways=3, shots=1, protocol="sequence", instances=4, filters=8).double()
    batch = sequence_batch()
    changed = EpisodeBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y.clone(), batch.classes)
    changed.query_y[:, 5] = (changed.query_y[:, 5] + 1) % 3
    with torch.no_grad():
        before, after = snail.step(batch, train=False), snail.step(changed, train=False)
    torch.testing.assert_close(after.predictions[0][:, :6], before.predictions[0][:, :6])
    assert set(before.metrics) >= {"loss", "acc", "acc@instance=1", "acc@instance=4"}


@pytest.mark.parametrize("override", ["algo=protonet", "algo=maml"])
def test_a_method_that_needs_a_support_set_is_refused_sequence_episodes_in_one_line(override, tmp_path):
    cfg, choices = compose_run(["debug=smoke", "logger=none", override, "episode=sequence_5way"])
    with pytest.raises(MetarunError, match="episode.protocol=sequence episodes have no support set"):
        build_trainer(cfg, tmp_path, choices)


def test_an_unknown_protocol_is_one_line(tmp_path):
    cfg, choices = compose_run(["debug=smoke", "logger=none", "algo=mann", "episode.protocol=sequences"])
    with pytest.raises(MetarunError, match="episode.protocol='sequences' is not known"):
        build_trainer(cfg, tmp_path, choices)
