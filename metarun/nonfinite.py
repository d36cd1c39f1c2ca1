"""What a NaN or infinity does to a run (trainer.on_nonfinite): stop in one line keeping the last
good checkpoint, or skip and count it."""

from __future__ import annotations

import math
from pathlib import Path

from metarun.errors import MetarunError
from metarun.loggers import NullLogger
from metarun.loop_settings import Progress


class NonFinitePolicy:
    def __init__(self, on_nonfinite: str, progress: Progress, logger: NullLogger, run_dir: Path, monitor: str):
        self.skip, self.progress, self.logger = on_nonfinite == "skip", progress, logger
        self.last, self.monitor = Path(run_dir) / "last.pt", monitor

    def training_step(self, step: int, quantities: dict[str, float]) -> None:
        """A step whose loss or meta-gradient is not finite: its update was not applied."""
        if self.skip:
            self.progress.skipped_steps += 1
            self.logger.log_scalars({"train/skipped_steps": self.progress.skipped_steps}, step)
            return
        bad = ", ".join(f"{name} = {value}" for name, value in quantities.items() if not math.isfinite(value))
        raise MetarunError(
            f"non-finite {bad} at step {step}; the last good checkpoint is {self.last} "
            f"(step {self.progress.step}); lower the learning rate, or set trainer.on_nonfinite=skip")

    def validation(self, step: int, value: float) -> None:
        """A validation score that is not finite: it never becomes the best."""
        if self.skip:
            self.progress.skipped_validations += 1
            self.logger.log_scalars({"val/skipped": self.progress.skipped_validations}, step)
            return
        raise MetarunError(
            f"non-finite validation {self.monitor} = {value} at step {step}: the weights diverge on the validation "
            f"episodes; {self.last} keeps the weights of the validation before it; "
            "lower the learning rates (optim.lr, algo.inner_lr), or set trainer.on_nonfinite=skip")
