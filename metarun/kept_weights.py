"""The weights a run keeps on disk: best.pt at the best validation, top_<step>.pt for a test
ensemble, last.pt to resume from; and which of them the final test scores."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from torch import Tensor

from metarun import checkpoints
from metarun.errors import MetarunError
from metarun.loop_settings import LoopSettings, Progress

log = logging.getLogger("metarun")


class KeptWeights:
    """Writes and reads a run folder's checkpoints for the trainer. Only the main process writes;
    `progress` is the trainer's, shared, and saved in last.pt with the training state."""

    def __init__(self, run_dir: Path, state: checkpoints.TrainingState, progress: Progress, settings: LoopSettings,
                 higher_is_better: bool, metadata: dict, is_main: bool = True):
        self.run_dir, self.state, self.progress = Path(run_dir), state, progress
        self.ensemble, self.test_weights = settings.test_ensemble, settings.test_weights
        self.higher_is_better, self.metadata, self.is_main = higher_is_better, metadata, is_main

    def validated(self, value: float, step: int) -> None:
        """After a validation scoring `value`: best.pt if it is the best yet, top_<step>.pt if among
        the ensemble's best, then last.pt; checkpoints that fell out of the top go once last.pt no longer lists them."""
        if self.improves(value):
            self.progress.best_val, self.progress.best_step = value, step
            self._save({"algorithm": self.state.algorithm.state_dict(), "step": step}, "best.pt")
        dropped = self._keep_top(value, step) if self.ensemble > 1 and math.isfinite(value) else []
        self.save_last()
        for old_step in dropped:
            if self.is_main:
                (self.run_dir / f"top_{old_step}.pt").unlink(missing_ok=True)

    def improves(self, value: float) -> bool:
        """A NaN or infinite score never counts as the best, whatever the direction."""
        best = self.progress.best_val
        if not math.isfinite(value):
            return False
        return best is None or (value > best if self.higher_is_better else value < best)

    def save_last(self) -> None:
        """last.pt: everything a resumed run continues from (checkpoints.TrainingState), with the progress."""
        self._save(self.state.state_dict(vars(self.progress).copy(), self.metadata), "last.pt")

    def restore(self, path: Path, steps: int) -> dict:
        """Load last.pt into the training state and the progress, refusing a run of another config;
        returns the saved metadata."""
        if not path.exists():
            raise MetarunError(f"trainer.resume=true but there is no checkpoint at {path}; point hydra.run.dir at the run folder to resume")
        saved = checkpoints.load(path)
        log.info("resuming %s from step %d of %d", path, saved["progress"]["step"], steps)
        differing = checkpoints.config_differences(saved["metadata"].get("config", {}), self.metadata.get("config", {}))
        if differing:
            raise MetarunError(f"cannot resume {path}: the config differs in {', '.join(differing)}; "
                               "only the step count, logging and data.root may change")
        self.state.load_state_dict(saved)  # weights, optimiser, schedule, loss scale, sampler, random generators
        self.progress.load(saved["progress"])
        return saved["metadata"]

    def for_test(self) -> tuple[dict, list[dict[str, Tensor]]]:
        """(what results.json says was tested, the state dicts to test): the ensemble's top
        checkpoints; else best.pt, unless trainer.test_weights=last or no validation was finite
        (then the weights in memory, an empty list)."""
        if self.ensemble > 1 and self.progress.top:
            steps = [step for _, step in self.progress.top]
            weights = [checkpoints.load(self.run_dir / f"top_{step}.pt")["algorithm"] for step in steps]
            return {"weights": f"mean of the {len(steps)} best validations", "steps": steps}, weights
        best = self.run_dir / "best.pt"
        if self.test_weights == "best" and best.exists():
            return {"weights": "best", "step": self.progress.best_step}, [checkpoints.load(best)["algorithm"]]
        return {"weights": "last", "step": self.progress.step}, []

    def _keep_top(self, value: float, step: int) -> list[int]:
        """Keep this validation's weights as top_<step>.pt if among the ensemble's best; returns the steps that fell out."""
        ranked = sorted([*self.progress.top, [value, step]], key=lambda entry: -entry[0] if self.higher_is_better else entry[0])
        kept, dropped = ranked[: self.ensemble], ranked[self.ensemble :]
        if [value, step] in kept:
            self._save({"algorithm": self.state.algorithm.state_dict(), "step": step}, f"top_{step}.pt")
        self.progress.top = kept
        return [old_step for _, old_step in dropped if old_step != step]

    def _save(self, state: dict, name: str) -> None:
        if self.is_main:
            checkpoints.save_atomic(state, self.run_dir / name)
