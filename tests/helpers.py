"""What the tests share: paths to the real data, composing a config, tiny nets and episodes, a fake
Omniglot, the `metarun` command in a subprocess. Fixtures live in conftest.py; no test module
imports another."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from PIL import Image
from torch import nn

from metarun.cli import config_dir
from metarun.episodes import EpisodeBatch
from metarun.models import Conv4

REPO = Path(__file__).resolve().parents[1]
# CI and `make test-slow` name the real data's folder; then a missing data set fails a test instead of skipping it.
SHARED_DATA_GIVEN = "METARUN_SHARED_DATA" in os.environ
SHARED_DATA = Path(os.environ.get("METARUN_SHARED_DATA", REPO.parent / "shared" / "data"))
OMNIGLOT = SHARED_DATA / "omniglot"
CIFAR100 = SHARED_DATA / "cifar100"

# A fast CPU run on synthetic data: what most tests start from.
SMOKE = ["debug=smoke", "logger=none"]
# Narrow convolutions for the smoke runs that show a method or config trains and tests, not how well:
# most of their time was the second-order methods' width.
NARROW_FILTERS = 16
NARROW = f"backbone.filters={NARROW_FILTERS}"


def compose_run(overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """Compose train.yaml as the CLI would; returns (config without the hydra node, group choices)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def requires_data(folder: Path):
    """Skip a test whose real data set is not here, unless the data's folder was named (CI): then it fails."""
    missing = not folder.exists() and not SHARED_DATA_GIVEN  # given but missing: the test that reads it fails
    return pytest.mark.skipif(missing, reason=f"real data not found at {folder}")


def requires_omniglot():
    return requires_data(OMNIGLOT)


def requires_cifar100():
    return requires_data(CIFAR100)


def tiny_conv(seed: int = 0) -> Conv4:
    torch.manual_seed(seed)
    return Conv4((1, 8, 8), filters=4, blocks=2)


def random_batch(tasks: int = 3, ways: int = 3, shots: int = 2, queries: int = 2, size: int = 8, seed: int = 0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    labels = lambda k: torch.arange(ways).repeat_interleave(k).repeat(tasks, 1)  # noqa: E731
    return EpisodeBatch(
        support_x=torch.randn(tasks, ways * shots, 1, size, size, generator=g, dtype=torch.float64),
        support_y=labels(shots),
        query_x=torch.randn(tasks, ways * queries, 1, size, size, generator=g, dtype=torch.float64),
        query_y=labels(queries),
        classes=torch.arange(ways).repeat(tasks, 1),
    )


def float_batch(**kwargs) -> EpisodeBatch:
    """random_batch in float32, as the metric methods' float32 paths expect."""
    batch = random_batch(**kwargs)
    batch.support_x, batch.query_x = batch.support_x.float(), batch.query_x.float()
    return batch


def meta_gradient(algorithm: nn.Module, batch: EpisodeBatch) -> torch.Tensor:
    algorithm.zero_grad()
    algorithm.step(batch, train=True).objective.backward()
    return torch.cat([p.grad.flatten() for p in algorithm.parameters()])


FAKE_OMNIGLOT = {"images_background": {"Alpha": 3, "Beta": 3, "Gamma": 2}, "images_evaluation": {"Delta": 2}}


def drawing(seed: int) -> bytes:
    """A 105x105 one-bit PNG like Omniglot's: white paper, a black stroke 6 pixels wide."""
    image = Image.new("1", (105, 105), 1)
    for i in range(105):
        for width in range(6):
            image.putpixel((i, (seed * 7 + i // 3 + width) % 105), 0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_fake_omniglot(root: Path, as_folders: bool = False) -> Path:
    """Omniglot's layout with 10 characters of 20 drawings, as zips or unpacked folders."""
    root.mkdir(parents=True, exist_ok=True)
    for part, alphabets in FAKE_OMNIGLOT.items():
        files = {f"{part}/{alphabet}/character{c:02d}/{c:04d}_{i:02d}.png": drawing(c * 20 + i)
                 for alphabet, count in alphabets.items() for c in range(1, count + 1) for i in range(1, 21)}
        if as_folders:
            for name, data in files.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(data)
        else:
            with zipfile.ZipFile(root / f"{part}.zip", "w") as archive:
                for name, data in files.items():
                    archive.writestr(name, data)
    return root


def metarun(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """The `metarun` command in a subprocess, as a user runs it."""
    executable = shutil.which("metarun") or str(Path(sys.executable).parent / "metarun")
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def trained_run(folder: Path, overrides: list[str]) -> Path:
    """A run trained in-process in `folder`, with the .hydra/overrides.yaml `metarun` would leave (for metarun-eval)."""
    from metarun.build import build_trainer

    cfg, choices = compose_run(overrides)
    build_trainer(cfg, folder, choices).fit()
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {override}\n" for override in overrides))
    return folder


def results_under(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("results.json"))]
