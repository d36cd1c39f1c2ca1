"""Bounded memory: how many tasks one pass may take, from one task's step measured before training.

A meta-batch whose activations would not fit is split into passes of fewer tasks with their
gradients accumulated, so no setting is left to the kernel's OOM killer.
"""

from __future__ import annotations

import copy
import ctypes
import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from metarun.algorithms.base import Algorithm
from metarun.compute import Compute
from metarun.episodes import EpisodeBatch
from metarun.errors import MetarunError

log = logging.getLogger("metarun")

USABLE = 0.6  # of the memory available before training: room for evaluation, fragmentation and the data


@dataclass(frozen=True)
class PassPlan:
    """Tasks per training pass and episodes per evaluation pass; None: no split needed."""

    tasks: int | None = None
    eval_tasks: int | None = None


def plan_passes(setting: int | str | None, algorithm: Algorithm, probe: EpisodeBatch, compute: Compute,
                meta_batch_size: int, eval_batch_size: int, eval_images_per_task: int) -> PassPlan:
    """trainer.max_images_per_pass: auto (measure one training task, fill USABLE of the free
    memory), a number of images, or None (never split). Raises if a single task cannot fit."""
    if setting is None:
        return PassPlan()
    train_images = probe.support_x.shape[1] + probe.query_x.shape[1]
    if setting == "auto":
        per_task, available = task_peak_bytes(algorithm, probe, compute), available_bytes(compute.device)
        if per_task is None or available is None:  # cannot measure here: leave passes whole
            return PassPlan()
        max_images = int(USABLE * available / max(per_task, 1) * train_images)
        if max_images < train_images:
            raise MetarunError(
                f"one training task ({train_images} images) needs about {readable(per_task)} of memory and "
                f"{readable(USABLE * available)} can be used on {compute.device}; use fewer ways, shots or queries, "
                "smaller images or a smaller backbone" + (", or trainer.precision=bf16" if compute.precision == "fp32" else ""))
        # A power of two tasks: the same plan for the same run despite the measurement's noise.
        max_images = train_images * 2 ** int(math.log2(max_images // train_images))
    elif isinstance(setting, int) and not isinstance(setting, bool) and setting > 0:
        max_images = setting
        if max_images < train_images:
            raise MetarunError(f"trainer.max_images_per_pass={setting} is fewer than the {train_images} images of "
                               "one training task; raise it or use auto")
    else:
        raise MetarunError(f"trainer.max_images_per_pass={setting!r} is invalid: use auto, a positive number of images, or null")
    plan = PassPlan(tasks=fewer(max_images // train_images, meta_batch_size),
                    eval_tasks=fewer(max(1, max_images // eval_images_per_task), eval_batch_size))
    if plan.tasks:
        log.warning("a meta-batch of %d tasks x %d images does not fit in one pass; training passes %d tasks at a time "
                    "and accumulates their gradients (trainer.max_images_per_pass=%s)", meta_batch_size, train_images,
                    plan.tasks, setting)
    return plan


def fewer(fits: int, whole: int) -> int | None:
    """`fits` if it splits `whole`, else None."""
    return fits if fits < whole else None


def resumed_plan(saved: PassPlan, measured: PassPlan) -> PassPlan:
    """The passes a resumed run trains in: the interrupted run's, so that it ends with the same
    numbers, except where they no longer fit in the memory measured now."""
    def smaller(a: int | None, b: int | None) -> int | None:
        return b if a is None else a if b is None else min(a, b)

    plan = PassPlan(smaller(saved.tasks, measured.tasks), smaller(saved.eval_tasks, measured.eval_tasks))
    if plan != saved:
        log.warning("the interrupted run passed %s tasks at a time, which no longer fits; resuming with %s "
                    "(methods whose batch norm spans a pass may end slightly differently)", saved.tasks or "all", plan.tasks)
    return plan


def task_peak_bytes(algorithm: Algorithm, probe: EpisodeBatch, compute: Compute) -> int | None:
    """Peak memory of one training step (forward and backward) on the one-task batch `probe`,
    leaving the algorithm, its gradients and every random generator as they were."""
    state = copy.deepcopy(algorithm.state_dict())
    devices = [compute.device] if compute.device.type == "cuda" else []

    def step() -> None:
        with torch.random.fork_rng(devices=devices):
            with compute.autocast():
                output = algorithm.step(probe, train=True)
            output.objective.backward()

    try:
        return peak_bytes(step, compute.device)
    finally:
        algorithm.load_state_dict(state)
        algorithm.zero_grad(set_to_none=True)


def peak_bytes(run: Callable[[], None], device: torch.device) -> int | None:
    """How far memory rose above its level before `run()`: the CUDA allocator's peak, or on
    Linux the process's peak resident size (freed heap pages returned first, so reused ones count)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        return torch.cuda.max_memory_allocated(device) - before
    if not sys.platform.startswith("linux"):
        run()
        return None
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets the peak resident size (VmHWM) to the current one
    except OSError:
        run()
        return None
    before = resident_kib("VmHWM")
    run()
    return (resident_kib("VmHWM") - before) * 1024


def resident_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def available_bytes(device: torch.device) -> int | None:
    """Memory this process may still use: free GPU memory, or the machine's available memory
    (under a cgroup limit, if lower) shared between the processes of a torchrun job."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as info:
            available = next(int(line.split()[1]) * 1024 for line in info if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None
    limit = cgroup_headroom()
    if limit is not None:
        available = min(available, limit)
    return available // int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def cgroup_headroom() -> int | None:
    """The cgroup v2 memory limit minus current use, if one is set."""
    try:
        with open("/sys/fs/cgroup/memory.max") as limit, open("/sys/fs/cgroup/memory.current") as current:
            text = limit.read().strip()
            return None if text == "max" else int(text) - int(current.read())
    except (OSError, ValueError):
        return None


def readable(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"
