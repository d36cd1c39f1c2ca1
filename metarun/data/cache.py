"""A decoded-data cache keyed by the source files, so a data set is decoded once per machine."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch


def cached(cache_dir: Path, prefix: str, sources: dict[str, Path], *key_parts, build: Callable[[], dict]) -> dict:
    """Load `build()`'s result from cache_dir, or build it and store it there atomically.

    The key covers each source's path, size and modification time and `key_parts`, so a
    changed data set or setting is decoded again; an unwritable cache folder only costs speed.
    """
    cache_file = cache_dir / f"{prefix}-{_key(sources, key_parts)}.pt"
    if cache_file.exists():
        return torch.load(cache_file, weights_only=True)
    result = build()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_dir, delete=False, suffix=".tmp") as handle:
            torch.save(result, handle)
        os.replace(handle.name, cache_file)
    except OSError:
        pass
    return result


def _key(sources: dict[str, Path], key_parts: tuple) -> str:
    described = [(name, str(path.resolve()), *_stat(path)) for name, path in sorted(sources.items())]
    return hashlib.sha256(repr((described, key_parts, CACHE_VERSION)).encode()).hexdigest()[:16]


def _stat(path: Path) -> tuple[int, int]:
    if path.is_dir():  # a folder's files, not its own mtime, say whether it changed
        files = list(path.rglob("*"))
        return len(files), max((f.stat().st_mtime_ns for f in files), default=0)
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


CACHE_VERSION = 1
