"""Omniglot loading from zips and folders, its protocols, the decode cache, and clear data errors."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest
import torch

from metarun.data.cache import cached
from metarun.data.omniglot import load_omniglot
from metarun.errors import MetarunError
from tests.helpers import OMNIGLOT, make_fake_omniglot, requires_omniglot


def lake(root: Path, cache: Path, **kwargs):
    return load_omniglot(str(root), protocol="lake", lake_val_alphabets=1, cache_dir=str(cache), **kwargs)


@pytest.mark.parametrize("as_folders", [False, True])
def test_lake_protocol_trains_on_background_and_tests_on_evaluation_alphabets(tmp_path, as_folders):
    splits = lake(make_fake_omniglot(tmp_path / "omniglot", as_folders), tmp_path / "cache")
    assert splits.train.num_classes + splits.val.num_classes == 8
    assert splits.test.num_classes == 2
    assert all(name.startswith("evaluation/Delta/") for name in splits.test.class_names)
    assert splits.train.images.shape[1:] == (1, 28, 28) and splits.train.images.dtype == torch.uint8
    val_alphabets = {name.split("/")[1] for name in splits.val.class_names}
    assert len(val_alphabets) == 1 and not val_alphabets & {n.split("/")[1] for n in splits.train.class_names}


def test_characters_protocol_draws_characters_regardless_of_alphabet_with_rotations(tmp_path):
    root = make_fake_omniglot(tmp_path / "omniglot")
    splits = load_omniglot(str(root), protocol="characters", split_seed=0, cache_dir=str(tmp_path / "cache"))
    characters = [{name.rsplit("/", 1)[0] for name in split.class_names} for _, split in splits.items()]
    assert [len(c) for c in characters] == [6, 1, 3]  # Vinyals's 1,028 / 172 / 423 of 1,623, scaled to 10
    assert [split.num_classes for _, split in splits.items()] == [24, 4, 12]  # each character in 4 rotations
    assert set.union(*characters) == {f"{part}/{a}/character{c:02d}" for part, alphabets in (
        ("background", {"Alpha": 3, "Beta": 3, "Gamma": 2}), ("evaluation", {"Delta": 2})) for a, n in alphabets.items()
        for c in range(1, n + 1)}
    same = load_omniglot(str(root), protocol="characters", split_seed=0, cache_dir=str(tmp_path / "cache"))
    assert same.test.class_names == splits.test.class_names
    others = {tuple(load_omniglot(str(root), protocol="characters", split_seed=seed, cache_dir=str(tmp_path / "cache")).test.class_names)
              for seed in range(1, 4)}
    assert others - {tuple(splits.test.class_names)}  # the seed chooses the split


def test_images_are_ink_on_black_after_the_resize(tmp_path):
    splits = lake(make_fake_omniglot(tmp_path / "omniglot"), tmp_path / "cache")
    images = splits.train.images.float()
    assert images.mean() < 60  # mostly background (0), a little ink (255)
    assert images.max() > 150


def test_the_decoded_images_are_cached_and_reused(tmp_path, monkeypatch):
    root = make_fake_omniglot(tmp_path / "omniglot")
    first = lake(root, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("omniglot-28px-*.pt"))) == 1
    monkeypatch.setattr("metarun.data.omniglot.decode_characters", lambda *a: pytest.fail("decoded twice"))
    assert torch.equal(lake(root, tmp_path / "cache").train.images, first.train.images)


def _load_through_the_cache(cache: Path, log: Path, out) -> None:
    def build():
        with log.open("a") as handle:
            handle.write("built\n")
        time.sleep(0.5)  # long enough for the other process to find the cache empty
        return {"x": torch.arange(3)}
    out.put(cached(cache, "toy", {}, "key", build=build)["x"].tolist())


def test_processes_sharing_a_cache_decode_once_and_load_the_same(tmp_path):
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    processes = [context.Process(target=_load_through_the_cache, args=(tmp_path / "cache", tmp_path / "log", out)) for _ in range(2)]
    for process in processes:
        process.start()
    loaded = [out.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert loaded == [[0, 1, 2], [0, 1, 2]]
    assert (tmp_path / "log").read_text() == "built\n"  # the second waited for the first's file instead of building


def test_a_missing_root_names_the_path_and_both_fixes(tmp_path):
    with pytest.raises(MetarunError) as error:
        load_omniglot(str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "cache"))
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "data.root" in message and "data.download=auto" in message
    assert "\n" not in message


def test_a_corrupt_zip_is_named(tmp_path):
    root = make_fake_omniglot(tmp_path / "omniglot")
    (root / "images_evaluation.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(MetarunError, match="images_evaluation.zip.*corrupt"):
        lake(root, tmp_path / "cache")


def test_a_corrupt_image_is_named_not_skipped(tmp_path):
    root = make_fake_omniglot(tmp_path / "omniglot", as_folders=True)
    bad = next((root / "images_background" / "Beta").rglob("*.png"))
    bad.write_bytes(b"not a png")
    with pytest.raises(MetarunError, match=bad.name):
        lake(root, tmp_path / "cache")


def test_a_split_naming_a_character_the_data_lacks_is_an_error(tmp_path):
    with pytest.raises(MetarunError, match="split names character .* which the data set lacks"):
        load_omniglot(str(make_fake_omniglot(tmp_path / "omniglot")), protocol="vinyals", cache_dir=str(tmp_path / "c"))


def test_an_unknown_protocol_is_refused(tmp_path):
    with pytest.raises(MetarunError, match="data.protocol='paper' is not known"):
        load_omniglot(str(tmp_path), protocol="paper")


@pytest.mark.slow
@requires_omniglot()
def test_real_omniglot_characters_split_has_vinyals_sizes_and_shares_alphabets_between_train_and_test(tmp_path):
    splits = load_omniglot(str(OMNIGLOT), protocol="characters", cache_dir=str(tmp_path))
    assert (splits.train.num_classes, splits.val.num_classes, splits.test.num_classes) == (4 * 1028, 4 * 172, 4 * 423)
    train, test = ({name.rsplit("/", 2)[0] for name in split.class_names} for split in (splits.train, splits.test))
    assert len(test) > 40 and test <= train  # test characters come from (nearly) every alphabet, all seen in training


@requires_omniglot()
def test_real_omniglot_vinyals_split_has_the_published_sizes_and_disjoint_classes(tmp_path):
    splits = load_omniglot(str(OMNIGLOT), protocol="vinyals", cache_dir=str(tmp_path))
    assert (splits.train.num_classes, splits.val.num_classes, splits.test.num_classes) == (4 * 1028, 4 * 172, 4 * 423)
    assert splits.train.min_images_per_class == 20
    characters = [{name.rsplit("/", 1)[0] for name in split.class_names} for _, split in splits.items()]
    assert not (characters[0] & characters[1] or characters[0] & characters[2] or characters[1] & characters[2])
    # A rotated class really is the rotation of its character.
    first = splits.train.class_names.index(splits.train.class_names[0].replace("rot0", "rot90"))
    torch.testing.assert_close(splits.train.images[first * 20], torch.rot90(splits.train.images[0], 1, dims=(-2, -1)))
