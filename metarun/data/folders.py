"""Image data sets in the layouts users have on disk: any folder of class folders
(`data=image_folder`), miniImageNet, tieredImageNet and CUB-200-2011.

Each loader finds which layout `root` holds, lists every split's classes and images, and hands
them to `decoded_split`, which decodes them once into a memory-mapped uint8 cache. Users bring
the files; a missing or malformed file is one line naming what was expected where.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from metarun.data.augment import Augmentation
from metarun.data.decoded import Item, decoded_split, file_key, image_files
from metarun.data.files import split_lists, unpickle_file
from metarun.data.split import DataSplits, ImageSplit
from metarun.errors import MetarunError

SPLITS = ("train", "val", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Classes = dict[str, list[Item]]  # class name -> its images
Layout = tuple[dict[str, Classes], Any]  # the classes of each split, and a key that changes with the files


# Their licences do not let metarun fetch them: where a user gets them instead.
WHERE_TO_GET = {
    "miniImageNet": "ImageNet's terms forbid redistribution, so metarun downloads nothing: build it from ImageNet "
                    "(image-net.org) with Ravi & Larochelle's split files (github.com/twitter/meta-learning-lstm)",
    "tieredImageNet": "ImageNet's terms forbid redistribution, so metarun downloads nothing: build it from ImageNet "
                      "(image-net.org) with Ren et al.'s tools (github.com/renmengye/few-shot-ssl-public)",
    "CUB-200-2011": "metarun does not download it: CUB_200_2011.tgz is at www.vision.caltech.edu/datasets/cub_200_2011",
}

def load_image_folder(
    root: str,
    image_size: int = 84,
    channels: int = 3,
    classes: Mapping[str, Sequence[str]] | None = None,
    ratios: Sequence[float] = (0.6, 0.2, 0.2),
    split_seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    cache_dir: str = "~/.cache/metarun",
    augment: Augmentation | None = None,
) -> DataSplits:
    """Any folder of class folders: a user's own few-shot problem.

    Splits: root/train, root/val and root/test if they exist; else `classes` ({split: [class
    folder names]}); else the class folders shuffled with `split_seed` and cut by `ratios`.
    mean/std: per-channel statistics, computed from the training images when not given.
    """
    folder = _folder(root, "data=image_folder", "a folder holding one folder of images per class")
    if all((folder / split).is_dir() for split in SPLITS):
        per_split = {split: _class_folders(folder / split) for split in SPLITS}
    else:
        everything = _class_folders(folder)
        per_split = _by_lists(everything, classes, folder) if classes else _by_ratios(everything, ratios, split_seed, folder)
    unit = (0.0,) * channels, (1.0,) * channels  # until measured
    splits = _decode(_files_layout(per_split), image_size, channels, cache_dir, mean or unit[0], std or unit[1], augment)
    if mean is None or std is None:
        measured_mean, measured_std = channel_statistics(splits.train)
        splits = DataSplits(*(replace(split, mean=mean or measured_mean, std=std or measured_std) for _, split in splits.items()))
    return splits


def load_miniimagenet(root: str, image_size: int = 84, cache_dir: str = "~/.cache/metarun",
                      augment: Augmentation | None = None) -> DataSplits:
    """miniImageNet (Vinyals et al. 2016, split of Ravi & Larochelle 2017: 64 / 16 / 20 classes)."""
    layouts = {
        "images/ with train.csv, val.csv and test.csv (Ravi & Larochelle's filename,label files)": _csv_layout,
        "mini-imagenet-cache-{train,val,test}.pkl": _mini_cache_layout,
        "miniImageNet_category_split_{train_phase_train,val,test}.pickle (MetaOptNet's)": _category_split_layout,
        "train/, val/ and test/ folders, each with one folder per class": _split_folders_layout,
    }
    return _load_imagenet_like(root, "miniImageNet", layouts, image_size, cache_dir, augment)


def load_tieredimagenet(root: str, image_size: int = 84, cache_dir: str = "~/.cache/metarun",
                        augment: Augmentation | None = None) -> DataSplits:
    """tieredImageNet (Ren et al. 2018: 351 / 97 / 160 classes from 20 / 6 / 8 categories)."""
    layouts = {
        "{train,val,test}_images_png.pkl with {train,val,test}_labels.pkl (Ren et al.'s release)": _tiered_png_layout,
        "{train,val,test}_images.npz with {train,val,test}_labels.pkl (MetaOptNet's)": _tiered_npz_layout,
        "train/, val/ and test/ folders, each with one folder per class": _split_folders_layout,
    }
    return _load_imagenet_like(root, "tieredImageNet", layouts, image_size, cache_dir, augment)


def load_cub(root: str, image_size: int = 84, cache_dir: str = "~/.cache/metarun",
             augment: Augmentation | None = None) -> DataSplits:
    """CUB-200-2011 in the split of Chen et al. 2019 (100 / 50 / 50 species), from the unpacked
    CUB_200_2011/images folder (root may be it, its parent, or CUB_200_2011 itself)."""
    base = Path(root).expanduser()
    images = next((p for p in (base / "CUB_200_2011" / "images", base / "images", base) if p.is_dir() and
                   any(child.name[:4].rstrip(".").isdigit() for child in p.iterdir())), None)
    if images is None:
        raise MetarunError(f"CUB-200-2011 not found: no CUB_200_2011/images/ (one folder per species, 001.Black_footed_Albatross ...) "
                           f"in {base}; set data.root to the folder holding the unpacked CUB_200_2011 ({WHERE_TO_GET['CUB-200-2011']})")
    species = _class_folders(images)
    lists = split_lists("cub")
    layout = _files_layout(_by_lists(species, lists, images))
    return _decode(layout, image_size, 3, cache_dir, IMAGENET_MEAN, IMAGENET_STD, augment)


def channel_statistics(split: ImageSplit, most: int = 5000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a split's images in [0, 1], from up to `most` evenly spaced images."""
    chosen = torch.linspace(0, len(split.images) - 1, min(most, len(split.images))).long()
    pixels = split.images[chosen].float().div_(255).transpose(0, 1).flatten(1)  # [C, n*H*W]
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).clamp_min(1e-3).tolist())


