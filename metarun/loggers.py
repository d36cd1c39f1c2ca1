"""Loggers the trainer writes scalars and the run's hparams entry to: TensorBoard, or nothing."""

from __future__ import annotations

from pathlib import Path


class NullLogger:
    """Logs nothing (logger=none)."""

    active = False  # whether anything logged is kept (pictures are only drawn for a logger that keeps them)

    def __init__(self, log_dir: str | Path | None = None):
        pass

    def start(self, step: int) -> None:
        pass

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        pass

    def log_hparams(self, hparams: dict) -> None:
        pass

    def log_figure(self, tag: str, figure, step: int) -> None:
        pass

    def log_image(self, tag: str, image, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(NullLogger):
    """Scalars `train/*`, `val/*`, `test/*` against the step, figures, episode pictures, and one
    HParams entry per run."""

    active = True

    def __init__(self, log_dir: str | Path, flush_secs: int = 30):
        self.log_dir = Path(log_dir)
        self.flush_secs = flush_secs
        self.writer = None

    def start(self, step: int) -> None:
        """Open the event file; a resumed run purges events after `step` so curves never repeat."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(self.log_dir, purge_step=step + 1 if step else None, flush_secs=self.flush_secs)

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)

    def log_hparams(self, hparams: dict) -> None:
        """The run's HParams entry, in its own event file (add_hparams would start a stray sub-run).

        Only the session's start and end are written, not an experiment summary: TensorBoard then
        derives the columns from every run in the folder, so options that vary between the runs
        come first, a method's options are blank for the other methods, and every scalar the runs
        logged (the final test/*, val/best_* and train/* values included) is a metric column."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        # torch writes a bool as the number 0 or 1; as text it reads true or false.
        shown = {name: str(value).lower() if isinstance(value, bool) else value for name, value in hparams.items()}
        _experiment, session_start, session_end = hparams_summary(shown, {})
        for summary in (session_start, session_end):
            self.writer.file_writer.add_summary(summary)

    def log_figure(self, tag: str, figure, step: int) -> None:
        self.writer.add_figure(tag, figure, step)

    def log_image(self, tag: str, image, step: int) -> None:
        """image: [3, H, W] in [0, 1]."""
        self.writer.add_image(tag, image, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
