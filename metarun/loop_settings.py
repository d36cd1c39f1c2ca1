"""What the training loop is told (the trainer group of the config) and where a run stands."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from metarun.errors import MetarunError


@dataclass(frozen=True)
class LoopSettings:
    """The trainer group of the config: how long to train, how often to validate, what to keep."""

    steps: int
    meta_batch_size: int
    eval_every: int
    val_episodes: int = 100
    test_episodes: int = 600
    eval_batch_size: int = 25
    grad_clip: float | None = None
    log_every: int = 10
    progress: bool = True
    resume: bool | Literal["auto"] = False  # "auto": resume when the run folder has a last.pt (a requeued job)
    overfit_batches: int = 0
    on_nonfinite: Literal["stop", "skip"] = "stop"
    test_weights: Literal["best", "last"] = "best"  # the weights the final test scores
    eval_batch_norm: Literal["running", "batch"] = "running"  # batch norm statistics at validation and test
    test_ensemble: int = 1  # > 1: test the mean prediction of this many best validation checkpoints (MAML++: 5)
    distributed: bool = False  # trainer=ddp: the meta-batch's tasks shared between torchrun's processes
    # Resolved with the device by build.py into a Compute (metarun/compute.py, metarun/memory.py):
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool | str = "auto"  # auto | true | false
    max_images_per_pass: int | str | None = "auto"  # auto | a number of images | null (never split a meta-batch)

    def __post_init__(self):
        if self.resume not in (True, False, "auto"):
            raise MetarunError(f"trainer.resume={self.resume!r} is not known; use true, false or auto")
        if self.on_nonfinite not in ("stop", "skip"):
            raise MetarunError(f"trainer.on_nonfinite={self.on_nonfinite!r} is not known; use stop or skip")
        if self.eval_batch_norm not in ("running", "batch"):
            raise MetarunError(f"trainer.eval_batch_norm={self.eval_batch_norm!r} is not known; use running or batch")
        if not isinstance(self.test_ensemble, int) or self.test_ensemble < 1:
            raise MetarunError(f"trainer.test_ensemble={self.test_ensemble!r} is invalid: it must be a positive integer")
        if self.test_weights not in ("best", "last"):
            raise MetarunError(f"trainer.test_weights={self.test_weights!r} is not known; use best or last")


@dataclass
class Progress:
    """What a checkpoint restores besides the weights: where the run is and what it has seen."""

    step: int = 0
    best_val: float | None = None  # the best validation value of the monitored metric
    best_step: int = 0
    train_seconds: float = 0.0
    skipped_steps: int = 0
    skipped_validations: int = 0  # not finite, under trainer.on_nonfinite=skip
    top: list = field(default_factory=list)  # [[value, step], ...]: the checkpoints top_<step>.pt kept for test_ensemble

    def load(self, saved: dict) -> None:
        """Take a checkpoint's progress in place (every holder of this object sees it); a field
        added since the checkpoint was written keeps its default."""
        for name, value in saved.items():
            setattr(self, name, value)