def _decode(layout: Layout, image_size: int, channels: int, cache_dir: str, mean, std,
            augmentation: Augmentation | None) -> DataSplits:
    per_split, key = layout
    return DataSplits(**{
        split: decoded_split(per_split[split], image_size, channels, cache_dir, (key, split), mean, std,
                             augmentation if split == "train" else None)
        for split in SPLITS
    })


def _load_imagenet_like(root: str, name: str, layouts: dict[str, Callable[[Path], Layout | None]], image_size: int,
                        cache_dir: str, augment: Augmentation | None) -> DataSplits:
    """The first of `layouts` found in root, decoded as RGB with ImageNet's statistics."""
    layout = _find_layout(root, name, layouts)
    return _decode(layout, image_size, 3, cache_dir, IMAGENET_MEAN, IMAGENET_STD, augment)


def _find_layout(root: str, name: str, layouts: dict[str, Callable[[Path], Layout | None]]) -> Layout:
    base = Path(root).expanduser()
    for read in layouts.values():
        layout = read(base) if base.is_dir() else None
        if layout is not None:
            return layout
    raise MetarunError(f"{name} not found in {base}: expected one of: {'; '.join(layouts)}; "
                       f"set data.root to the folder that holds them ({WHERE_TO_GET[name]})")


def _folder(root: str, what: str, expected: str) -> Path:
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise MetarunError(f"{what}: {folder} is not a folder; set data.root to {expected}")
    return folder


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    """{class folder name: its image files}, for every sub-folder holding images."""
    classes = {child.name: image_files(child) for child in sorted(folder.iterdir()) if child.is_dir()}
    classes = {name: files for name, files in classes.items() if files}
    if not classes:
        raise MetarunError(f"{folder} holds no class folders with images (.jpg, .png, ...); expected one folder of images per class")
    return classes


def _by_lists(classes: dict[str, list], lists: Mapping[str, Sequence[str]], folder: Path) -> dict[str, Classes]:
    if set(lists) != set(SPLITS):
        raise MetarunError(f"data.classes must list the classes of train, val and test, got {sorted(lists)}")
    missing = [name for split in SPLITS for name in lists[split] if name not in classes]
    if missing:
        raise MetarunError(f"the split lists class {missing[0]!r}, which has no folder of images in {folder}")
    return {split: {name: classes[name] for name in lists[split]} for split in SPLITS}


def _by_ratios(classes: dict[str, list], ratios: Sequence[float], seed: int, folder: Path) -> dict[str, Classes]:
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise MetarunError(f"data.ratios={list(ratios)} must be three non-negative train/val/test fractions")
    names = list(classes)
    random.Random(seed).shuffle(names)
    sizes = allocate_classes(len(names), ratios)
    cuts = [sum(sizes[:1]), sum(sizes[:2])]
    parts = dict(zip(SPLITS, (names[: cuts[0]], names[cuts[0] : cuts[1]], names[cuts[1] :])))
    empty = [split for split, part in parts.items() if not part]
    if empty:
        raise MetarunError(f"data.ratios={list(ratios)} leave the {empty[0]} split of the {len(names)} classes in {folder} "
                           "without a class; add classes, change the ratios or list data.classes")
    return {split: {name: classes[name] for name in sorted(part)} for split, part in parts.items()}


