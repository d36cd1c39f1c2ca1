"""Fetching a data set's official files where there is internet (data.download=auto|true).

Each file goes to `<name>.part` beside its destination, with a progress bar; an interrupted
download (a dropped connection, a killed process) continues from where it stopped with an HTTP
Range request; the whole file is checked against the release's checksum before it is renamed, so
a corrupt or truncated file is never kept. Without a network the failure is one actionable line.
The base address is `data.mirror`, for users behind a proxy (and for tests, a local server).
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from metarun.errors import MetarunError

CHUNK = 1 << 20
RETRIES = 5  # a dropped connection is resumed this many times before the download gives up


@contextmanager
def downloading(what: str, root: Path, fix: str, timeout_s: float = 10) -> Iterator[None]:
    """Run a download with a short socket timeout; any failure but a MetarunError becomes one line naming `fix`."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        yield
    except MetarunError:
        raise
    except Exception as error:  # any network failure becomes the same actionable line
        raise MetarunError(f"{what} not found in {root} and could not be downloaded ({type(error).__name__}: {error}); {fix}") from None
    finally:
        socket.setdefaulttimeout(previous)


def fetch_release(what: str, root: Path, files: dict[str, str], base_url: str, fix: str) -> None:
    """Every file {name: checksum} of a release from `base_url` into `root` (those already there kept)."""
    with downloading(what, root, fix):
        for name, checksum in files.items():
            fetch(f"{base_url.rstrip('/')}/{name}", root / name, checksum, what)


def wants_download(download: bool | str) -> bool:
    """data.download: auto (or true) fetches what is not found locally; false never does."""
    if download not in (True, False, "auto"):
        raise MetarunError(f"data.download={download!r} is not known; use auto (fetch what is missing), true or false")
    return download is not False


def fetch(url: str, destination: Path, checksum: str, what: str) -> None:
    """Download `url` to `destination` unless it is there, resuming `<destination>.part`, and keep it
    only if it matches `checksum` ("md5:<hex>" or "sha256:<hex>")."""
    if destination.exists():
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    for attempt in range(RETRIES + 1):
        try:
            _continue(url, partial, what)
            break
        except (ConnectionError, http.client.IncompleteRead, TimeoutError, _Incomplete) as error:
            if attempt == RETRIES:
                raise MetarunError(f"the download of {url} broke off {RETRIES + 1} times ({type(error).__name__}); "
                                   f"run again to continue from {partial}") from None
    algorithm, _, expected = checksum.partition(":")
    digest = file_digest(partial, algorithm)
    if digest != expected:
        partial.unlink()
        raise MetarunError(f"{url} does not match its checksum ({algorithm} {digest}, expected {expected}): the file is "
                           "corrupt or not the official release, and was deleted; nothing was kept")
    partial.replace(destination)


class _Incomplete(Exception):
    """The server closed the connection before the whole file arrived."""


def _continue(url: str, partial: Path, what: str) -> None:
    """Append the rest of `url` to `partial` (all of it if the server ignores the range)."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the range starts at the end: the part is already whole
            return
        raise
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0
        total = have + int(response.headers.get("Content-Length", 0)) or None
        with open(partial, "ab" if resumed else "wb") as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                                  desc=f"downloading {what}", leave=False) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
        if total is not None and partial.stat().st_size < total:
            raise _Incomplete()


def file_digest(path: Path, algorithm: str) -> str:
    if algorithm not in ("md5", "sha256"):
        raise MetarunError(f"checksum algorithm {algorithm!r} is not known; give md5:<hex> or sha256:<hex>")
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
