"""The files the data sets read besides images: the class splits metarun ships, and Python pickles."""

from __future__ import annotations

import json
import pickle
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from metarun.errors import MetarunError


def split_lists(benchmark: str) -> dict[str, Any]:
    """metarun/data/splits/<benchmark>/{train,val,test}.json: each split's classes, as the benchmark's authors list them."""
    folder = resources.files("metarun.data") / "splits" / benchmark
    return {split: json.loads((folder / f"{split}.json").read_text()) for split in ("train", "val", "test")}


def unpickle(data: bytes) -> Any:
    """A pickle of the Python 2 era (CIFAR, the miniImageNet / tieredImageNet releases): byte strings as latin-1."""
    return pickle.loads(data, encoding="latin1")


def unpickle_file(path: Path, keys: Sequence[str] = ()) -> Any:
    """`path`'s pickle, which must hold `keys`; one line naming the file where it cannot be read or lacks one."""
    try:
        data = unpickle(path.read_bytes())
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as error:
        raise MetarunError(f"{path} cannot be read ({type(error).__name__}: {error}): the file is truncated or corrupt") from None
    missing = [key for key in keys if key not in data]
    if missing:
        raise MetarunError(f"{path} has no {missing[0]!r} entry: it is not the expected pickle")
    return data
