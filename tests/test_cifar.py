"""CIFAR-FS and FC100 from the CIFAR-100 Python release: layouts, splits, errors; the real copy (slow)."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from metarun.build import train
from metarun.data.augment import Augmentation
from metarun.data.cifar import load_cifar100, load_cifar_fs, load_fc100
from metarun.errors import MetarunError
from tests.helpers import CIFAR100, compose_run, requires_cifar100

SPLITS = Path(__file__).resolve().parents[1] / "metarun" / "data" / "splits"
TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 1


def release() -> dict[str, bytes]:
    """A tiny copy of the release's pickles: every fine class, 3 train and 1 test image each,
    each image filled with (class, index, part) so that tests can tell them apart."""
    pairs = [pair for split in ("train", "val", "test") for pair in json.loads((SPLITS / "cifar-fs" / f"{split}.json").read_text())]
    fine_names = sorted(fine for _, fine in pairs)
    coarse_names = sorted({coarse for coarse, _ in pairs})
    coarse_of = {fine: coarse_names.index(coarse) for coarse, fine in pairs}

    def part(per_class: int, part_id: int) -> bytes:
        labels = [label for _ in range(per_class) for label in range(len(fine_names))]  # classes interleaved
        data = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
        for row, label in enumerate(labels):
            data[row, 0], data[row, 1], data[row, 2] = label, row // len(fine_names), part_id
        return pickle.dumps({"data": data.reshape(len(labels), -1), "fine_labels": labels,
                             "coarse_labels": [coarse_of[fine_names[label]] for label in labels], "batch_label": "fake"})

    meta = pickle.dumps({"fine_label_names": fine_names, "coarse_label_names": coarse_names})
    return {"train": part(TRAIN_PER_CLASS, 1), "test": part(TEST_PER_CLASS, 2), "meta": meta}


def make_fake_cifar(root: Path, as_archive: bool = False, files: dict[str, bytes] | None = None) -> Path:
    files = release() if files is None else files
    root.mkdir(parents=True, exist_ok=True)
    if as_archive:
        with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as archive:
            for name, data in files.items():
                info = tarfile.TarInfo(f"cifar-100-python/{name}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    else:
        (root / "cifar-100-python").mkdir()
        for name, data in files.items():
            (root / "cifar-100-python" / name).write_bytes(data)
    return root


@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar_fs_has_64_16_20_disjoint_classes_with_train_then_test_images(tmp_path, as_archive):
    splits = load_cifar_fs(str(make_fake_cifar(tmp_path / "cifar", as_archive)), cache_dir=str(tmp_path / "cache"))
    assert [split.num_classes for _, split in splits.items()] == [64, 16, 20]
    names = [set(split.class_names) for _, split in splits.items()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    per_class = TRAIN_PER_CLASS + TEST_PER_CLASS
    assert splits.train.images.shape == (64 * per_class, 3, 32, 32) and splits.train.images.dtype == torch.uint8
    fine_names = pickle.loads(release()["meta"])["fine_label_names"]
    first = splits.test.images[:per_class]  # the first test class, in its release order
    assert (first[:, 0] == fine_names.index(splits.test.class_names[0])).all()
    assert first[:, 1, 0, 0].tolist() == [0, 1, 2, 0] and first[:, 2, 0, 0].tolist() == [1, 1, 1, 2]


def test_fc100_splits_by_superclass(tmp_path):
    root = make_fake_cifar(tmp_path / "cifar", as_archive=True)
    splits = load_fc100(str(root), cache_dir=str(tmp_path / "cache"))
    assert [split.num_classes for _, split in splits.items()] == [60, 20, 20]
    superclass_of = dict(zip(*(load_cifar100(str(root), cache_dir=str(tmp_path / "cache"))[k] for k in ("fine_names", "coarse_names"))))
    superclasses = {name: {superclass_of[c] for c in split.class_names} for name, split in splits.items()}
    expected = {split: set(json.loads((SPLITS / "fc100" / f"{split}.json").read_text())) for split in ("train", "val", "test")}
    assert superclasses == expected


def test_only_training_episodes_are_augmented(tmp_path):
    splits = load_cifar_fs(str(make_fake_cifar(tmp_path / "cifar")), cache_dir=str(tmp_path / "cache"),
                           augment=Augmentation(crop_padding=4, flip=True, jitter=0.4))
    assert splits.train.augment is not None and splits.train.augment.jitter == 0.4
    assert splits.val.augment is None and splits.test.augment is None
    assert splits.train.mean != (0.0,)  # normalised with CIFAR-100's statistics


def test_missing_release_is_one_line_naming_the_accepted_formats(tmp_path):
    with pytest.raises(MetarunError) as error:
        load_cifar_fs(str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "cache"))
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "nowhere") in message
    assert "cifar-100-python/" in message and "cifar-100-python.tar.gz" in message and "data.root" in message


def test_corrupt_archive_is_one_line(tmp_path):
    (tmp_path / "cifar").mkdir()
    (tmp_path / "cifar" / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(MetarunError, match="cannot be read .*truncated or corrupt") as error:
        load_cifar_fs(str(tmp_path / "cifar"), cache_dir=str(tmp_path / "cache"))
    assert "\n" not in str(error.value)


def test_malformed_pickles_are_one_line(tmp_path):
    files = release()
    files["meta"] = pickle.dumps({"label_names": []})  # CIFAR-10's key, not CIFAR-100's
    with pytest.raises(MetarunError, match="malformed"):
        load_cifar_fs(str(make_fake_cifar(tmp_path / "cifar", files=files)), cache_dir=str(tmp_path / "cache"))


@pytest.mark.slow
@requires_cifar100()
def test_real_cifar_fs_and_fc100(tmp_path):
    for load, sizes in ((load_cifar_fs, [64, 16, 20]), (load_fc100, [60, 20, 20])):
        splits = load(str(CIFAR100), cache_dir=str(tmp_path / "cache"))
        assert [split.num_classes for _, split in splits.items()] == sizes
        assert all(split.counts.eq(600).all() for _, split in splits.items())
        names = [set(split.class_names) for _, split in splits.items()]
        assert sum(map(len, names)) == len(set.union(*names)) == 100


@pytest.mark.slow
@requires_cifar100()
def test_protonet_learns_real_cifar_fs_5way_1shot(tmp_path):
    cfg, choices = compose_run([f"data.root={CIFAR100}", "experiment=protonet_cifarfs_5w1s", "logger=none", "device=cpu",
                                "trainer.progress=false", "episode.train_queries=5", "trainer.steps=150", "trainer.eval_every=75",
                                "trainer.val_episodes=50", "trainer.test_episodes=200"])
    results = train(cfg, tmp_path, choices)
    assert results["test"]["acc"] > 0.3  # chance is 0.2; 0.36 after 150 steps here, 0.41 after 500; the paper 0.555 after far longer
