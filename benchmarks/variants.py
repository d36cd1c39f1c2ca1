"""Meta-training throughput of the gradient-based variants relative to plain MAML, in one run.

Each method runs in a fresh worker process (so peak memory is its own) on the same workload:
Omniglot 5-way 1-shot with 15 queries (Reptile: the same 80 images as its task data), 28x28,
Conv4 with max-pooling, the same inner steps, one after the other.

    python benchmarks/variants.py --inner-steps 1,5 --data random
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from compare import _fmt, run_worker  # noqa: E402

METHODS = {
    "maml": "MAML (reference)",
    "metasgd": "Meta-SGD",
    "mamlpp": "MAML++ (multi-step loss, per-step rates and batch norm)",
    "reptile": "Reptile (inner Adam, first order by construction)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inner-steps", default="1,5")
    parser.add_argument("--data", default="random", choices=["random", "omniglot"])
    parser.add_argument("--omniglot", default=str(HERE.parent.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--tasks", default="16")
    parser.add_argument("--steps", default="3")
    args = parser.parse_args()
    rows = ["| method | inner steps | tasks/s | relative to MAML | peak MB |", "|---|---|---|---|---|"]
    for steps in args.inner_steps.split(","):
        reference = None
        for method, label in METHODS.items():
            worker_args = ["--method", method, "--inner-steps", steps, "--tasks", args.tasks, "--steps", args.steps,
                           "--data", args.data, "--omniglot", args.omniglot, "--malloc", "tuned"]
            result = run_worker(sys.executable, "metarun_worker.py", worker_args)
            reference = reference or result
            ratio = f"{result['tasks_per_s'] / reference['tasks_per_s']:.2f}x" if result and reference else "n/a"
            rows.append(f"| {label} | {steps} | {_fmt(result, 'tasks_per_s')} | {ratio} | {_fmt(result, 'peak_rss_mb', 0)} |")
            print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
