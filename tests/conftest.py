"""Shared fixtures; what tests share besides fixtures is in tests/helpers.py."""

from __future__ import annotations

import pytest

from tests.helpers import SMOKE, compose_run


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Data caches go to one temporary folder per session, never to the user's home."""
    monkeypatch.setenv("METARUN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def smoke_cfg():
    return lambda *extra: compose_run(SMOKE + list(extra))