def allocate_classes(total: int, ratios: Sequence[float]) -> list[int]:
    """Split `total` classes by `ratios` (largest remainders), then give every split with a
    positive ratio at least one class while another split can spare one."""
    shares = [total * ratio / sum(ratios) for ratio in ratios]
    sizes = [int(share) for share in shares]
    for index in sorted(range(len(shares)), key=lambda i: sizes[i] - shares[i])[: total - sum(sizes)]:
        sizes[index] += 1
    for index, ratio in enumerate(ratios):
        donor = max(range(len(sizes)), key=sizes.__getitem__)
        if ratio > 0 and sizes[index] == 0 and sizes[donor] > 1:
            sizes[index], sizes[donor] = 1, sizes[donor] - 1
    return sizes


def _split_folders_layout(base: Path) -> Layout | None:
    if not all((base / split).is_dir() for split in SPLITS):
        return None
    return _files_layout({split: _class_folders(base / split) for split in SPLITS})


def _files_layout(per_split: dict[str, dict[str, list[Path]]]) -> Layout:
    """Image files by split and class, keyed by every file's path, size and modification time."""
    return per_split, [file_key(files) for split in per_split.values() for files in split.values()]


def _csv_layout(base: Path) -> Layout | None:
    csvs = {split: base / f"{split}.csv" for split in SPLITS}
    if not (base / "images").is_dir() or not all(path.is_file() for path in csvs.values()):
        return None
    per_split = {}
    for split, path in csvs.items():
        by_label: dict[str, list[Path]] = defaultdict(list)
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if not row.get("filename") or not row.get("label"):
                    raise MetarunError(f"{path} must have the columns filename,label; a row reads {row}")
                by_label[row["label"]].append(base / "images" / row["filename"])
        per_split[split] = dict(by_label)
    try:
        return _files_layout(per_split)
    except FileNotFoundError as error:
        raise MetarunError(f"a split CSV in {base} names {error.filename}, which does not exist") from None


def _mini_cache_layout(base: Path) -> Layout | None:
    files = {split: base / f"mini-imagenet-cache-{split}.pkl" for split in SPLITS}
    if not all(path.is_file() for path in files.values()):
        return None
    per_split = {}
    for split, path in files.items():
        data = unpickle_file(path, ("image_data", "class_dict"))
        images = np.asarray(data["image_data"], dtype=np.uint8)
        per_split[split] = {label: list(images[sorted(indices)]) for label, indices in sorted(data["class_dict"].items())}
    return per_split, file_key(list(files.values()))


def _category_split_layout(base: Path) -> Layout | None:
    files = {split: base / f"miniImageNet_category_split_{part}.pickle"
             for split, part in zip(SPLITS, ("train_phase_train", "val", "test"))}
    if not all(path.is_file() for path in files.values()):
        return None
    per_split = {split: _group(unpickle_file(path, ("data", "labels"))) for split, path in files.items()}
    return per_split, file_key(list(files.values()))


def _tiered_png_layout(base: Path) -> Layout | None:
    files = {split: (base / f"{split}_images_png.pkl", base / f"{split}_labels.pkl") for split in SPLITS}
    if not all(path.is_file() for pair in files.values() for path in pair):
        return None
    per_split = {}
    for split, (images_path, labels_path) in files.items():
        encoded = unpickle_file(images_path)
        labels = unpickle_file(labels_path, ("label_specific",))
        per_split[split] = _group({"data": [np.asarray(png).tobytes() for png in encoded], "labels": labels["label_specific"]},
                                  labels.get("label_specific_str"))
    return per_split, file_key([path for pair in files.values() for path in pair])


def _tiered_npz_layout(base: Path) -> Layout | None:
    files = {split: (base / f"{split}_images.npz", base / f"{split}_labels.pkl") for split in SPLITS}
    if not all(path.is_file() for pair in files.values() for path in pair):
        return None
    per_split = {}
    for split, (images_path, labels_path) in files.items():
        with np.load(images_path) as archive:
            images = archive["images"]
        labels = unpickle_file(labels_path, ("label_specific",))
        per_split[split] = _group({"data": images, "labels": labels["label_specific"]}, labels.get("label_specific_str"))
    return per_split, file_key([path for pair in files.values() for path in pair])


def _group(data: Mapping[str, Any], label_names: Sequence[str] | None = None) -> Classes:
    """{"data": images, "labels": one int per image} -> {class name: its images}."""
    if len(data["data"]) != len(data["labels"]):
        raise MetarunError(f"a pickle holds {len(data['data'])} images but {len(data['labels'])} labels")
    classes: dict[str, list] = defaultdict(list)
    for image, label in zip(data["data"], data["labels"]):
        classes[label_names[label] if label_names is not None else f"{int(label):04d}"].append(image)
    return dict(sorted(classes.items()))
