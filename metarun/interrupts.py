"""Stop a run cleanly on SIGINT or SIGTERM: finish the current step, checkpoint, exit."""

from __future__ import annotations

import signal
import sys
import threading


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
    """The run stopped on request after saving last.pt; the message says how to resume."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.exit_code = 0 if signal_name == "SIGTERM" else 130
