"""Training-step speed and peak memory of each precision and memory format, per method and image size.

Each (workload, setting) runs in a fresh worker process (so its peak memory is its own), the
settings alternating within each repeat; the table gives medians, min-max and the speed-up over
fp32 NCHW, which is how every peer trains. `auto` is what metarun resolves on this machine.

    OMP_NUM_THREADS=2 python benchmarks/precision.py --repeats 3
    python benchmarks/precision.py --workloads maml-omniglot --settings fp32,auto   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

# name: (label, method, input shape, ways, shots, queries, tasks per step, extra algorithm settings)
WORKLOADS = {
    "protonet-omniglot-60way": ("ProtoNet 60-way 1-shot 5-query, 1x28x28 (360 images)", "protonet", (1, 28, 28), 60, 1, 5, 1, {}),
    "protonet-cifarfs": ("ProtoNet 5-way 5-shot 15-query x 4 tasks, 3x32x32 (400 images)", "protonet", (3, 32, 32), 5, 5, 15, 4, {}),
    "protonet-mini": ("ProtoNet 5-way 1-shot 15-query, 3x84x84 (80 images)", "protonet", (3, 84, 84), 5, 1, 15, 1, {}),
    "maml-omniglot": ("MAML 2nd order 1 step, 5-way 1-shot x 8 tasks, 1x28x28", "maml", (1, 28, 28), 5, 1, 15, 8, {"inner_steps": 1}),
    "maml-omniglot-5step": ("MAML 2nd order 5 steps, 5-way 1-shot x 4 tasks, 1x28x28", "maml", (1, 28, 28), 5, 1, 15, 4,
                            {"inner_steps": 5}),
    "maml-mini": ("MAML 2nd order 5 steps, 32 filters, 5-way 1-shot x 2 tasks, 3x84x84", "maml", (3, 84, 84), 5, 1, 15, 2,
                  {"inner_steps": 5, "filters": 32}),
    "fomaml-omniglot": ("FOMAML 1 step, 5-way 1-shot x 8 tasks, 1x28x28", "maml", (1, 28, 28), 5, 1, 15, 8, {"first_order": True}),
    "reptile-omniglot": ("Reptile 5 inner Adam steps, 5-way 1-shot x 4 tasks, 1x28x28", "reptile", (1, 28, 28), 5, 1, 15, 4, {}),
    "metalstm-omniglot": ("Meta-LSTM 5 steps, 5-way 1-shot x 2 tasks, 1x28x28", "metalstm", (1, 28, 28), 5, 1, 15, 2, {}),
    "matchingnet-omniglot": ("Matching Networks 5-way 1-shot x 4 tasks, 1x28x28", "matchingnet", (1, 28, 28), 5, 1, 15, 4, {}),
    "relationnet-omniglot": ("Relation Networks 5-way 1-shot x 4 tasks, 1x28x28", "relationnet", (1, 28, 28), 5, 1, 15, 4, {}),
    "snail-omniglot": ("SNAIL 5-way 1-shot x 4 tasks, 1x28x28", "snail", (1, 28, 28), 5, 1, 15, 4, {}),
    "maml-sinusoid": ("MAML 2nd order 1 step, MLP 40-40, sinusoid 10-shot x 25 tasks", "maml-mlp", (1,), 1, 10, 10, 25, {}),
}
SETTINGS = {  # name: (trainer.precision, trainer.channels_last)
    "fp32": ("fp32", False), "fp32-cl": ("fp32", True), "bf16": ("bf16", False), "bf16-cl": ("bf16", True), "auto": ("auto", "auto"),
}


def worker(name: str, setting: str, steps: int, warmup: int) -> dict:
    import torch

    from benchmarks.common import peak_rss_mb
    from metarun.algorithms import MAML, SNAIL, MatchingNet, MetaLSTM, ProtoNet, RelationNet, Reptile
    from metarun.allocator import tune_malloc
    from metarun.compute import Compute, resolve_channels_last, resolve_precision
    from metarun.episodes import EpisodeBatch
    from metarun.models import MLP, Conv4
    from metarun.tasks import Regression

    tune_malloc()
    _, method, shape, ways, shots, queries, tasks, extra = WORKLOADS[name]
    torch.manual_seed(0)
    extra = dict(extra)
    filters = extra.pop("filters", 64)
    if method == "maml-mlp":
        algorithm = MAML(MLP(shape, hidden=(40, 40)), ways=1, task=Regression(), inner_lr=0.01, **extra)
        labels = lambda k: torch.randn(tasks, k, 1)  # noqa: E731
    else:
        backbone = Conv4(shape, filters=filters, pooled_blocks=2 if method == "relationnet" else None)
        algorithm = {
            "protonet": lambda: ProtoNet(backbone), "maml": lambda: MAML(backbone, ways, inner_lr=0.4, **extra),
            "reptile": lambda: Reptile(backbone, ways, inner_steps=5), "metalstm": lambda: MetaLSTM(backbone, ways, inner_steps=5),
            "matchingnet": lambda: MatchingNet(backbone), "relationnet": lambda: RelationNet(backbone),
            "snail": lambda: SNAIL(backbone, ways, shots),
        }[method]()
        labels = lambda k: torch.arange(ways).repeat_interleave(k).repeat(tasks, 1)  # noqa: E731
    per_class = 1 if method == "maml-mlp" else ways
    batch = EpisodeBatch(torch.rand(tasks, per_class * shots, *shape), labels(shots),
                         torch.rand(tasks, per_class * queries, *shape), labels(queries), torch.arange(ways).repeat(tasks, 1))
    device = torch.device("cpu")
    precision_setting, channels_setting = SETTINGS[setting]
    precision = resolve_precision(precision_setting, device, shape, algorithm.inner_loop)
    compute = Compute(device, precision, resolve_channels_last(channels_setting, device, shape, precision, algorithm.inner_loop))
    compute.place(algorithm)
    optimizer = torch.optim.Adam(algorithm.parameters(), lr=1e-3)

    def step():
        with compute.autocast():
            output = algorithm.step(batch, train=True)
        optimizer.zero_grad(set_to_none=True)
        output.objective.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    return {"ms_per_step": 1000 * seconds, "tasks_per_s": tasks / seconds, "peak_rss_mb": peak_rss_mb(),
            "precision": compute.precision, "channels_last": compute.channels_last}


def run_worker(name: str, setting: str, steps: int, warmup: int) -> dict | None:
    done = subprocess.run([sys.executable, __file__, "--worker", name, setting, str(steps), str(warmup)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  {name} {setting} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per worker")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, setting, steps, warmup = args.worker
        print(json.dumps(worker(name, setting, int(steps), int(warmup))))
        return
    settings = args.settings.split(",")
    rows = ["| workload | setting | ms per step (median, min-max) | tasks/s | vs fp32 NCHW | peak MB |", "|---|---|---|---|---|---|"]
    for name in args.workloads.split(","):
        results: dict[str, list[dict]] = {setting: [] for setting in settings}
        for _ in range(args.repeats):  # alternating, so a slow spell of the machine hits every setting
            for setting in settings:
                result = run_worker(name, setting, args.steps, args.warmup)
                if result:
                    results[setting].append(result)
        base = statistics.median(r["ms_per_step"] for r in results["fp32"]) if results.get("fp32") else None
        for setting, runs in results.items():
            if not runs:
                continue
            ms = sorted(r["ms_per_step"] for r in runs)
            label = setting if setting != "auto" else f"auto ({runs[0]['precision']}{', channels-last' if runs[0]['channels_last'] else ''})"
            speedup = f"{base / statistics.median(ms):.2f}x" if base else "n/a"
            cells = [WORKLOADS[name][0], label, f"{statistics.median(ms):.0f} ({ms[0]:.0f}-{ms[-1]:.0f})",
                     f"{statistics.median(r['tasks_per_s'] for r in runs):.1f}", speedup, f"{max(r['peak_rss_mb'] for r in runs):.0f}"]
            rows.append("| " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
