"""Accuracy neutrality of trainer.precision=auto: the same experiment and seed trained in fp32 and
in what auto resolves to, on real Omniglot, one run after the other; test accuracies with their
95% CIs, whether the CIs overlap, and the training minutes each took.

    OMP_NUM_THREADS=2 python benchmarks/neutrality.py --omniglot ../shared/data/omniglot
    python benchmarks/neutrality.py --experiments maml_omniglot_5w1s --against bf16   # what auto declines
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
EXPERIMENTS = {  # name: overrides (the budgets: ProtoNet 2,000 steps, MAML 500)
    "protonet_omniglot_20w1s": ["trainer.steps=2000", "trainer.eval_every=500"],
    "maml_omniglot_5w1s": ["trainer.steps=500", "trainer.eval_every=100"],
}


def run(experiment: str, precision: str, omniglot: str, out: Path) -> dict:
    run_dir = out / f"{experiment}_{precision}"
    command = ["metarun", f"experiment={experiment}", f"data.root={omniglot}", f"trainer.precision={precision}",
               "trainer.progress=false", "trainer.resume=auto", f"hydra.run.dir={run_dir}", *EXPERIMENTS[experiment]]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, capture_output=True)
    return json.loads((run_dir / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--omniglot", default=str(HERE.parent.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS))
    parser.add_argument("--out", default="outputs/neutrality")
    parser.add_argument("--against", default="auto", help="the precision compared with fp32")
    args = parser.parse_args()
    rows = ["| experiment | steps | precision | test acc ± 95% CI | best val acc | train min | wall min | CIs overlap |",
            "|---|---|---|---|---|---|---|---|"]
    for experiment in args.experiments.split(","):
        results = {precision: run(experiment, precision, args.omniglot, Path(args.out)) for precision in ("fp32", args.against)}
        (low_a, high_a), (low_b, high_b) = ((r["test"]["acc"] - r["test"]["acc_ci95"], r["test"]["acc"] + r["test"]["acc_ci95"])
                                            for r in results.values())
        overlap = "yes" if low_a <= high_b and low_b <= high_a else "no"
        for setting, r in results.items():
            label = setting if setting != "auto" else f"auto ({r['precision']}{', channels-last' if r['channels_last'] else ''})"
            rows.append(f"| {experiment} | {r['steps']} | {label} | {100 * r['test']['acc']:.2f}% ± {100 * r['test']['acc_ci95']:.2f}% | "
                        f"{100 * r['val']['best_acc']:.2f}% | {r['train']['seconds'] / 60:.1f} | {r['wall_s'] / 60:.1f} | {overlap} |")
            print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
