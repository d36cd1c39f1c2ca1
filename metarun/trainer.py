"""The single training loop: meta-train, validate, checkpoint, test. It never asks which algorithm it runs."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from metarun import checkpoints
from metarun.algorithms.base import Algorithm
from metarun.compute import Compute
from metarun.distributed import SingleProcess
from metarun.episodes import EpisodeSampler, FixedEpisodes
from metarun.evaluation import evaluate, evaluate_ensemble
from metarun.interrupts import RunInterrupted, StopRequests
from metarun.kept_weights import KeptWeights
from metarun.loggers import NullLogger
from metarun.loop_settings import LoopSettings, Progress
from metarun.memory import PassPlan, resumed_plan
from metarun.nonfinite import NonFinitePolicy
from metarun.pictures import RunPictures
from metarun.results import final_scalars, run_results, summarize, write_json

log = logging.getLogger("metarun")


class Trainer:
    """The loop; its collaborators keep the checkpoints (kept_weights.KeptWeights), handle NaNs
    (nonfinite.NonFinitePolicy), draw (pictures.RunPictures) and write results (results.py)."""

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
        self.progress = Progress()
        state = checkpoints.TrainingState(algorithm, optimizer, scheduler, self.scaler, sampler)
        self.kept = KeptWeights(self.run_dir, state, self.progress, settings, self.higher_is_better, self.metadata,
                                self.distributed.is_main)
        self.nonfinite = NonFinitePolicy(settings.on_nonfinite, self.progress, self.logger, self.run_dir, self.monitor)
        self._postfix: dict[str, str] = {}  # the progress bar's live loss, accuracy and validation accuracy

    @property
    def device(self) -> torch.device:
        return next(self.algorithm.parameters()).device

    def fit(self) -> dict:
        """Meta-train to `steps`, validating every `eval_every`; then test the best weights."""
        started = time.perf_counter()
        last = self.run_dir / "last.pt"
        if self.settings.resume is True or (self.settings.resume == "auto" and last.exists()):
            self._resume_passes(self.kept.restore(last, self.settings.steps))
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
                    self.kept.save_last()
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
            self.nonfinite.training_step(step, {"loss": float(loss), "meta-gradient norm": float(grad_norm)})
        self.scaler.update()
        self.algorithm.end_meta_step()
        if self.scheduler is not None:
            self.scheduler.step()
        return metrics

    def _validate(self, step: int) -> None:
        summary = summarize(self.evaluate(self.val_episodes))
        value = summary[self.monitor]
        if not math.isfinite(value):
            self.nonfinite.validation(step, value)
        self.logger.log_scalars({f"val/{self.monitor}": value, "val/loss": summary["loss"]}, step)
        self._postfix[f"val_{self.monitor}"] = f"{value:.3f}"
        self.pictures.predictions(self.algorithm, step)
        self.kept.validated(value, step)

    def evaluate(self, episodes: FixedEpisodes) -> dict[str, torch.Tensor]:
        """Per-episode metrics [E] on fixed episodes (metarun.evaluation.evaluate)."""
        return evaluate(self.algorithm, episodes, self.compute, self.settings.eval_batch_size, self.distributed,
                        self.settings.eval_batch_norm)

    def _test(self, wall_seconds: float) -> dict:
        self.distributed.barrier()  # rank 0 has written its checkpoints: every process sees the same files
        if not (self.run_dir / "best.pt").exists():  # resumed to a step count it had already reached
            self._validate(self.progress.step)
            self.distributed.barrier()
        tested, weights = self.kept.for_test()
        ensemble = "steps" in tested
        what = (f"the mean prediction of the weights of steps {tested['steps']}" if ensemble
                else f"the {tested['weights']} weights, of step {tested['step']},")
        log.info("testing %s on %d fixed test episodes", what, len(self.test_episodes))
        if ensemble:
            per_episode = evaluate_ensemble(self.algorithm, weights, self.test_episodes, self.compute, self.settings.eval_batch_size,
                                            self.algorithm.task, self.settings.eval_batch_norm)
        else:
            if weights:
                self.algorithm.load_state_dict(weights[0])
            per_episode = self.evaluate(self.test_episodes)
        test = summarize(per_episode)
        if not math.isfinite(test[self.monitor]):
            log.warning("test %s is %s over %d episodes: the weights diverge on some test episodes (lower optim.lr or "
                        "algo.inner_lr); results.json records null", self.monitor, test[self.monitor], test["episodes"])
        self.pictures.final_figures(self.algorithm, self.progress.step)
        results = run_results(self.monitor, test, tested, self.progress, self.settings.meta_batch_size, wall_seconds, self.metadata)
        self.logger.log_scalars(final_scalars(results), self.progress.step)
        self.logger.log_hparams(self.hparams)
        if self.distributed.is_main:
            write_json(self.run_dir / "results.json", results)
        return results

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
