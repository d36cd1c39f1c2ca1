"""Timing and memory helpers shared by metarun's and the reference library's benchmark workers.

Imports only metarun.allocator (no torch), so the reference worker runs in its own virtual environment.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metarun.allocator import tune_malloc  # noqa: E402  (ctypes only: safe in the reference's venv)


def worker_arguments() -> argparse.Namespace:
    """The workload a worker runs, as both sides read it."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", choices=["maml", "protonet", "metasgd", "mamlpp", "reptile", "metalstm", "snail"], required=True)
    parser.add_argument("--data", choices=["random", "omniglot"], required=True)
    parser.add_argument("--omniglot", help="folder holding images_background.zip and images_evaluation.zip")
    parser.add_argument("--pooling", choices=["max", "stride"], default="max")
    parser.add_argument("--filters", type=int, default=64, help="Conv4's channels")
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--first-order", type=int, default=0)
    parser.add_argument("--tasks", type=int, default=32, help="tasks per meta-batch (step)")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=28, help="random tensors of this side (omniglot data: 28)")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--malloc", choices=["default", "tuned"], default="default", help="glibc's, or metarun's setting")
    parser.add_argument("--precision", default="auto", help="metarun's trainer.precision (the reference trains in fp32)")
    parser.add_argument("--channels-last", default="auto", help="metarun's trainer.channels_last: auto, true or false")
    args = parser.parse_args()
    if args.malloc == "tuned":
        tune_malloc()
    return args


def measure(step, args: argparse.Namespace) -> None:
    """Run `step()` (one meta-batch of args.tasks tasks) warmup + steps times; print one JSON line."""
    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    print(json.dumps({"tasks_per_s": args.tasks * args.steps / seconds, "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
