"""Meta-training throughput of the model-based meta-learners relative to ProtoNet, in one run.

Each method runs in a fresh worker process (so peak memory is its own) on the same episodes:
Omniglot 5-way K-shot with 15 queries per class, 28x28, each with the Conv4 of its experiment
config (ProtoNet and SNAIL 64 filters, Meta-LSTM's learner 32) and Meta-LSTM's 12 (1-shot) or
8 (5-shot) inner updates, one after the other.

    python benchmarks/model_based.py --omniglot ../shared/data/omniglot
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from compare import _fmt, run_worker  # noqa: E402

METHODS = {  # method: (label, extra worker arguments by shots)
    "protonet": ("ProtoNet (reference)", lambda shots: []),
    "metalstm": ("Meta-LSTM", lambda shots: ["--filters", "32", "--inner-steps", "12" if shots == 1 else "8"]),
    "snail": ("SNAIL", lambda shots: []),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--data", default="omniglot", choices=["random", "omniglot"])
    parser.add_argument("--omniglot", default=str(HERE.parent.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--tasks", default="4")
    parser.add_argument("--steps", default="5")
    args = parser.parse_args()
    rows = ["| method | shots | tasks/s | relative to ProtoNet | peak MB |", "|---|---|---|---|---|"]
    for shots in args.shots.split(","):
        reference = None
        for method, (label, extra) in METHODS.items():
            worker_args = ["--method", method, "--shots", shots, "--tasks", args.tasks, "--steps", args.steps,
                           "--data", args.data, "--omniglot", args.omniglot, "--malloc", "tuned", *extra(int(shots))]
            result = run_worker(sys.executable, "metarun_worker.py", worker_args)
            reference = reference or result
            ratio = f"{result['tasks_per_s'] / reference['tasks_per_s']:.2f}x" if result and reference else "n/a"
            rows.append(f"| {label} | {shots} | {_fmt(result, 'tasks_per_s')} | {ratio} | {_fmt(result, 'peak_rss_mb', 0)} |")
            print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
