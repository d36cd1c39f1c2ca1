"""trainer=ddp: two CPU processes (gloo) give the one-process meta-gradient and the one-process run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from metarun.algorithms import MAML
from metarun.distributed import Distributed
from metarun.episodes import EpisodeBatch
from tests.helpers import random_batch, tiny_conv

TASKS = 4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def maml_and_batch() -> tuple[MAML, EpisodeBatch]:
    return MAML(tiny_conv(seed=0), ways=3, inner_steps=2).double(), random_batch(tasks=TASKS, ways=3)


def averaged_meta_gradient(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed = Distributed(torch.device("cpu"))
    algorithm, batch = maml_and_batch()
    share = distributed.task_slice(TASKS)
    mine = EpisodeBatch(batch.support_x[share], batch.support_y[share], batch.query_x[share], batch.query_y[share], batch.classes[share])
    algorithm.step(mine, train=True).objective.backward()
    params = list(algorithm.parameters())
    distributed.average_gradients(params)
    torch.save([p.grad for p in params], f"{out}.{rank}")
    distributed.close()


def test_two_processes_average_to_the_one_process_meta_gradient(tmp_path):
    out = str(tmp_path / "grads")
    mp.spawn(averaged_meta_gradient, args=(2, free_port(), out), nprocs=2)
    algorithm, batch = maml_and_batch()
    algorithm.step(batch, train=True).objective.backward()
    expected = [p.grad for p in algorithm.parameters()]
    for rank in (0, 1):
        for got, want in zip(torch.load(f"{out}.{rank}"), expected):
            torch.testing.assert_close(got, want)


def test_a_torchrun_run_of_two_processes_ends_as_the_one_process_run(tmp_path):
    bin_dir = Path(sys.executable).parent
    torchrun, metarun = (shutil.which(name) or str(bin_dir / name) for name in ("torchrun", "metarun"))
    args = ["algo=maml", "debug=smoke", "logger=none", "trainer.steps=2", "trainer.eval_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([torchrun, "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "metarun.cli", "trainer=ddp",
                          *args, f"hydra.run.dir={tmp_path / 'two'}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([metarun, *args, f"hydra.run.dir={tmp_path / 'one'}"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two"))
    assert two["val"]["best_step"] == one["val"]["best_step"]
    for part, metric in (("val", "best_acc"), ("test", "acc"), ("test", "loss"), ("test", "acc_ci95")):
        assert two[part][metric] == pytest.approx(one[part][metric], abs=1e-5), (part, metric)
