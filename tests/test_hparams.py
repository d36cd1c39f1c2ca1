"""TensorBoard's HParams tab, read through TensorBoard's own server as a browser reads it."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from metarun.build import train


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def tensorboard_of(tmp_path):
    """Start `tensorboard --logdir <folder>` on 127.0.0.1; returns its HParams API's base URL."""
    servers = []

    def start(logdir: Path) -> str:
        port = free_port()
        executable = shutil.which("tensorboard", path=str(Path(sys.executable).parent))
        servers.append(subprocess.Popen([executable, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        base = f"http://127.0.0.1:{port}/data/plugin/hparams"
        for _ in range(120):
            try:
                if post(f"{base}/experiment", {"experimentName": ""}).get("hparamInfos"):
                    return base
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError("tensorboard did not answer")

    yield start
    for server in servers:
        server.terminate()
        server.wait(10)


def test_every_run_fills_every_final_metric_and_the_varying_settings_come_first(smoke_cfg, tmp_path, tensorboard_of):
    for algo, seed in [("maml", 0), ("protonet", 1)]:
        cfg, choices = smoke_cfg("logger=tensorboard", f"algo={algo}", f"seed={seed}")
        train(cfg, tmp_path / f"{algo}_{seed}", choices)
    base = tensorboard_of(tmp_path)
    experiment = post(f"{base}/experiment", {"experimentName": ""})
    columns = [info["name"] for info in experiment["hparamInfos"]]
    varying = {"algo", "seed", "precision", "channels_last"}  # ProtoNet runs bf16 channels-last on this CPU, MAML fp32
    differing = [info["name"] for info in experiment["hparamInfos"] if info.get("differs")]
    assert set(differing) <= varying and {"algo", "seed"} <= set(differing)
    assert columns[: len(differing)] == differing  # the columns that tell runs apart come first
    finals = {"test/acc", "test/acc_ci95", "val/best_acc", "train/minutes", "train/tasks_per_s"}
    assert finals <= {info["name"]["tag"] for info in experiment["metricInfos"]}
    groups = post(f"{base}/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 10, "colParams": [], "aggregationType": "AGGREGATION_AVG",
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]})["sessionGroups"]
    by_run = {group["name"].split("/")[0]: group for group in groups}
    assert set(by_run) == {"maml_0", "protonet_1"}
    for group in by_run.values():
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert finals <= set(values) and all(v == v for v in values.values())  # filled, and no NaN
    assert by_run["maml_0"]["hparams"]["algo.first_order"] == "false"  # a bool reads as one, not as 0.0000
    assert "algo.inner_lr" in by_run["maml_0"]["hparams"] and "algo.inner_lr" not in by_run["protonet_1"]["hparams"]
    assert by_run["protonet_1"]["hparams"]["ways"] == 5 and by_run["protonet_1"]["hparams"]["lr"] == pytest.approx(0.001)
