"""Stop a run cleanly on SIGINT or SIGTERM, at any phase.

Before training (imports, config, data) and during the final test, a signal raises Interrupted,
which the command turns into one line (held through torch's import: signals_held); during
training, StopRequests lets the loop finish its step and checkpoint first.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM outside the training loop (a KeyboardInterrupt, so nothing catches it as an error)."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal_name = signal_name


def raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


def interrupt_on_signals() -> None:
    """From now on SIGINT and SIGTERM raise Interrupted (SIGTERM would otherwise end the process
    without a word); the training loop installs its own handlers while it runs."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, raise_interrupted)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then raise Interrupted for the first one held.
    For native code that runs Python inside C++ (torch's import): Interrupted raised in there
    cannot unwind, and the process aborts ("terminate called after throwing ...")."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: held.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if held:
        raise Interrupted(signal.Signals(held[0]).name)


class StopRequests:
    """While active, the first SIGINT or SIGTERM is recorded for the loop to act on at the next
    step boundary (Ctrl-C, SLURM preemption); a second SIGINT exits at once."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        print(f"\nmetarun: {self.signal_name} received: saving a checkpoint after this step "
              "(press Ctrl-C again to quit at once)", file=sys.stderr, flush=True)


class RunInterrupted(Exception):
    """The run stopped on request with its checkpoints saved; the message says where it stopped."""

    def __init__(self, message: str, signal_name: str, run_dir=None):
        super().__init__(message)
        self.signal_name = signal_name
        self.run_dir = run_dir
        self.exit_code = exit_code(signal_name)


def exit_code(signal_name: str) -> int:
    """0 after SIGTERM (a scheduler's preemption: the job may be requeued), 130 after Ctrl-C."""
    return 0 if signal_name == "SIGTERM" else 130
