"""Every stop and every bad start of the `metarun` command is one line, in a subprocess as a user meets it:
Ctrl-C or SIGTERM at start-up (held through torch's import) and during the final test, unknown options
and keys, failed starts."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metarun.interrupts import Interrupted, signals_held

SMOKE = ["debug=smoke", "logger=none"]


def command() -> str:
    return shutil.which("metarun") or str(Path(sys.executable).parent / "metarun")


def start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([command(), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HYDRA_FULL_ERROR": "0"})


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_in_the_first_second_is_one_line_and_leaves_no_folder(tmp_path, signum):
    run = tmp_path / "run"
    process = start(*SMOKE, f"hydra.run.dir={run}", cwd=tmp_path)
    time.sleep(1.0)  # importing torch, composing the config
    process.send_signal(signum)
    output, _ = process.communicate(timeout=60)
    name = signal.Signals(signum).name
    assert lines(output) == [f"metarun: stopped ({name}) before training began; nothing to resume"], output
    assert process.returncode == (130 if signum == signal.SIGINT else 0)
    assert not run.exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_torchs_import_is_held_to_its_end_then_stops_the_run(signum):
    """Raised inside torch's native import code, Interrupted would abort the process instead."""
    before = signal.getsignal(signum)
    finished = False
    with pytest.raises(Interrupted) as stopped:
        with signals_held():
            os.kill(os.getpid(), signum)
            time.sleep(0.05)  # Python runs a handler between bytecodes: plenty of chances to raise
            finished = True
    assert finished and stopped.value.signal_name == signal.Signals(signum).name
    assert signal.getsignal(signum) is before


def test_ctrl_c_during_the_final_test_is_one_line_and_the_printed_command_finishes_the_run(tmp_path):
    run = tmp_path / "run"
    # Many one-episode test batches: the test phase lasts long enough to be interrupted.
    process = start(*SMOKE, "algo=protonet", "trainer.test_episodes=150", "trainer.eval_batch_size=1", f"hydra.run.dir={run}",
                    cwd=tmp_path)
    seen = []
    while line := process.stdout.readline():
        seen.append(line)
        if "testing the best weights" in line:
            process.send_signal(signal.SIGINT)
            break
    process.wait(timeout=120)
    rest = process.stdout.read()  # from the same buffered reader: nothing it already holds is lost
    stopped = lines(rest)
    assert process.returncode == 130 and len(stopped) == 1, seen + [rest]
    message, _, resume = stopped[0].partition("; continue with: ")
    assert message == "metarun: stopped during the final test (SIGINT) after 4 steps; last.pt and best.pt are saved, so resuming only tests"
    assert not (run / "results.json").exists() and (run / "last.pt").exists()
    args = shlex.split(resume)
    assert args[0] == "metarun" and args[-2:] == ["trainer.resume=true", f"hydra.run.dir={run}"]
    assert "trainer.test_episodes=150" in args
    resumed = subprocess.run([command(), *args[1:-3], "trainer.test_episodes=40", *args[-2:]], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode != 0 and "trainer.test_episodes" in resumed.stderr  # another test set is another run
    resumed = subprocess.run([command(), *args[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run / 'last.pt'} from step 4 of 4" in resumed.stdout + resumed.stderr
    assert (run / "results.json").exists()


@pytest.mark.parametrize("override,message", [
    ("algo=mamll", "metarun: error: algo=mamll is not an option of algo; did you mean maml or mamlpp? (algo: anil, "),
    ("trainer.step=10", "metarun: error: trainer.step is not a setting; did you mean trainer.steps? (trainer has: "),
    ("algo.inner_lrr=0.1", "metarun: error: algo.inner_lrr is not a setting; did you mean algo.inner_lr"),
    ("traner.steps=3", "metarun: error: traner.steps is not a setting; did you mean trainer.steps?"),
    ("episode.ways=50", "metarun: error: episode.ways=50 is more than the 24 classes"),
])
def test_unknown_names_and_failed_starts_are_one_line_and_leave_no_folder(tmp_path, override, message):
    run = tmp_path / "run"
    done = subprocess.run([command(), *SMOKE, override, f"hydra.run.dir={run}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert len(lines(done.stderr)) == 1 and done.stderr.startswith(message), done.stderr
    assert not run.exists()
