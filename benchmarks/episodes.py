"""Is episode construction ever the bottleneck? Episodes per second of the sampler against
ProtoNet-with-Conv4 training steps per second on the same episodes, in one run.

For each data set: the time to draw and build a meta-batch (index gather from the uint8 cache,
scaling, augmentation where the config has it) and the time of one full training step on that
meta-batch (forward, backward, Adam), both on the CPU with the same threads. The ratio
step time / sampling time says how many times faster the sampler is than the model it feeds.

    python benchmarks/episodes.py --omniglot ../shared/data/omniglot --cifar ../shared/data/cifar100
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from metarun.algorithms import ProtoNet  # noqa: E402
from metarun.data.augment import Augmentation  # noqa: E402
from metarun.data.cifar import load_cifar_fs  # noqa: E402
from metarun.data.folders import load_image_folder  # noqa: E402
from metarun.data.omniglot import load_omniglot  # noqa: E402
from metarun.episodes import EpisodeSampler, EpisodeSpec  # noqa: E402
from metarun.models import Conv4  # noqa: E402

SPEC = EpisodeSpec(ways=5, shots=1, queries=15)
AUGMENT = Augmentation(crop_padding=4, flip=True, jitter=0.4)


def seconds_per_call(fn, repeats: int) -> float:
    fn()  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def measure(name: str, split, tasks: int, repeats: int) -> str:
    sampler = EpisodeSampler(split, SPEC, seed=0)
    sample_s = seconds_per_call(lambda: sampler.sample(tasks), repeats)
    batch = sampler.sample(tasks)
    model = ProtoNet(Conv4(split.input_shape))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)

    def train_step():
        optimizer.zero_grad()
        model.step(batch, train=True).objective.backward()
        optimizer.step()

    step_s = seconds_per_call(train_step, max(2, repeats // 10))
    shape = "x".join(map(str, split.input_shape))
    return (f"| {name} | {shape} | {tasks} | {tasks / sample_s:.1f} | {tasks / step_s:.1f} | {step_s / sample_s:.1f}x |")


def fake_image_folder(root: Path, classes: int = 20, per_class: int = 30, size: int = 84) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c:03d}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"class{c:03d}" / f"{i}.jpg")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = HERE.parent.parent / "shared" / "data"
    parser.add_argument("--omniglot", default=str(shared / "omniglot"))
    parser.add_argument("--cifar", default=str(shared / "cifar100"))
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "metarun-bench-cache"))
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    rows = ["| data | image | tasks per batch | sampler episodes/s | Conv4 ProtoNet training episodes/s | sampler faster by |",
            "|---|---|---|---|---|---|"]
    cases = [
        ("Omniglot (vinyals, rotations)", lambda: load_omniglot(args.omniglot, cache_dir=args.cache).train),
        ("CIFAR-FS, no augmentation", lambda: load_cifar_fs(args.cifar, cache_dir=args.cache).train),
        ("CIFAR-FS, crop + flip + jitter", lambda: load_cifar_fs(args.cifar, cache_dir=args.cache, augment=AUGMENT).train),
    ]
    with tempfile.TemporaryDirectory() as folder:
        cases.append(("image folder (memory-mapped cache), crop + flip + jitter",
                      lambda: load_image_folder(str(fake_image_folder(Path(folder) / "images")), cache_dir=str(Path(folder) / "cache"),
                                                augment=dataclasses.replace(AUGMENT, crop_padding=8)).train))
        for name, load in cases:
            rows.append(measure(name, load(), args.tasks, args.repeats))
            print(rows[-1], flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("\n" + "\n".join(rows) + f"\n\nthreads: {torch.get_num_threads()}, peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
