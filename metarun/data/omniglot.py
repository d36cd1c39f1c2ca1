"""Omniglot from the official zips or their unpacked folders, decoded once into a uint8 cache.

Classes are characters, or with label_level=alphabet their alphabets, whose characters (and
their rotations) are then hidden modes (metarun.data.modes, IMP's super-class episodes).

Protocols:
  vinyals: the split of Vinyals et al. 2016 (1028 / 172 / 423 characters), each character's
           90/180/270-degree rotations added as new classes, as the published results use.
  lake:    train on the 30 background alphabets, test on the 20 evaluation alphabets; a few
           background alphabets, chosen by `split_seed`, are held out for validation; no rotations.
  characters: the characters drawn at random (`split_seed`) regardless of alphabet, in Vinyals's
           sizes, with rotations: test alphabets are seen in training, as in the reference codes of
           Relation Networks (1,200 / 423) and MAML (1,100 / 100 / 423), which shuffle characters.
"""

from __future__ import annotations

import io
import random
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from metarun.data.cache import cached
from metarun.data.download import fetch_release, wants_download
from metarun.data.files import split_lists
from metarun.data.modes import ModalSplit
from metarun.data.split import DataSplits, ImageSplit
from metarun.errors import MetarunError

PARTS = ("images_background", "images_evaluation")
OFFICIAL_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
OFFICIAL_CHECKSUMS = {"images_background.zip": "md5:68d2efa1b9178cc56df9314c21c6e718",  # as torchvision checks them
                      "images_evaluation.zip": "md5:6b91aef0f799c5bb55b94e3f2daec811"}
IMAGES_PER_CHARACTER = 20


def load_omniglot(
    root: str,
    protocol: Literal["vinyals", "lake", "characters"] = "vinyals",
    image_size: int = 28,
    download: bool | str = False,
    cache_dir: str = "~/.cache/metarun",
    lake_val_alphabets: int = 5,
    split_seed: int = 0,
    label_level: Literal["character", "alphabet"] = "character",
    modes_per_class: int = 10,
    mirror: str | None = None,
    checksums: dict[str, str] | None = None,
) -> DataSplits:
    """All three splits of Omniglot under `protocol`, images [1, image_size, image_size], ink = 255;
    download (auto or true): fetch the official zips into `root` unless a copy is there, from `mirror`
    (default: the official address) checked against `checksums` (default: the official md5s);
    label_level=alphabet: the classes are alphabets, each episode class showing `modes_per_class`
    of its characters (the split's characters: an alphabet may appear in several splits, a character in one)."""
    if protocol not in ("vinyals", "lake", "characters"):
        raise MetarunError(f"data.protocol={protocol!r} is not known; use 'vinyals', 'lake' or 'characters'")
    if label_level not in ("character", "alphabet"):
        raise MetarunError(f"data.label_level={label_level!r} is not known; use character or alphabet")
    root_path = Path(root).expanduser()
    missing = {name: checksum for name, checksum in dict(checksums or OFFICIAL_CHECKSUMS).items()
               if _source(root_path, name.removesuffix(".zip")) is None}
    if wants_download(download) and missing:
        fetch_release("Omniglot", root_path, missing, mirror or OFFICIAL_URL,
                      "copy images_background.zip and images_evaluation.zip there, or set data.root to a folder that has them")
    splits = _character_splits(root, protocol, image_size, cache_dir, lake_val_alphabets, split_seed)
    if label_level == "character":
        return splits
    return DataSplits(*(ModalSplit.grouping(split, alphabet_of, modes_per_class) for _, split in splits.items()))


def alphabet_of(class_name: str) -> str:
    """"background/<alphabet>/<character>[/rot90]" -> "background/<alphabet>"."""
    return "/".join(class_name.split("/")[:2])


def _character_splits(root: str, protocol: str, image_size: int, cache_dir: str, lake_val_alphabets: int,
                      split_seed: int) -> DataSplits:
    root_path = Path(root).expanduser()
    sources = find_sources(root_path)
    characters = cached(Path(cache_dir).expanduser(), f"omniglot-{image_size}px", sources, image_size,
                        build=lambda: decode_characters(sources, image_size))
    names, images = characters["names"], characters["images"]  # list[str], uint8 [1623, 20, 1, S, S]
    by_name = dict(zip(names, images))
    if protocol == "lake":
        split_names = _lake_split_names(names, lake_val_alphabets, split_seed)
        return DataSplits(**{s: _plain(by_name, split_names[s]) for s in ("train", "val", "test")})
    split_names = _vinyals_split_names() if protocol == "vinyals" else _random_character_split_names(names, split_seed)
    return DataSplits(**{s: _with_rotations(by_name, split_names[s]) for s in ("train", "val", "test")})


