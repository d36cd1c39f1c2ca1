"""Image-folder data sets: every on-disk layout of image_folder, miniImageNet, tieredImageNet and
CUB on tiny fake copies; splits, the decode cache and the one-line errors."""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metarun.data import decoded
from metarun.data.folders import allocate_classes, load_cub, load_image_folder, load_miniimagenet, load_tieredimagenet
from metarun.errors import MetarunError

SPLITS_DIR = Path(__file__).resolve().parents[1] / "metarun" / "data" / "splits"
SIZE = 8


def pixels(label: int, index: int) -> np.ndarray:
    """A 12x10 RGB image whose red channel is the class and green channel the image index."""
    image = np.zeros((12, 10, 3), dtype=np.uint8)
    image[..., 0], image[..., 1] = label, index
    return image


def png(label: int, index: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels(label, index)).save(buffer, format="PNG")
    return buffer.getvalue()


def class_folders(root: Path, names: list[str], per_class: int = 4) -> Path:
    for label, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            (root / name / f"{index:03d}.png").write_bytes(png(label, index))
    return root


def load_folder(root: Path, tmp_path: Path, **options):
    return load_image_folder(str(root), image_size=SIZE, cache_dir=str(tmp_path / "cache"), **options)


def names(splits) -> list[list[str]]:
    return [split.class_names for _, split in splits.items()]


def test_image_folder_splits_classes_by_seeded_ratios(tmp_path):
    root = class_folders(tmp_path / "pets", [f"class{c}" for c in range(10)])
    first, again = load_folder(root, tmp_path), load_folder(root, tmp_path)
    assert [len(n) for n in names(first)] == [6, 2, 2] and names(first) == names(again)
    assert len(set(sum(names(first), []))) == 10
    assert names(load_folder(root, tmp_path, split_seed=1)) != names(first)
    assert first.train.images.shape[1:] == (3, SIZE, SIZE) and first.train.images.dtype == torch.uint8
    assert first.train.counts.tolist() == [4] * 6


def test_image_folder_takes_class_lists_or_split_folders(tmp_path):
    root = class_folders(tmp_path / "pets", ["cat", "dog", "fox", "owl"])
    listed = load_folder(root, tmp_path, classes={"train": ["cat", "dog"], "val": ["fox"], "test": ["owl"]})
    assert names(listed) == [["cat", "dog"], ["fox"], ["owl"]]
    split_root = tmp_path / "split"
    for split, members in (("train", ["a", "b"]), ("val", ["c"]), ("test", ["d", "e"])):
        class_folders(split_root / split, members)
    assert names(load_folder(split_root, tmp_path)) == [["a", "b"], ["c"], ["d", "e"]]


def test_image_folder_measures_its_statistics_unless_given(tmp_path):
    root = class_folders(tmp_path / "pets", [f"class{c}" for c in range(5)])
    measured = load_folder(root, tmp_path)
    train = measured.train.images.float().div(255)
    assert measured.train.mean == pytest.approx(train.mean(dim=(0, 2, 3)).tolist(), abs=1e-4)
    assert load_folder(root, tmp_path, mean=[0.5] * 3, std=[0.25] * 3).test.std == (0.25,) * 3


def test_images_are_decoded_once_then_memory_mapped(tmp_path, monkeypatch):
    root = class_folders(tmp_path / "pets", [f"class{c}" for c in range(5)])
    first = load_folder(root, tmp_path)
    monkeypatch.setattr(decoded, "_decode_into", lambda *args: pytest.fail("decoded a second time"))
    second = load_folder(root, tmp_path)
    assert torch.equal(first.train.images, second.train.images)
    label = int(sorted(f"class{c}" for c in range(5)).index(first.test.class_names[0]))
    assert first.test.images[0, 0].eq(label).all() and first.test.images[:, 1, 0, 0].tolist()[:4] == [0, 1, 2, 3]


@pytest.mark.parametrize("setup,message", [
    (lambda root: root.mkdir(), "holds no class folders"),
    (lambda root: class_folders(root, ["a", "b"]), "leave the val split"),
])
def test_image_folder_errors_are_one_line(tmp_path, setup, message):
    setup(tmp_path / "pets")
    with pytest.raises(MetarunError, match=message) as error:
        load_folder(tmp_path / "pets", tmp_path, ratios=[0.9, 0.0, 0.1])
    assert "\n" not in str(error.value)


def test_a_listed_class_without_a_folder_and_a_broken_image_are_named(tmp_path):
    root = class_folders(tmp_path / "pets", ["cat", "dog", "fox"])
    with pytest.raises(MetarunError, match="'cow', which has no folder"):
        load_folder(root, tmp_path, classes={"train": ["cat"], "val": ["cow"], "test": ["fox"]})
    (root / "dog" / "001.png").write_bytes(b"not a png")
    with pytest.raises(MetarunError, match="dog/001.png cannot be decoded"):
        load_folder(root, tmp_path)  # three classes: one per split


def test_ratios_give_every_split_a_class_when_there_are_enough():
    assert allocate_classes(3, (0.6, 0.2, 0.2)) == [1, 1, 1]
    assert allocate_classes(100, (0.64, 0.16, 0.2)) == [64, 16, 20]
    assert allocate_classes(10, (0.6, 0.2, 0.2)) == [6, 2, 2] and sum(allocate_classes(7, (0.5, 0.25, 0.25))) == 7


MINI = {"train": ["n01", "n02", "n03"], "val": ["n04", "n05"], "test": ["n06", "n07"]}


