"""data=multi_source: each episode from one source, chosen by weight and seeded, every source's
images at one size and channel count with its own normalisation; metrics per source."""

from __future__ import annotations

import functools

import pytest
import torch

from metarun.build import build_trainer
from metarun.data.augment import Augmentation
from metarun.data.multi_source import MultiSource, _load, common_format
from metarun.data.synthetic import make_synthetic
from metarun.episodes import EpisodeSampler, EpisodeSpec, FixedEpisodes, VariableRules
from metarun.errors import MetarunError
from metarun.variable_episodes import FixedVariableEpisodes
from tests.helpers import CIFAR100, OMNIGLOT, compose_run, make_fake_omniglot, requires_cifar100, requires_omniglot

SPEC = EpisodeSpec(ways=2, shots=1, queries=2)


def two_sources(weights=None) -> MultiSource:
    grey, colour = make_synthetic(image_size=28, channels=1, seed=0).train, make_synthetic(image_size=16, channels=3, seed=1).train
    return MultiSource.of([grey, colour], ["grey", "colour"], weights, image_size=20, channels=3)


def test_each_episode_comes_whole_from_one_source_at_the_common_size_with_global_class_ids():
    split = two_sources()
    draws = split.draw(SPEC, 40, torch.Generator().manual_seed(0))
    batch = next(FixedEpisodes(split, SPEC, 40, seed=0, purpose="test").batches(40))
    chosen = split.groups(draws)[1]
    assert batch.support_x.shape[2:] == (3, 20, 20) and set(chosen.tolist()) == {0, 1}
    grey_classes = split.splits[0].task.classes
    from_colour = batch.classes >= grey_classes  # the colour source's classes come after the grey one's
    fixed_chosen = FixedEpisodes(split, SPEC, 40, seed=0, purpose="test").groups()[1]
    assert torch.equal(from_colour.all(dim=1), fixed_chosen == 1) and torch.equal(from_colour.any(dim=1), fixed_chosen == 1)
    grey_episode = batch.support_x[fixed_chosen == 0][0]
    assert torch.equal(grey_episode[:, 0], grey_episode[:, 1])  # grey made colour: three equal channels


def test_the_choice_of_source_is_seeded_and_follows_the_weights():
    first = EpisodeSampler(two_sources(), SPEC, seed=3).sample(8)
    again = EpisodeSampler(two_sources(), SPEC, seed=3).sample(8)
    assert torch.equal(first.support_x, again.support_x) and torch.equal(first.classes, again.classes)
    only_colour = EpisodeSampler(two_sources(weights=[0.0, 1.0]), SPEC, seed=3).sample(8)
    assert (only_colour.classes >= 64).all()


def test_a_grey_source_keeps_its_own_statistics_on_each_of_three_channels():
    assert common_format({"shape": [1, 28, 28], "mean": [0.2], "std": [0.5], "ink": True}, 32, 3) == {
        "shape": [3, 32, 32], "mean": [0.2] * 3, "std": [0.5] * 3, "ink": True}


def test_a_multi_source_run_reports_its_test_accuracy_per_source(tmp_path):
    root = make_fake_omniglot(tmp_path / "omniglot")
    cfg, choices = compose_run(["logger=none", "device=cpu", "algo=protonet", "data=multi_source", "data.sources=[synthetic,omniglot]",
                                "data.image_size=20", f"data.available.omniglot.root={root}", "data.available.omniglot.protocol=lake",
                                "data.available.omniglot.lake_val_alphabets=1", f"data.available.omniglot.cache_dir={tmp_path / 'c'}",
                                "episode.ways=2", "episode.queries=3", "trainer.steps=2", "trainer.eval_every=2",
                                "trainer.val_episodes=4", "trainer.test_episodes=20", "trainer.progress=false"])
    results = build_trainer(cfg, tmp_path / "run", choices).fit()
    by_source = results["test"]["acc_by_source"]
    assert sorted(by_source) == [0, 1] and results["input"]["sources"] == ["synthetic", "omniglot"]
    assert min(by_source.values()) <= results["test"]["acc"] <= max(by_source.values())


def loader_options(**options):
    return options


def test_a_sources_augmentation_settings_reach_its_loader_as_an_augmentation():
    options = _load(functools.partial(loader_options, root="/data", augment={"crop_padding": 4, "flip": True}))
    assert options == {"root": "/data", "augment": Augmentation(crop_padding=4, flip=True)}


def test_an_unknown_source_or_bad_weights_are_one_line(tmp_path):
    for override, message in (("data.sources=[omniglot,imagenet21k]", "names imagenet21k"), ("data.weights=[1,-1]", "weight >= 0")):
        cfg, choices = compose_run(["logger=none", "device=cpu", "data=multi_source", override])
        with pytest.raises(MetarunError, match=message):
            build_trainer(cfg, tmp_path / "run", choices)


def test_a_variable_episode_is_sized_by_its_own_source():
    grey, many = make_synthetic(train_classes=8, images_per_class=12).train, make_synthetic(train_classes=64, images_per_class=40, seed=1).train
    split = MultiSource.of([grey, many], ["few", "many"], None, image_size=16, channels=1)
    batches = list(FixedVariableEpisodes(split, VariableRules(), 30, seed=0, purpose="test").batches(1))
    sources = FixedVariableEpisodes(split, VariableRules(), 30, seed=0, purpose="test").groups()[1]
    for batch, source in zip(batches, sources.tolist()):
        queries = int(batch.query_y[0].bincount()[0])
        if source == 0:
            assert queries == 6 and batch.ways <= 8  # half of its 12 images; its 8 classes
        else:
            assert queries == 10  # min(10, 40 / 2)
    assert any(batch.ways > 8 for batch, source in zip(batches, sources.tolist()) if source == 1)  # more ways than the small source has


@pytest.mark.slow
@requires_omniglot()
@requires_cifar100()
def test_protonet_learns_both_sources_of_real_multi_source_variable_episodes(tmp_path):
    """Omniglot + CIFAR-FS, Meta-Dataset's variable episodes (up to 10 ways and 100 support images here, to be quick): each
    source's test accuracy beats the same model untrained on the same fixed episodes."""
    cfg, choices = compose_run(["logger=none", "device=cpu", "trainer.progress=false", "algo=protonet", "data=multi_source",
                                "data.sources=[omniglot,cifar_fs]", f"data.available.omniglot.root={OMNIGLOT}",
                                f"data.available.cifar_fs.root={CIFAR100}", "episode=variable", "episode.max_ways=10", "episode.max_support=100",
                                "trainer.steps=120", "trainer.meta_batch_size=1", "trainer.eval_every=120",
                                "trainer.val_episodes=20", "trainer.test_episodes=100"])
    trainer = build_trainer(cfg, tmp_path / "run", choices)
    before = trainer.evaluate(trainer.test_episodes)
    untrained = [float(before[f"acc@source={s}"].double().mean()) for s in (0, 1)]
    trained = trainer.fit()["test"]["acc_by_source"]
    assert trained[0] > untrained[0] + 0.05 and trained[1] > untrained[1] + 0.02, (trained, untrained)
