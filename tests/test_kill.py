"""SIGKILL at random moments, some inside a checkpoint save, then resume: the same final numbers.
Slow only (three runs of subprocesses); the fast suite's SIGTERM and Ctrl-C tests resume too."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUN = ["debug=smoke", "logger=none", "algo=protonet", "trainer.steps=10", "trainer.eval_every=1"]

# The CLI with torch.save slowed down (written in small chunks with pauses), so that a kill has a
# fair chance of landing inside a checkpoint write: a test-only wrapper, nothing in metarun.
SLOW_SAVES = """
import io, sys, time, torch
real_save = torch.save
def slow_save(obj, target, *args, **kwargs):
    if isinstance(target, (str, bytes)) or hasattr(target, '__fspath__'):
        return real_save(obj, target, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    for start in range(0, len(data), 1 << 16):
        target.write(data[start:start + (1 << 16)])
        time.sleep(0.03)
torch.save = slow_save
from metarun.cli import main
sys.argv[0] = 'metarun'
main()
"""


def metarun(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SLOW_SAVES, *RUN, f"hydra.run.dir={run_dir}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def numbers(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    return {"test": results["test"], "val": results["val"], "steps": results["steps"]}


def kill_and_resume(tmp_path: Path, trials: int, seed: int, every_other_inside_a_save: bool = False) -> list[tuple[bool, bool]]:
    """(killed inside a save, ended identical to an uninterrupted run) for each trial. With
    every_other_inside_a_save, the odd trials wait from their random moment for a save to begin."""
    reference = metarun(tmp_path / "reference")
    assert reference.wait(timeout=600) == 0, reference.stderr.read()
    expected = numbers(tmp_path / "reference")
    rng = random.Random(seed)
    outcomes = []
    for trial in range(trials):
        run_dir = tmp_path / f"killed{trial}"
        process = metarun(run_dir)
        while not (run_dir / "last.pt").exists() and process.poll() is None:  # let it get going
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        while every_other_inside_a_save and trial % 2 and not any(run_dir.glob("*.tmp")) and process.poll() is None:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL  # it died by the kill, not by finishing first
        in_save = any(run_dir.glob("*.tmp"))  # killed inside a write: its temporary file is left behind
        resumed = metarun(run_dir, "trainer.resume=true")
        assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
        said = resumed.stdout.read() + resumed.stderr.read()
        assert f"resuming {run_dir / 'last.pt'} from step" in said  # from its checkpoint, not from the start
        outcomes.append((in_save, numbers(run_dir) == expected))
    return outcomes


@pytest.mark.slow
def test_kill_and_resume_trials_at_random_moments_and_inside_a_save(tmp_path):
    outcomes = kill_and_resume(tmp_path, trials=3, seed=1, every_other_inside_a_save=True)
    assert all(identical for _, identical in outcomes), outcomes
    assert outcomes[1][0]  # the second trial was killed inside a save, as it waited to be