def mini_csv(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    for split, labels in MINI.items():
        with (root / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "label"])
            for label in labels:
                for index in range(3):
                    name = f"{label}{index:08d}.jpg"
                    Image.fromarray(pixels(int(label[1:]), index)).save(root / "images" / name, format="PNG")
                    writer.writerow([name, label])
    return root


def mini_cache(root: Path) -> Path:
    root.mkdir(parents=True)
    for split, labels in MINI.items():
        images = np.stack([pixels(int(label[1:]), index) for label in labels for index in range(3)])
        class_dict = {label: list(range(3 * i, 3 * i + 3)) for i, label in enumerate(labels)}
        (root / f"mini-imagenet-cache-{split}.pkl").write_bytes(pickle.dumps({"image_data": images, "class_dict": class_dict}))
    return root


def mini_category_split(root: Path) -> Path:
    root.mkdir(parents=True)
    for split, part in (("train", "train_phase_train"), ("val", "val"), ("test", "test")):
        labels = [int(label[1:]) for label in MINI[split] for _ in range(3)]
        images = np.stack([pixels(label, index % 3) for index, label in enumerate(labels)])
        (root / f"miniImageNet_category_split_{part}.pickle").write_bytes(pickle.dumps({"data": images, "labels": labels}))
    return root


def mini_folders(root: Path) -> Path:
    for split, labels in MINI.items():
        class_folders(root / split, labels, per_class=3)
    return root


@pytest.mark.parametrize("layout", [mini_csv, mini_cache, mini_category_split, mini_folders])
def test_miniimagenet_loads_from_every_layout(tmp_path, layout):
    splits = load_miniimagenet(str(layout(tmp_path / "mini")), image_size=SIZE, cache_dir=str(tmp_path / "cache"))
    assert [split.num_classes for _, split in splits.items()] == [3, 2, 2]
    assert all(split.counts.eq(3).all() for _, split in splits.items())
    assert splits.train.images.shape[1:] == (3, SIZE, SIZE)
    assert splits.train.mean == (0.485, 0.456, 0.406)


def test_miniimagenet_missing_is_one_line_listing_the_layouts(tmp_path):
    (tmp_path / "mini").mkdir()
    with pytest.raises(MetarunError) as error:
        load_miniimagenet(str(tmp_path / "mini"), cache_dir=str(tmp_path / "cache"))
    message = str(error.value)
    assert "\n" not in message and "train.csv" in message and "mini-imagenet-cache" in message and "data.root" in message


def test_miniimagenet_csv_naming_a_missing_image_is_one_line(tmp_path):
    root = mini_csv(tmp_path / "mini")
    (root / "images" / "n0100000001.jpg").unlink()
    with pytest.raises(MetarunError, match="names .*n0100000001.jpg, which does not exist"):
        load_miniimagenet(str(root), image_size=SIZE, cache_dir=str(tmp_path / "cache"))


TIERED = {"train": [0, 1, 2], "val": [0, 1], "test": [0, 1]}


@pytest.mark.parametrize("encoded", [True, False])
def test_tieredimagenet_loads_ren_pickles_and_npz(tmp_path, encoded):
    root = tmp_path / "tiered"
    root.mkdir()
    for split, labels in TIERED.items():
        label_per_image = [label for label in labels for _ in range(3)]
        meta = {"label_specific": np.array(label_per_image), "label_specific_str": [f"{split}{label}" for label in labels]}
        (root / f"{split}_labels.pkl").write_bytes(pickle.dumps(meta))
        if encoded:
            images = [np.frombuffer(png(label, i), dtype=np.uint8) for i, label in enumerate(label_per_image)]
            (root / f"{split}_images_png.pkl").write_bytes(pickle.dumps(images))
        else:
            np.savez(root / f"{split}_images.npz", images=np.stack([pixels(label, i) for i, label in enumerate(label_per_image)]))
    splits = load_tieredimagenet(str(root), image_size=SIZE, cache_dir=str(tmp_path / "cache"))
    assert [split.class_names for _, split in splits.items()] == [["train0", "train1", "train2"], ["val0", "val1"], ["test0", "test1"]]
    assert splits.train.images[3:6, 0].eq(1).all()  # the second class's red channel


def test_cub_uses_chen_et_al_species_split(tmp_path):
    lists = {split: json.loads((SPLITS_DIR / "cub" / f"{split}.json").read_text()) for split in ("train", "val", "test")}
    class_folders(tmp_path / "CUB_200_2011" / "images", sorted(sum(lists.values(), [])), per_class=1)
    splits = load_cub(str(tmp_path), image_size=SIZE, cache_dir=str(tmp_path / "cache"))
    assert [split.class_names for _, split in splits.items()] == [lists["train"], lists["val"], lists["test"]]
    with pytest.raises(MetarunError, match="CUB_200_2011/images"):
        load_cub(str(tmp_path / "elsewhere"), cache_dir=str(tmp_path / "cache"))


def test_a_run_trains_on_a_users_image_folder(smoke_cfg, tmp_path):
    root = class_folders(tmp_path / "pets", [f"class{c}" for c in range(10)], per_class=6)
    cfg, choices = smoke_cfg("data=image_folder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=16",
                             "data.augment={crop_padding: 2, flip: true, jitter: 0.2}", "algo=protonet", "episode.ways=2",
                             "episode.queries=3", "episode.train_ways=3")
    from metarun.build import train

    results = train(cfg, tmp_path / "run", choices)
    assert 0 <= results["test"]["acc"] <= 1 and results["data"] == "image_folder"
