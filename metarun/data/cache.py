"""A decoded-data cache keyed by the source files, so a data set is decoded once per machine."""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def cached(cache_dir: Path, prefix: str, sources: dict[str, Path], *key_parts, build: Callable[[], dict]) -> dict:
    """Load `build()`'s result from cache_dir, or build it and store it there atomically.

    The key covers each source's path, size and modification time and `key_parts`, so a
    changed data set or setting is decoded again; an unwritable cache folder only costs speed.
    """
    cache_file = cache_dir / f"{prefix}-{_key(sources, key_parts)}.pt"
    if cache_file.exists():
        return torch.load(cache_file, weights_only=True)
    with one_builder(cache_file):
        if cache_file.exists():  # built by another process while this one waited
            return torch.load(cache_file, weights_only=True)
        result = build()
        try:
            with tempfile.NamedTemporaryFile(dir=cache_dir, delete=False, suffix=".tmp") as handle:
                torch.save(result, handle)
            os.replace(handle.name, cache_file)
        except OSError:
            pass
    return result


@contextmanager
def one_builder(cache_file: Path) -> Iterator[None]:
    """Hold an exclusive lock beside `cache_file` while it is built, so that processes sharing a cache
    (a parallel sweep, test workers) decode a data set once: the others wait, then load its file.
    Without a writable cache folder, or on a system without flock, each process builds its own."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        lock = open(cache_file.with_name(cache_file.name + ".lock"), "a")
    except OSError:
        lock = None
    if lock is None:
        yield
        return
    with lock:
        if fcntl is not None:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        yield


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
