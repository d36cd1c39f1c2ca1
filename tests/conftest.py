"""Shared fixtures; what tests share besides fixtures is in tests/helpers.py."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import SMOKE, compose_run

# pytest-xdist runs the suite in several worker processes (`-n`, set in pyproject.toml). Each gets
# its share of the cores, and so do the `metarun` subprocesses it starts (they inherit the
# variable): two workers of two threads each on two cores run several times slower than one.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = str(max(1, cores // workers))
    os.environ["OMP_NUM_THREADS"] = threads
    torch.set_num_threads(int(threads))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Data caches go to one temporary folder per test session, never to the user's home; xdist's
    workers share it, and its lock lets one of them decode each real data set while the others wait."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base
    monkeypatch.setenv("METARUN_CACHE", str(shared / "cache"))


@pytest.fixture
def smoke_cfg():
    return lambda *extra: compose_run(SMOKE + list(extra))
