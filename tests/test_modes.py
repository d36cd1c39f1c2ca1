"""Classes with hidden modes (data.label_level=alphabet): each episode class shows `modes_per_class`
of its modes, support and queries spread evenly over the same modes; seeded like every episode."""

from __future__ import annotations

import pytest
import torch

from metarun.data.modes import ModalSplit
from metarun.data.omniglot import alphabet_of, load_omniglot
from metarun.data.split import ImageSplit
from metarun.episodes import EpisodeSampler, EpisodeSpec, FixedEpisodes
from metarun.errors import MetarunError
from tests.helpers import make_fake_omniglot

# 4 alphabets of 3, 4, 5 and 1 characters, 6 drawings each; pixel (0, 0) = 10 * character + drawing.
SIZES = {"A": 3, "B": 4, "C": 5, "D": 1}


def alphabets() -> ModalSplit:
    per_class, names, character = [], [], 0
    for alphabet, count in SIZES.items():
        for c in range(count):
            images = torch.zeros(6, 1, 2, 2, dtype=torch.uint8)
            images[:, 0, 0, 0] = 10 * character + torch.arange(6, dtype=torch.uint8)
            per_class.append(images)
            names.append(f"background/{alphabet}/character{c}")
            character += 1
    return ModalSplit.grouping(ImageSplit.from_classes(per_class, names), alphabet_of, modes_per_class=2)


def test_classes_with_too_few_modes_are_left_out():
    split = alphabets()
    assert split.class_names == ["background/A", "background/B", "background/C"] and split.num_classes == 3


def test_each_class_shows_its_modes_evenly_in_support_and_queries_and_queries_share_the_support_modes():
    split = alphabets()
    spec = EpisodeSpec(ways=2, shots=2, queries=4)  # 2 modes: 1 support and 2 query images each
    batch = EpisodeSampler(split, spec, seed=0).sample(tasks=20)
    values = (batch.support_x[..., 0, 0, 0] * 255).round().long(), (batch.query_x[..., 0, 0, 0] * 255).round().long()
    first_character = {"A": 0, "B": 3, "C": 7}
    for t in range(20):
        for label in range(2):
            support, query = values[0][t][batch.support_y[t] == label], values[1][t][batch.query_y[t] == label]
            alphabet = split.class_names[int(batch.classes[t, label])].split("/")[1]
            characters = (support // 10).tolist()
            assert len(set(characters)) == 2  # two distinct characters, one shot each
            assert all(0 <= c - first_character[alphabet] < SIZES[alphabet] for c in characters)  # of that alphabet
            assert sorted((query // 10).tolist()) == sorted(characters * 2)  # two queries of each support character
            assert len(set(support.tolist() + query.tolist())) == 6  # no drawing twice


def test_alphabet_episodes_are_seeded():
    split, spec = alphabets(), EpisodeSpec(ways=3, shots=2, queries=2)
    first, second = (next(FixedEpisodes(split, spec, 5, seed=0, purpose="test").batches(5)) for _ in range(2))
    other = next(FixedEpisodes(split, spec, 5, seed=1, purpose="test").batches(5))
    assert torch.equal(first.support_x, second.support_x) and not torch.equal(first.support_x, other.support_x)


@pytest.mark.parametrize("spec, message", [(EpisodeSpec(2, 3, 2), "must be multiples of data.modes_per_class=2"),
                                           (EpisodeSpec(4, 2, 2), "has 3 classes of at least 2 modes"),
                                           (EpisodeSpec(2, 4, 10), "7 images per mode")])
def test_episodes_the_modes_cannot_fill_are_one_line(spec, message):
    with pytest.raises(MetarunError, match=message):
        alphabets().check(spec, "train", "omniglot")


def test_omniglot_alphabets_are_the_classes_and_their_characters_the_modes(tmp_path):
    root = make_fake_omniglot(tmp_path / "omniglot")
    splits = load_omniglot(str(root), protocol="lake", lake_val_alphabets=1, cache_dir=str(tmp_path / "cache"),
                           label_level="alphabet", modes_per_class=2)
    assert splits.test.class_names == ["evaluation/Delta"]  # 2 characters: one class
    assert len(splits.train.class_names) + len(splits.val.class_names) == 3  # Alpha, Beta, Gamma
    with pytest.raises(MetarunError, match="data.label_level='alphabets' is not known"):
        load_omniglot(str(root), label_level="alphabets")
