"""Meta-training throughput and peak memory, metarun against learn2learn on the same workloads.

Each workload runs in a fresh worker process per library (so peak memory is that library's
alone), one after the other in this one run, and the table reports metarun / learn2learn.

    python benchmarks/compare.py --reference-python /tmp/l2l/bin/python --omniglot ../shared/data/omniglot
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

# (label, worker arguments). The MAML Omniglot setting: 5-way 1-shot, 15 queries, 28x28, Conv4.
MAML = ["--method", "maml", "--tasks", "32"]
WORKLOADS = {
    "maml-2nd-1step": ("MAML 2nd order, 1 step, Conv4 max-pool", MAML + ["--inner-steps", "1", "--first-order", "0"]),
    "maml-1st-1step": ("MAML 1st order, 1 step, Conv4 max-pool", MAML + ["--inner-steps", "1", "--first-order", "1"]),
    "maml-2nd-5step": ("MAML 2nd order, 5 steps, Conv4 max-pool", MAML + ["--inner-steps", "5", "--first-order", "0", "--steps", "2"]),
    "maml-1st-5step": ("MAML 1st order, 5 steps, Conv4 max-pool", MAML + ["--inner-steps", "5", "--first-order", "1", "--steps", "2"]),
    "maml-2nd-1step-stride": ("MAML 2nd order, 1 step, Conv4 strided (MAML paper)", MAML + ["--pooling", "stride"]),
    "protonet": ("ProtoNet, 1 episode per step, Conv4 max-pool", ["--method", "protonet", "--tasks", "1", "--steps", "40", "--warmup", "3"]),
    "protonet-60way": ("ProtoNet 60-way 1-shot 5-query, 1 episode per step", ["--method", "protonet", "--tasks", "1", "--ways", "60",
                                                                               "--queries", "5", "--steps", "10", "--warmup", "2"]),
    # miniImageNet shapes (random tensors only): 84x84 RGB.
    "maml-mini": ("MAML 2nd order, 5 steps, 32 filters, 84x84 RGB", MAML[:2] + ["--tasks", "4", "--inner-steps", "5", "--filters", "32",
                                                                          "--image-size", "84", "--channels", "3", "--steps", "2"]),
    "protonet-mini": ("ProtoNet 5-way 5-shot, 84x84 RGB", ["--method", "protonet", "--tasks", "1", "--shots", "5", "--image-size", "84",
                                                           "--channels", "3", "--steps", "10", "--warmup", "2"]),
}


def run_worker(python: str, script: str, worker_args: list[str]) -> dict | None:
    done = subprocess.run([python, str(HERE / script), *worker_args], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  {script} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-python", help="python of a virtual environment with learn2learn 0.2.0")
    parser.add_argument("--omniglot", default=str(HERE.parent.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated keys of WORKLOADS")
    parser.add_argument("--data", default="random,omniglot", help="random (tensors made once) and/or omniglot (end to end)")
    parser.add_argument("--malloc", default="default,tuned", help="allocator settings to compare, the same on both sides")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two sides this often; report the medians")
    parser.add_argument("--reference-malloc", help="the reference's allocator instead of the same as metarun's "
                        "(default: out of the box, each side's own default: --malloc tuned --reference-malloc default)")
    args = parser.parse_args()

    rows = ["| workload | data | malloc | metarun tasks/s | learn2learn tasks/s | ratio | metarun peak MB | learn2learn peak MB |",
            "|---|---|---|---|---|---|---|---|"]
    for key in args.workloads.split(","):
        label, worker_args = WORKLOADS[key]
        for data in args.data.split(","):
            for malloc in args.malloc.split(","):
                full = worker_args + ["--data", data, "--omniglot", args.omniglot, "--malloc", malloc]
                ours, ref = [], []
                for _ in range(args.repeats):  # alternating, so a slow spell of the machine hits both sides
                    ours.append(run_worker(sys.executable, "metarun_worker.py", full))
                    if args.reference_python:
                        reference_args = full if not args.reference_malloc else full[:-1] + [args.reference_malloc]
                        ref.append(run_worker(args.reference_python, "learn2learn_worker.py", reference_args))
                ours, ref = _median(ours), _median(ref)
                ratio = f"{ours['tasks_per_s'] / ref['tasks_per_s']:.2f}x" if ours and ref else "n/a"
                cells = [label, data, malloc if not args.reference_malloc else f"{malloc} / {args.reference_malloc}", _fmt(ours, "tasks_per_s"), _fmt(ref, "tasks_per_s"), ratio,
                         _fmt(ours, "peak_rss_mb", 0), _fmt(ref, "peak_rss_mb", 0)]
                rows.append("| " + " | ".join(cells) + " |")
                print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))


def _median(results: list[dict | None]) -> dict | None:
    """The run with the median throughput (its own peak memory alongside)."""
    done = sorted((r for r in results if r), key=lambda r: r["tasks_per_s"])
    return done[len(done) // 2] if done else None


def _fmt(result: dict | None, key: str, digits: int = 1) -> str:
    return f"{result[key]:.{digits}f}" if result else "n/a"


if __name__ == "__main__":
    main()