def _source(root: Path, part: str) -> Path | None:
    candidates = [base / name for base in (root, root / "omniglot-py") for name in (part, f"{part}.zip")]
    return next((path for path in candidates if path.exists()), None)


def find_sources(root: Path) -> dict[str, Path]:
    """The zip or unpacked folder of each part, looked for in root and root/omniglot-py."""
    sources = {}
    for part in PARTS:
        found = _source(root, part)
        if found is None:
            raise MetarunError(
                f"Omniglot not found: no {part}.zip or {part}/ in {root}; "
                "set data.root to the folder holding the official zips (for example ../shared/data/omniglot) "
                "or set data.download=auto to fetch them (needs internet)"
            )
        sources[part] = found
    return sources


def decode_characters(sources: dict[str, Path], image_size: int) -> dict:
    """Decode every drawing: names ['background/<alphabet>/<character>', ...] and uint8 images."""
    grouped: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for part, path in sources.items():
        for member, data in _read_pngs(path):
            alphabet, character, filename = member.split("/")[-3:]
            grouped[f"{part.removeprefix('images_')}/{alphabet}/{character}"].append((filename, data))
    names = sorted(grouped)
    images = torch.empty(len(names), IMAGES_PER_CHARACTER, 1, image_size, image_size, dtype=torch.uint8)
    for c, name in enumerate(names):
        drawings = sorted(grouped[name])
        if len(drawings) != IMAGES_PER_CHARACTER:
            raise MetarunError(f"Omniglot character {name} has {len(drawings)} drawings, expected {IMAGES_PER_CHARACTER}: is the data set complete?")
        for i, (filename, data) in enumerate(drawings):
            images[c, i, 0] = _decode_png(data, image_size, f"{name}/{filename}")
    return {"names": names, "images": images}


def _read_pngs(path: Path):
    """Yield (member path, PNG bytes) from a zip or an unpacked folder."""
    if path.is_dir():
        for file in sorted(path.rglob("*.png")):
            yield file.relative_to(path.parent).as_posix(), file.read_bytes()
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.endswith(".png"):
                    yield member, archive.read(member)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise MetarunError(f"Omniglot archive {path} cannot be read ({error}): the file is truncated or corrupt") from None


def _decode_png(data: bytes, image_size: int, name: str) -> torch.Tensor:
    """A drawing as uint8 [S, S], resized with Lanczos as the published pipelines do, ink = 255."""
    try:
        image = Image.open(io.BytesIO(data)).convert("L")
    except (OSError, ValueError) as error:
        raise MetarunError(f"Omniglot image {name} cannot be decoded ({error})") from None
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.LANCZOS)
    return torch.from_numpy(255 - np.asarray(image, dtype=np.uint8))


def _vinyals_split_names() -> dict[str, list[str]]:
    return {split: [f"{part}/{alphabet}/{character}" for part, alphabets in tree.items()
                    for alphabet, characters in alphabets.items() for character in characters]
            for split, tree in split_lists("omniglot-vinyals").items()}


def _random_character_split_names(names: list[str], split_seed: int) -> dict[str, list[str]]:
    """Characters shuffled by `split_seed`, cut in the Vinyals split's proportions (1,028 / 172 / 423 of 1,623)."""
    shuffled = random.Random(split_seed).sample(sorted(names), len(names))
    test, val = round(len(names) * 423 / 1623), round(len(names) * 172 / 1623)
    return {"train": shuffled[test + val:], "val": shuffled[test:test + val], "test": shuffled[:test]}


def _lake_split_names(names: list[str], val_alphabets: int, split_seed: int) -> dict[str, list[str]]:
    background = sorted({name.rsplit("/", 1)[0] for name in names if name.startswith("background/")})
    held_out = set(random.Random(split_seed).sample(background, val_alphabets))
    return {
        "train": [n for n in names if n.startswith("background/") and n.rsplit("/", 1)[0] not in held_out],
        "val": [n for n in names if n.rsplit("/", 1)[0] in held_out],
        "test": [n for n in names if n.startswith("evaluation/")],
    }


def _plain(by_name: dict[str, torch.Tensor], names: list[str]) -> ImageSplit:
    return ImageSplit.from_classes([_lookup(by_name, n) for n in names], names, ink=True)


def _with_rotations(by_name: dict[str, torch.Tensor], names: list[str]) -> ImageSplit:
    per_class, class_names = [], []
    for quarter_turns in range(4):
        for name in names:
            per_class.append(torch.rot90(_lookup(by_name, name), quarter_turns, dims=(-2, -1)))
            class_names.append(f"{name}/rot{90 * quarter_turns}")
    return ImageSplit.from_classes(per_class, class_names, ink=True)


def _lookup(by_name: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in by_name:
        raise MetarunError(f"the Omniglot split names character {name}, which the data set lacks")
    return by_name[name]
