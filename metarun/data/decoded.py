"""Decode a split's images once into a uint8 array on disk, memory-mapped on every later start.

A split is a list of classes, each a list of image items (a file path, encoded bytes, or an
HxWxC uint8 array). Images are converted to `channels`, resized to image_size x image_size and
stored grouped by class in one .npy file per split, so a split is one memory-mapped tensor and
an episode an index gather, however large the data set.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from metarun.data.augment import Augmentation
from metarun.data.cache import one_builder
from metarun.data.split import ImageSplit
from metarun.errors import MetarunError

Item = Union[Path, bytes, np.ndarray]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
CACHE_VERSION = 1
CHUNK = 256  # images per worker task


def decoded_split(
    classes: dict[str, Sequence[Item]],
    image_size: int,
    channels: int,
    cache_dir: str,
    key: object,
    mean: Sequence[float],
    std: Sequence[float],
    augment: Augmentation | None = None,
) -> ImageSplit:
    """An ImageSplit of `classes` ({class name: items}), decoded into (or loaded from) the cache.

    `key` must change whenever the items do (for files: their paths, sizes and times).
    """
    if channels not in (1, 3):
        raise MetarunError(f"data.channels={channels} is not supported; use 1 (grey) or 3 (RGB)")
    names = list(classes)
    counts = torch.tensor([len(classes[name]) for name in names], dtype=torch.long)
    digest = hashlib.sha256(repr((key, names, counts.tolist(), image_size, channels, CACHE_VERSION)).encode()).hexdigest()[:16]
    path = Path(cache_dir).expanduser() / f"images-{digest}.npy"
    if not path.exists():
        with one_builder(path):
            if not path.exists():  # decoded by another process while this one waited
                _decode_into(path, [item for name in names for item in classes[name]], image_size, channels)
    images = torch.from_numpy(np.load(path, mmap_mode="c"))  # copy-on-write: pages load on first touch
    offsets = torch.cumsum(counts, 0) - counts
    return ImageSplit(images, offsets, counts, names, mean=tuple(mean), std=tuple(std), augment=augment)


def file_key(files: Sequence[Path]) -> list[tuple[str, int, int]]:
    """Each file's path, size and modification time: a key that changes when a file does."""
    return [(str(f), stat.st_size, stat.st_mtime_ns) for f in files for stat in [f.stat()]]


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside `folder`, sorted by name."""
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())


def _decode_into(path: Path, items: list[Item], image_size: int, channels: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp.npy")
    array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(items), channels, image_size, image_size))
    chunks = [items[start : start + CHUNK] for start in range(0, len(items), CHUNK)]
    workers = min(os.cpu_count() or 1, len(chunks)) or 1
    try:
        with ProcessPoolExecutor(workers) if workers > 1 else _InProcess() as pool:
            for index, decoded in enumerate(pool.map(_decode_chunk, chunks, [image_size] * len(chunks), [channels] * len(chunks))):
                if isinstance(decoded, str):
                    raise MetarunError(decoded)
                array[index * CHUNK : index * CHUNK + len(decoded)] = decoded
        array.flush()
        del array
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _decode_chunk(items: list[Item], image_size: int, channels: int) -> np.ndarray | str:
    """uint8 [n, channels, S, S], or the one-line error for the first image that cannot be decoded."""
    out = np.empty((len(items), channels, image_size, image_size), dtype=np.uint8)
    for i, item in enumerate(items):
        try:
            image = Image.fromarray(item) if isinstance(item, np.ndarray) else Image.open(io.BytesIO(item) if isinstance(item, bytes) else item)
            image = image.convert("L" if channels == 1 else "RGB")
        except (OSError, ValueError, UnidentifiedImageError) as error:
            name = item if isinstance(item, Path) else f"number {i} of a chunk of {len(items)} stored ones"
            return f"image {name} cannot be decoded ({type(error).__name__}: {' '.join(str(error).split())})"
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
        out[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return out


class _InProcess:
    """ProcessPoolExecutor's map, run here: one core, or a single chunk."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, *iterables):
        return map(fn, *iterables)
