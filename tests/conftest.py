"""Shared fixtures: the real composed config, temporary run folders, the real data sets if present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from metarun.cli import config_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("METARUN_SHARED_DATA", REPO.parent / "shared" / "data"))
OMNIGLOT = SHARED_DATA / "omniglot"
CIFAR100 = SHARED_DATA / "cifar100"

CONFIGS_EXPERIMENTS = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))

# A fast CPU run on synthetic data: what most tests start from.
SMOKE = ["debug=smoke", "logger=none"]


def compose_run(overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """Compose train.yaml as the CLI would; returns (config without the hydra node, group choices)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Data caches go to one temporary folder per session, never to the user's home."""
    monkeypatch.setenv("METARUN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def smoke_cfg():
    return lambda *extra: compose_run(SMOKE + list(extra))


def requires_omniglot():
    return pytest.mark.skipif(not OMNIGLOT.exists(), reason=f"real Omniglot not found at {OMNIGLOT}")


def requires_cifar100():
    return pytest.mark.skipif(not CIFAR100.exists(), reason=f"real CIFAR-100 not found at {CIFAR100}")
