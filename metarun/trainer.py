"""The single training loop: meta-train, validate, checkpoint, test. It never asks which algorithm it runs."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from metarun import checkpoints
from metarun.algorithms.base import Algorithm
from metarun.compute import Compute
from metarun.distributed import SingleProcess
from metarun.episodes import EpisodeSampler, FixedEpisodes
from metarun.errors import MetarunError
from metarun.evaluation import evaluate, evaluate_ensemble
from metarun.interrupts import RunInterrupted, StopRequests
from metarun.loggers import NullLogger
from metarun.memory import PassPlan, resumed_plan
from metarun.pictures import RunPictures
from metarun.results import run_results, summarize, write_json

log = logging.getLogger("metarun")


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


class Trainer:
    def __init__(
        self,
        algorithm: Algorithm,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        sampler: EpisodeSampler,
        val_episodes: FixedEpisodes,
        test_episodes: FixedEpisodes,
        settings: LoopSettings,
        run_dir: Path,
        logger: NullLogger | None = None,
        monitor: tuple[str, bool] = ("acc", True),
        metadata: dict | None = None,
        hparams: dict | None = None,
        pictures: RunPictures | None = None,
        distributed: SingleProcess | None = None,
        compute: Compute | None = None,
    ):
        """monitor: (metric, higher is better): the one that selects best.pt, from the data's task;
        pictures: what the run draws at its start, validations and end (pictures.RunPictures);
        distributed: this process's part in a multi-process run (only rank 0 logs and writes);
        compute: precision, memory format and tasks per pass (every step runs under its autocast)."""
        self.algorithm = algorithm
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.sampler = sampler
        self.val_episodes = val_episodes
        self.test_episodes = test_episodes
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.logger = logger or NullLogger()
        self.monitor, self.higher_is_better = monitor
        self.metadata = metadata or {}
        self.hparams = hparams or {}
        self.distributed = distributed or SingleProcess()
        self.compute = compute or Compute(self.device)
        self.pictures = pictures or RunPictures(self.logger, self.run_dir, self.compute)
        self.scaler = self.compute.grad_scaler()
        self.state = checkpoints.TrainingState(algorithm, optimizer, scheduler, self.scaler, sampler)
        self.progress = Progress()
        self._postfix: dict[str, str] = {}  # the progress bar's live loss, accuracy and validation accuracy

    @property
    def device(self) -> torch.device:
        return next(self.algorithm.parameters()).device

    def fit(self) -> dict:
        """Meta-train to `steps`, validating every `eval_every`; then test the best weights."""
        started = time.perf_counter()
        last = self.run_dir / "last.pt"
        if self.settings.resume is True or (self.settings.resume == "auto" and last.exists()):
            self._restore(last)
        self.logger.start(self.progress.step)
        if self.progress.step == 0:
            self.pictures.training_episode()
        try:
            with StopRequests() as stop:
                self._train(stop)
            try:
                results = self._test(time.perf_counter() - started)
            except KeyboardInterrupt as stopped:  # Ctrl-C or SIGTERM (interrupts.Interrupted) while testing
                signal_name = getattr(stopped, "signal_name", "SIGINT")
                raise RunInterrupted(f"stopped during the final test ({signal_name}) after {self.progress.step} steps; "
                                     "last.pt and best.pt are saved, so resuming only tests", signal_name, self.run_dir) from None
        finally:
            self.logger.close()
        return results

    def _train(self, stop: StopRequests) -> None:
        settings, progress = self.settings, self.progress
        bar = tqdm(total=settings.steps, initial=progress.step, disable=not (settings.progress and self.distributed.is_main),
                   desc="meta-train", dynamic_ncols=True)
        self.algorithm.train()
        segment_start = time.perf_counter()
        for step in range(progress.step + 1, settings.steps + 1):
            metrics = self._train_step(step)
            bar.update()
            if step % settings.log_every == 0 or step == settings.steps:
                scalars = {f"train/{name}": float(values.mean()) for name, values in metrics.items()}
                scalars["train/lr"] = self.optimizer.param_groups[0]["lr"]
                self.logger.log_scalars(scalars, step)
                self._postfix.update({name: f"{scalars[f'train/{name}']:.3f}" for name in ("loss", self.monitor)})
                bar.set_postfix(self._postfix)
            validate = step % settings.eval_every == 0 or step == settings.steps
            stopping = self.distributed.any(stop.signal_name is not None)  # every process stops at the same step
            if validate or stopping:  # both end a timed segment and leave last.pt
                progress.train_seconds += self._elapsed_since(segment_start)
                progress.step = step
                if validate:
                    self._validate(step)
                    bar.set_postfix(self._postfix)
                else:
                    self._save_last()
                segment_start = time.perf_counter()
            if stopping:
                bar.close()
                signal_name = stop.signal_name or "SIGTERM"  # another process's
                raise RunInterrupted(f"stopped at step {step} of {settings.steps} ({signal_name}); last.pt is saved",
                                     signal_name, self.run_dir)
        bar.close()

    def _train_step(self, step: int) -> dict[str, torch.Tensor]:
        tasks = self.settings.meta_batch_size
        batch = self.sampler.sample(tasks, self.distributed.task_slice(tasks))
        self.optimizer.zero_grad(set_to_none=True)
        per_pass = []
        for part in batch.split(self.compute.tasks_per_pass or batch.tasks):  # passes that fit in memory
            with self.compute.autocast():
                output = self.algorithm.step(part, train=True)
            # Each objective is its tasks' mean: weighted by their share, the gradients add up to the meta-batch's.
            self.scaler.scale(output.objective * (part.tasks / batch.tasks)).backward()
            per_pass.append(output.metrics)
        self.distributed.average_gradients([p for p in self.algorithm.parameters() if p.requires_grad])
        self.distributed.average_buffers(self.algorithm)
        metrics = self.distributed.gather_tasks({name: torch.cat([m[name] for m in per_pass]) for name in per_pass[0]})
        self.scaler.unscale_(self.optimizer)
        # The norm is computed even without clipping, to catch a NaN or inf before it reaches the weights.
        params = [p for p in self.algorithm.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if self.settings.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(params, self.settings.grad_clip, grad_norm)
        loss = metrics["loss"].mean()
        # Under fp16 an infinite gradient is the loss scale's overflow: the scaler skips that update and lowers the scale.
        if torch.isfinite(loss) and (torch.isfinite(grad_norm) or self.scaler.is_enabled()):
            self.scaler.step(self.optimizer)
        else:
            self._non_finite(step, {"loss": float(loss), "meta-gradient norm": float(grad_norm)})
        self.scaler.update()
        self.algorithm.end_meta_step()
        if self.scheduler is not None:
            self.scheduler.step()
        return metrics

    def _non_finite(self, step: int, quantities: dict[str, float]) -> None:
        """Skip the update and count it, or stop the run keeping the last good checkpoint."""
        bad = ", ".join(f"{name} = {value}" for name, value in quantities.items() if not math.isfinite(value))
        if self.settings.on_nonfinite == "skip":
            self.progress.skipped_steps += 1
            self.logger.log_scalars({"train/skipped_steps": self.progress.skipped_steps}, step)
            return
        raise MetarunError(
            f"non-finite {bad} at step {step}; the last good checkpoint is {self.run_dir / 'last.pt'} "
            f"(step {self.progress.step}); lower the learning rate, or set trainer.on_nonfinite=skip")

    def _validate(self, step: int) -> None:
        summary = summarize(self.evaluate(self.val_episodes))
        value = summary[self.monitor]
        if not math.isfinite(value):
            self._non_finite_validation(step, value)
        self.logger.log_scalars({f"val/{self.monitor}": value, "val/loss": summary["loss"]}, step)
        self._postfix[f"val_{self.monitor}"] = f"{value:.3f}"
        self.pictures.predictions(self.algorithm, step)
        if self._improves(value):
            self.progress.best_val, self.progress.best_step = value, step
            self._save({"algorithm": self.algorithm.state_dict(), "step": step}, "best.pt")
        dropped = self._keep_top(value, step) if self.settings.test_ensemble > 1 and math.isfinite(value) else []
        self._save_last()
        for old_step in dropped:  # after last.pt no longer lists them
            if self.distributed.is_main:
                (self.run_dir / f"top_{old_step}.pt").unlink(missing_ok=True)

    def _keep_top(self, value: float, step: int) -> list[int]:
        """Keep this validation's weights as top_<step>.pt if it is among the test_ensemble best;
        returns the steps whose checkpoints fell out."""
        ranked = sorted([*self.progress.top, [value, step]], key=lambda entry: -entry[0] if self.higher_is_better else entry[0])
        kept, dropped = ranked[: self.settings.test_ensemble], ranked[self.settings.test_ensemble :]
        if [value, step] in kept:
            self._save({"algorithm": self.algorithm.state_dict(), "step": step}, f"top_{step}.pt")
        self.progress.top = kept
        return [old_step for _, old_step in dropped if old_step != step]

    def _non_finite_validation(self, step: int, value: float) -> None:
        """Stop keeping the last good checkpoint, as a non-finite training loss does, or count it and go on."""
        if self.settings.on_nonfinite == "skip":
            self.progress.skipped_validations += 1
            self.logger.log_scalars({"val/skipped": self.progress.skipped_validations}, step)
            return
        raise MetarunError(
            f"non-finite validation {self.monitor} = {value} at step {step}: the weights diverge on the validation "
            f"episodes; {self.run_dir / 'last.pt'} keeps the weights of the validation before it; "
            "lower the learning rates (optim.lr, algo.inner_lr), or set trainer.on_nonfinite=skip")

    def _save_last(self) -> None:
        """last.pt: everything a resumed run continues from (checkpoints.TrainingState), with the progress."""
        self._save(self.state.state_dict(vars(self.progress).copy(), self.metadata), "last.pt")

    def _save(self, state: dict, name: str) -> None:
        if self.distributed.is_main:
            checkpoints.save_atomic(state, self.run_dir / name)

    def _improves(self, value: float) -> bool:
        """A NaN or infinite score never counts as the best, whatever the direction."""
        best = self.progress.best_val
        if not math.isfinite(value):
            return False
        return best is None or (value > best if self.higher_is_better else value < best)

    def evaluate(self, episodes: FixedEpisodes) -> dict[str, torch.Tensor]:
        """Per-episode metrics [E] on fixed episodes (metarun.evaluation.evaluate)."""
        return evaluate(self.algorithm, episodes, self.compute, self.settings.eval_batch_size, self.distributed,
                        self.settings.eval_batch_norm)

    def _test(self, wall_seconds: float) -> dict:
        self.distributed.barrier()  # rank 0 has written its checkpoints: every process sees the same files
        if not (self.run_dir / "best.pt").exists():  # resumed to a step count it had already reached
            self._validate(self.progress.step)
            self.distributed.barrier()
        if self.settings.test_ensemble > 1 and self.progress.top:
            steps = [step for _, step in self.progress.top]
            tested = {"weights": f"mean of the {len(steps)} best validations", "steps": steps}
            log.info("testing the mean prediction of the weights of steps %s on %d fixed test episodes", steps, len(self.test_episodes))
            weights = [checkpoints.load(self.run_dir / f"top_{step}.pt")["algorithm"] for step in steps]
            test = summarize(evaluate_ensemble(self.algorithm, weights, self.test_episodes, self.compute,
                                               self.settings.eval_batch_size, self.algorithm.task, self.settings.eval_batch_norm))
        else:
            tested = self._load_tested_weights()
            log.info("testing the %s weights, of step %d, on %d fixed test episodes", tested["weights"], tested["step"],
                     len(self.test_episodes))
            test = summarize(self.evaluate(self.test_episodes))
        if not math.isfinite(test[self.monitor]):
            log.warning("test %s is %s over %d episodes: the weights diverge on some test episodes (lower optim.lr or "
                        "algo.inner_lr); results.json records null", self.monitor, test[self.monitor], test["episodes"])
        self.pictures.final_figures(self.algorithm, self.progress.step)
        progress, metric = self.progress, self.monitor
        results = run_results(metric, test, tested, progress, self.settings.meta_batch_size, wall_seconds, self.metadata)
        # Scalars at the last step, so TensorBoard's HParams table shows each of them for every run.
        final = {f"test/{metric}": test[metric], f"test/{metric}_ci95": test[f"{metric}_ci95"], "test/loss": test["loss"],
                 f"val/best_{metric}": progress.best_val, "train/minutes": progress.train_seconds / 60,
                 "train/tasks_per_s": results["train"]["tasks_per_s"]}
        self.logger.log_scalars({name: value for name, value in final.items() if value is not None}, progress.step)
        self.logger.log_hparams(self.hparams)
        if self.distributed.is_main:
            write_json(self.run_dir / "results.json", results)
        return results

    def _load_tested_weights(self) -> dict:
        """best.pt, unless trainer.test_weights=last or no validation score was finite: which weights, of which step."""
        best = self.run_dir / "best.pt"
        if self.settings.test_weights == "best" and best.exists():
            self.algorithm.load_state_dict(checkpoints.load(best)["algorithm"])
            return {"weights": "best", "step": self.progress.best_step}
        return {"weights": "last", "step": self.progress.step}

    def _restore(self, path: Path) -> None:
        if not path.exists():
            raise MetarunError(f"trainer.resume=true but there is no checkpoint at {path}; point hydra.run.dir at the run folder to resume")
        state = checkpoints.load(path)
        log.info("resuming %s from step %d of %d", path, state["progress"]["step"], self.settings.steps)
        differing = checkpoints.config_differences(state["metadata"].get("config", {}), self.metadata.get("config", {}))
        if differing:
            raise MetarunError(f"cannot resume {path}: the config differs in {', '.join(differing)}; "
                               "only the step count, logging and data.root may change")
        self.state.load_state_dict(state)  # weights, optimiser, schedule, loss scale, sampler, random generators
        self._resume_passes(state["metadata"])
        self.progress = Progress(**state["progress"])

    def _resume_passes(self, saved: dict) -> None:
        """Train in the interrupted run's passes where they still fit (memory.resumed_plan)."""
        measured = PassPlan(self.compute.tasks_per_pass, self.compute.eval_tasks_per_pass)
        plan = resumed_plan(PassPlan(saved.get("tasks_per_pass"), saved.get("eval_tasks_per_pass")), measured)
        self.compute = replace(self.compute, tasks_per_pass=plan.tasks, eval_tasks_per_pass=plan.eval_tasks)
        self.metadata |= self.compute.describe()

    def _elapsed_since(self, start: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start
