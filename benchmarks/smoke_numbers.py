"""The fixed-seed smoke-run test numbers of every method (debug=smoke logger=none), as JSON: run it
before and after a refactor that must not change behaviour, and compare the two files.

    python benchmarks/smoke_numbers.py before.json   # ... change the code ...
    python benchmarks/smoke_numbers.py after.json && cmp before.json after.json
"""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metarun.build import train  # noqa: E402
from tests.helpers import compose_run  # noqa: E402

ALGOS = ["maml", "fomaml", "anil", "metasgd", "mamlpp", "reptile", "protonet", "matchingnet", "relationnet", "siamese", "imp",
         "baseline", "baselinepp", "metalstm", "snail", "mann", "lstm", "pretrain"]
SPECIAL = {"reptile": ["algo.eval_inner_steps=5"], "pretrain": ["data=sinusoid", "backbone=mlp", "episode=sinusoid_10shot"]}


def main(out: str) -> None:
    numbers = {}
    for algo in ALGOS:
        cfg, choices = compose_run(["debug=smoke", "logger=none", f"algo={algo}", *SPECIAL.get(algo, [])])
        with tempfile.TemporaryDirectory() as folder:
            numbers[algo] = train(cfg, Path(folder), choices)["test"]
        print(algo, {name: value for name, value in numbers[algo].items() if not isinstance(value, dict)}, flush=True)
    Path(out).write_text(json.dumps(numbers, indent=1, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])
