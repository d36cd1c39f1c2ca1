"""Checkpoints written atomically, holding everything a resumed run needs to continue exactly.

Every checkpoint holds tensors and plain values only, and is read with `weights_only=True`, so a
run folder from someone else cannot run code when it is resumed or predicted with.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metarun.errors import MetarunError


def save_atomic(payload: dict, path: Path) -> None:
    """Write to a temporary file, fsync, then rename: a kill at any moment leaves the old or the new file whole."""
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)


def rng_states() -> dict:
    """The global random number generators' states (Python, NumPy, torch CPU and CUDA), as
    tensors and plain values: NumPy's key array becomes a tensor."""
    name, keys, position, has_gauss, cached_gauss = np.random.get_state()
    states = {"python": random.getstate(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gauss],
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached_gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load(path: Path) -> dict:
    """Load onto the CPU (RNG states must live there; load_state_dict moves weights to their
    device), refusing in one line a file that holds anything but tensors and plain values."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise MetarunError(f"{path} holds more than tensors and plain values, so it was not loaded: it may run code "
                           "(a file crafted to), or it was written by a metarun before checkpoints became weights-only; "
                           "train the run again") from None


def read_run(run: Path) -> tuple[dict, dict[str, Tensor]]:
    """The run's metadata (config, input format) and its best weights (the last ones if no best)."""
    last, best = run / "last.pt", run / "best.pt"
    if not last.is_file():
        raise MetarunError(f"no run in {run}: it has no last.pt; give run=<the run folder of a metarun training run>")
    return load(last)["metadata"], load(best if best.is_file() else last)["algorithm"]


def read_weights(source: Path, option: str) -> tuple[dict, dict[str, Tensor]]:
    """A run folder's metadata and best weights (read_run), or one checkpoint file's weights
    (best.pt, last.pt, top_<step>.pt) with the metadata it holds, if any; `option` names the source in errors."""
    if source.is_dir():
        return read_run(source)
    if not source.is_file():
        raise MetarunError(f"{option}={source}: no such run folder or checkpoint file")
    state = load(source)
    if not isinstance(state, dict) or "algorithm" not in state:
        raise MetarunError(f"{option}={source} is not a metarun checkpoint: give a run folder or its best.pt, last.pt or top_<step>.pt")
    return state.get("metadata", {}), state["algorithm"]


@dataclass
class TrainingState:
    """The objects a checkpoint saves and restores together, with every random generator; the
    run's progress and metadata travel beside them."""

    algorithm: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch LR scheduler, or None
    scaler: torch.amp.GradScaler
    sampler: Any  # metarun.episodes.EpisodeSampler

    def state_dict(self, progress: dict, metadata: dict) -> dict:
        return {
            "algorithm": self.algorithm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_states(),
            "progress": progress,
            "metadata": metadata,
        }

    def load_state_dict(self, state: dict) -> None:
        self.algorithm.load_state_dict(state["algorithm"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.scaler.load_state_dict(state.get("scaler") or {})
        restore_rng_states(state["rng"])


# What may change between a run and its resumption: how long it trains, how it reports, where its data lies.
RESUMABLE_CHANGES = ("trainer.steps", "trainer.resume", "trainer.progress", "trainer.log_every", "logger.", "malloc",
                     # the same data, found or fetched elsewhere (a run moved to another machine)
                     "data.root", "data.cache_dir", "data.download", "data.mirror", "data.checksums")


def config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, beyond RESUMABLE_CHANGES.

    A key only the current config has is an option added to metarun since the run was saved: its
    default keeps the old behaviour, so it does not count."""
    old, new = _flatten(saved), _flatten(current)
    differing = sorted(key for key in old.keys() if old.get(key) != new.get(key))
    return [key for key in differing if not key.startswith(RESUMABLE_CHANGES)]


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
