"""CIFAR-FS and FC100, the few-shot splits of CIFAR-100's 100 fine classes (600 32x32 RGB images
each: the release's 500 train and 100 test images pooled), read from the official Python release.

The pickles are read directly, without torchvision's md5 check, so rebuilt copies of the same
pixels load too; they are decoded once into a uint8 cache.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from metarun.data.augment import Augmentation
from metarun.data.cache import cached
from metarun.data.download import fetch_release, wants_download
from metarun.data.files import split_lists, unpickle
from metarun.data.split import DataSplits, ImageSplit
from metarun.errors import MetarunError

FOLDER = "cifar-100-python"
ARCHIVE = f"{FOLDER}.tar.gz"
PICKLES = ("train", "test", "meta")
MEAN = (0.5071, 0.4865, 0.4409)  # CIFAR-100 training images, per channel
STD = (0.2673, 0.2564, 0.2762)
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz"
OFFICIAL_CHECKSUMS = {ARCHIVE: "md5:eb9058c3a382ffc7106e4002c42a8d85"}  # as torchvision checks it


def load_cifar_fs(root: str, download: bool | str = False, cache_dir: str = "~/.cache/metarun",
                  augment: Augmentation | None = None, mirror: str | None = None, checksums: dict | None = None) -> DataSplits:
    """CIFAR-FS (Bertinetto et al. 2019): 64 / 16 / 20 fine classes chosen at random."""
    names = {split: [fine for _superclass, fine in entries] for split, entries in split_lists("cifar-fs").items()}
    return _splits(load_cifar100(root, download, cache_dir, mirror, checksums), names, augment)


def load_fc100(root: str, download: bool | str = False, cache_dir: str = "~/.cache/metarun",
               augment: Augmentation | None = None, mirror: str | None = None, checksums: dict | None = None) -> DataSplits:
    """FC100 (Oreshkin et al. 2018): split by superclass, 12 / 4 / 4 superclasses = 60 / 20 / 20
    fine classes, so test classes share no superclass with training ones."""
    data = load_cifar100(root, download, cache_dir, mirror, checksums)
    superclass_of = dict(zip(data["fine_names"], data["coarse_names"]))
    names = {split: [fine for fine in data["fine_names"] if superclass_of[fine] in superclasses]
             for split, superclasses in split_lists("fc100").items()}
    return _splits(data, names, augment)


def load_cifar100(root: str, download: bool | str = False, cache_dir: str = "~/.cache/metarun", mirror: str | None = None,
                  checksums: dict | None = None) -> dict:
    """{"fine_names": [100], "coarse_names": [100] (each fine class's superclass),
    "images": uint8 [100, 600, 3, 32, 32]} from cifar-100-python/ or its .tar.gz in `root`;
    download (auto or true): fetch the official archive unless a copy is there (metarun.data.download)."""
    root_path = Path(root).expanduser()
    if wants_download(download) and not _present(root_path):
        fetch_release("CIFAR-100", root_path, dict(checksums or OFFICIAL_CHECKSUMS), mirror or OFFICIAL_URL,
                      f"copy {ARCHIVE} or {FOLDER}/ there, or set data.root to a folder that has it")
    source = find_source(root_path)
    return cached(Path(cache_dir).expanduser(), "cifar100", {"cifar100": source}, build=lambda: decode(source))


def _present(root: Path) -> bool:
    try:
        find_source(root)
        return True
    except MetarunError:
        return False


def find_source(root: Path) -> Path:
    """The unpacked release folder (root itself, or root/cifar-100-python) or the archive."""
    for candidate in (root, root / FOLDER, root / ARCHIVE):
        if candidate.is_dir() and all((candidate / name).is_file() for name in PICKLES):
            return candidate
        if candidate.is_file():
            return candidate
    raise MetarunError(
        f"CIFAR-100 not found: no {FOLDER}/ (with train, test, meta) or {ARCHIVE} in {root}; "
        "set data.root to the folder holding the official Python release (for example ../shared/data/cifar100) "
        "or set data.download=auto to fetch it (needs internet)"
    )


def decode(source: Path) -> dict:
    """Every fine class's images, the release's train images first, then its test images."""
    pickles = _read_pickles(source)
    try:
        fine_names, coarse_names = pickles["meta"]["fine_label_names"], pickles["meta"]["coarse_label_names"]
        parts = [(np.asarray(part["data"], dtype=np.uint8).reshape(-1, 3, 32, 32),
                  np.asarray(part["fine_labels"]), np.asarray(part["coarse_labels"]))
                 for part in (pickles["train"], pickles["test"])]
    except (KeyError, ValueError) as error:
        raise MetarunError(f"CIFAR-100 in {source} is malformed ({type(error).__name__}: {error})") from None
    pixels = np.concatenate([p for p, _, _ in parts])
    fine = np.concatenate([f for _, f, _ in parts])
    coarse = np.concatenate([c for _, _, c in parts])
    counts = np.bincount(fine, minlength=len(fine_names))
    if len(pixels) != len(fine) or len(counts) != len(fine_names) or counts.min() != counts.max():
        raise MetarunError(f"CIFAR-100 in {source} is malformed: {len(pixels)} images, {len(fine)} labels, "
                           f"{counts.min()} to {counts.max()} images per class (expected the same count for each)")
    order = np.argsort(fine, kind="stable")  # grouped by class, the release's order kept within each
    images = torch.from_numpy(pixels[order]).view(len(fine_names), int(counts[0]), 3, 32, 32)
    superclass = [coarse_names[int(coarse[order[label * counts[0]]])] for label in range(len(fine_names))]
    return {"fine_names": list(fine_names), "coarse_names": superclass, "images": images.clone()}


def _read_pickles(source: Path) -> dict[str, dict]:
    try:
        if source.is_dir():
            return {name: unpickle((source / name).read_bytes()) for name in PICKLES}
        with tarfile.open(source, "r:*") as archive:
            members = {Path(member.name).name: member for member in archive.getmembers() if member.isfile()}
            missing = [name for name in PICKLES if name not in members]
            if missing:
                raise MetarunError(f"CIFAR-100 archive {source} has no {missing[0]} file: is it the Python release ({ARCHIVE})?")
            return {name: unpickle(archive.extractfile(members[name]).read()) for name in PICKLES}
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError, ValueError) as error:
        reason = " ".join(str(error).split())  # tarfile's reasons span lines
        raise MetarunError(f"CIFAR-100 in {source} cannot be read ({type(error).__name__}: {reason}): the file is truncated or corrupt") from None


def _splits(data: dict, names: dict[str, list[str]], augmentation: Augmentation | None) -> DataSplits:
    index = {name: i for i, name in enumerate(data["fine_names"])}

    def split(name: str) -> ImageSplit:
        missing = [fine for fine in names[name] if fine not in index]
        if missing:
            raise MetarunError(f"the split names CIFAR-100 class {missing[0]}, which the data set lacks")
        per_class = [data["images"][index[fine]] for fine in names[name]]
        options = {"augment": augmentation} if name == "train" else {}
        return ImageSplit.from_classes(per_class, names[name], mean=MEAN, std=STD, **options)

    return DataSplits(train=split("train"), val=split("val"), test=split("test"))
