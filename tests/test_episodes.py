"""Episode sampler properties: shapes, labels, seeding, disjoint splits, fixed evaluation sets."""

from __future__ import annotations

import torch

from metarun.data.split import ImageSplit
from metarun.data.synthetic import make_synthetic
from metarun.episodes import EpisodeSampler, EpisodeSpec, FixedEpisodes, derive_seed

SPEC = EpisodeSpec(ways=5, shots=2, queries=3)


def uneven_split() -> ImageSplit:
    """Class c holds c + 5 images, each filled with a unique value: 100 * class + image."""
    per_class = [torch.full((c + 5, 1, 2, 2), 0, dtype=torch.uint8) for c in range(8)]
    for c, images in enumerate(per_class):
        images[:, 0, 0, 0] = torch.arange(len(images), dtype=torch.uint8) + 20 * c
    return ImageSplit.from_classes(per_class, [f"c{c}" for c in range(8)])


def test_batch_shapes_follow_the_episode_contract():
    split = make_synthetic().train
    batch = EpisodeSampler(split, SPEC, seed=0).sample(tasks=4)
    assert batch.support_x.shape == (4, 5 * 2, 1, 28, 28)
    assert batch.query_x.shape == (4, 5 * 3, 1, 28, 28)
    assert batch.support_y.shape == (4, 10) and batch.query_y.shape == (4, 15)
    assert batch.classes.shape == (4, 5)
    assert batch.support_x.dtype == torch.float32


def test_labels_are_0_to_n_minus_1_with_k_shots_and_q_queries_each():
    batch = EpisodeSampler(make_synthetic().train, SPEC, seed=0).sample(tasks=3)
    for t in range(3):
        assert torch.equal(batch.support_y[t].bincount(), torch.full((5,), 2))
        assert torch.equal(batch.query_y[t].bincount(), torch.full((5,), 3))


def test_classes_in_an_episode_are_distinct_and_images_come_from_their_class_without_repeats():
    split = uneven_split()
    sampler = EpisodeSampler(split, EpisodeSpec(ways=4, shots=2, queries=3), seed=1)
    for _ in range(20):
        batch = sampler.sample(tasks=5)
        for t in range(5):
            assert len(set(batch.classes[t].tolist())) == 4
            marks = torch.cat([batch.support_x[t], batch.query_x[t]])[:, 0, 0, 0] * 255  # [20]
            labels = torch.cat([batch.support_y[t], batch.query_y[t]])
            image_class = (marks.round().long() // 20)
            assert torch.equal(image_class, batch.classes[t][labels])
            assert len(set(marks.round().long().tolist())) == len(marks)  # no image twice


def test_same_seed_gives_the_same_episodes_and_another_seed_different_ones():
    split = make_synthetic().train
    first = EpisodeSampler(split, SPEC, seed=3).sample(8)
    again = EpisodeSampler(split, SPEC, seed=3).sample(8)
    other = EpisodeSampler(split, SPEC, seed=4).sample(8)
    assert torch.equal(first.support_x, again.support_x) and torch.equal(first.classes, again.classes)
    assert not torch.equal(first.classes, other.classes)


def test_sampler_state_restores_the_episode_stream():
    split = make_synthetic().train
    sampler = EpisodeSampler(split, SPEC, seed=0)
    sampler.sample(4)
    state = sampler.state_dict()
    expected = sampler.sample(4)
    fresh = EpisodeSampler(split, SPEC, seed=0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.sample(4).query_x, expected.query_x)


def test_overfit_mode_repeats_the_same_meta_batch():
    sampler = EpisodeSampler(make_synthetic().train, SPEC, seed=0, repeat_every=1)
    assert torch.equal(sampler.sample(4).support_x, sampler.sample(4).support_x)


def test_fixed_evaluation_episodes_are_identical_for_the_same_seed_and_chunking_does_not_matter():
    split = make_synthetic().test
    a = FixedEpisodes(split, SPEC, count=30, seed=0, purpose="test")
    b = FixedEpisodes(split, SPEC, count=30, seed=0, purpose="test")
    whole = next(a.batches(30))
    chunks = list(b.batches(7))
    assert [c.tasks for c in chunks] == [7, 7, 7, 7, 2]
    assert torch.equal(torch.cat([c.query_x for c in chunks]), whole.query_x)
    assert not torch.equal(FixedEpisodes(split, SPEC, 30, seed=0, purpose="val").draws[1], a.draws[1])


def test_fixed_episodes_do_not_depend_on_what_training_drew():
    split = make_synthetic()
    before = FixedEpisodes(split.test, SPEC, count=10, seed=0, purpose="test").draws[0]
    EpisodeSampler(split.train, SPEC, seed=0).sample(50)
    torch.rand(100)  # global RNG use must not matter either
    assert torch.equal(FixedEpisodes(split.test, SPEC, count=10, seed=0, purpose="test").draws[0], before)


def test_derived_seeds_differ_by_purpose_and_are_stable():
    assert derive_seed(0, "val") != derive_seed(0, "test")
    # Literals: the same on every machine, Python version and process (a str hash would vary per process).
    assert derive_seed(7, "train") == 1982362964227282949
    assert derive_seed(0, "val") == 4382345466027166921


def test_synthetic_splits_share_no_class_and_are_learnable_by_nearest_class_mean():
    splits = make_synthetic()
    assert splits.train.num_classes == 64 and splits.val.num_classes == 24
    names = [set(split.class_names) for _, split in splits.items()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    flat = [split.images.flatten(1) for _, split in splits.items()]
    assert not any((torch.cdist(a.float(), b.float()) == 0).any() for a, b in [(flat[0], flat[1]), (flat[0], flat[2]), (flat[1], flat[2])])
    batch = EpisodeSampler(splits.test, EpisodeSpec(5, 5, 5), seed=0).sample(20)
    means = batch.support_x.view(20, 5, 5, -1).mean(2)  # [T, N, D]
    distances = torch.cdist(batch.query_x.flatten(2), means)  # [T, N*Q, N]
    accuracy = (distances.argmin(-1) == batch.query_y).float().mean()
    assert accuracy > 0.6  # far above the 0.2 of chance: there is class structure to learn
