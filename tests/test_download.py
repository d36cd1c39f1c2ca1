"""data.download=auto: a local copy is used when found, otherwise the files are fetched from
data.mirror (a local HTTP server here), resumed when cut off, kept only when their checksum matches."""

from __future__ import annotations

import hashlib
import http.server
import threading
import urllib.error
from pathlib import Path

import pytest

from metarun.build import build_trainer
from metarun.data.cifar import load_cifar_fs
from metarun.data.download import fetch
from metarun.data.omniglot import load_omniglot
from metarun.errors import MetarunError
from tests.helpers import OMNIGLOT, compose_run, make_fake_omniglot, requires_omniglot


class Server:
    """Serves `files` {name: bytes} on 127.0.0.1 with Range support; `drop_after` cuts the first
    response to a file after that many bytes; `requests` records (path, Range header)."""

    def __init__(self, files: dict[str, bytes], drop_after: int | None = None):
        self.files, self.drop_after, self.requests = files, drop_after, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the name http.server calls)
                name, wanted = self.path.lstrip("/"), self.headers.get("Range")
                server.requests.append((name, wanted))
                if name not in server.files:
                    self.send_error(404)
                    return
                data, start = server.files[name], int(wanted[6:-1]) if wanted else 0
                self.send_response(206 if wanted else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.drop_after is not None and not wanted:
                    body = body[: server.drop_after]  # the connection closes short of Content-Length
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(files, **options):
        servers.append(Server(files, **options))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fake_zips(tmp_path: Path) -> dict[str, bytes]:
    folder = make_fake_omniglot(tmp_path / "release")
    return {name: (folder / name).read_bytes() for name in ("images_background.zip", "images_evaluation.zip")}


def test_a_missing_omniglot_is_downloaded_checked_and_the_run_trains(tmp_path, serve):
    zips = fake_zips(tmp_path)
    server = serve(zips)
    root = tmp_path / "data" / "omniglot"
    checksums = "{" + ", ".join(f"{name}: '{sha256(data)}'" for name, data in zips.items()) + "}"
    cfg, choices = compose_run(["logger=none", "device=cpu", "algo=protonet", f"data.root={root}", f"data.mirror={server.url}",
                                f"data.checksums={checksums}", "data.protocol=lake", "data.lake_val_alphabets=1",
                                f"data.cache_dir={tmp_path / 'cache'}", "episode.ways=2", "episode.queries=3",
                                "trainer.steps=2", "trainer.eval_every=1", "trainer.val_episodes=2", "trainer.test_episodes=4",
                                "trainer.progress=false"])
    results = build_trainer(cfg, tmp_path / "run", choices).fit()
    assert results["test"]["episodes"] == 4
    assert {name: (root / name).read_bytes() for name in zips} == zips and not list(root.glob("*.part"))
    before = len(server.requests)
    load_omniglot(str(root), download="auto", mirror=server.url, cache_dir=str(tmp_path / "cache"), protocol="lake",
                  lake_val_alphabets=1)
    assert len(server.requests) == before  # found locally: nothing fetched again


def test_a_download_cut_off_half_way_is_resumed_with_a_range_request(tmp_path, serve):
    data = bytes(range(256)) * 4000
    server = serve({"file.bin": data}, drop_after=300_000)
    fetch(f"{server.url}/file.bin", tmp_path / "file.bin", sha256(data), "test data")
    assert (tmp_path / "file.bin").read_bytes() == data
    assert server.requests == [("file.bin", None), ("file.bin", "bytes=300000-")]


def test_a_part_left_by_a_killed_process_is_continued(tmp_path, serve):
    data = b"x" * 10_000 + b"y" * 10_000
    server = serve({"file.bin": data})
    (tmp_path / "file.bin.part").write_bytes(data[:10_000])
    fetch(f"{server.url}/file.bin", tmp_path / "file.bin", sha256(data), "test data")
    assert (tmp_path / "file.bin").read_bytes() == data and server.requests == [("file.bin", "bytes=10000-")]


def test_a_corrupt_file_is_refused_in_one_line_and_nothing_is_kept(tmp_path, serve):
    zips = fake_zips(tmp_path)
    server = serve({name: data[:-10] + b"0123456789" for name, data in zips.items()})
    root = tmp_path / "omniglot"
    with pytest.raises(MetarunError, match="does not match its checksum") as error:
        load_omniglot(str(root), download="auto", mirror=server.url, cache_dir=str(tmp_path / "cache"),
                      checksums={name: sha256(data) for name, data in zips.items()})
    assert "\n" not in str(error.value) and not list(root.iterdir())


def test_without_a_network_the_failure_is_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(MetarunError, match=r"Omniglot not found in .* and could not be downloaded \(URLError") as error:
        load_omniglot(str(tmp_path / "omniglot"), download="auto", cache_dir=str(tmp_path / "cache"))
    assert "\n" not in str(error.value) and "images_background.zip" in str(error.value)
    with pytest.raises(MetarunError, match=r"CIFAR-100 not found in .* and could not be downloaded"):
        load_cifar_fs(str(tmp_path / "cifar"), download="auto", cache_dir=str(tmp_path / "cache"))


def test_download_false_never_fetches_and_an_unknown_value_is_one_line(tmp_path):
    with pytest.raises(MetarunError, match="Omniglot not found: no images_background.zip"):
        load_omniglot(str(tmp_path / "omniglot"), download=False, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(MetarunError, match="data.download='sometimes' is not known"):
        load_omniglot(str(tmp_path / "omniglot"), download="sometimes", cache_dir=str(tmp_path / "cache"))


@requires_omniglot()
def test_the_real_omniglot_zips_download_from_a_mirror_and_match_their_checksums(tmp_path, serve):
    zips = {name: (OMNIGLOT / name).read_bytes() for name in ("images_background.zip", "images_evaluation.zip")}
    listed = dict(line.split()[::-1] for line in (OMNIGLOT / "SHA256SUMS").read_text().splitlines())
    server = serve(zips, drop_after=1_000_000)
    for name in zips:
        fetch(f"{server.url}/{name}", tmp_path / name, f"sha256:{listed[name]}", "Omniglot")
        assert (tmp_path / name).read_bytes() == zips[name]
