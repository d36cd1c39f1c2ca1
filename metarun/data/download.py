"""Fetching a data set where there is internet; without it, one actionable line, fast."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from metarun.errors import MetarunError


@contextmanager
def downloading(what: str, root: Path, fix: str, timeout_s: float = 10) -> Iterator[None]:
    """Run a download with a short socket timeout; any failure becomes one line naming `fix`."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        yield
    except Exception as error:  # any network failure becomes the same actionable line
        raise MetarunError(f"could not download {what} into {root} ({type(error).__name__}: {error}); {fix}") from None
    finally:
        socket.setdefaulttimeout(previous)
