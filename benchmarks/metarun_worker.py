"""metarun's side of a throughput benchmark: one workload, one JSON line (see compare.py)."""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import measure, worker_arguments  # noqa: E402

from metarun.algorithms import MAML, SNAIL, MetaLSTM, ProtoNet, Reptile  # noqa: E402
from metarun.compute import Compute, resolve_channels_last, resolve_precision  # noqa: E402
from metarun.data.omniglot import load_omniglot  # noqa: E402
from metarun.data.split import ImageSplit  # noqa: E402
from metarun.episodes import EpisodeBatch, EpisodeSampler, EpisodeSpec  # noqa: E402
from metarun.models import Conv4  # noqa: E402


def random_batch(args) -> EpisodeBatch:
    g = torch.Generator().manual_seed(0)
    labels = lambda k: torch.arange(args.ways).repeat_interleave(k).repeat(args.tasks, 1)  # noqa: E731
    shape = (args.channels, args.image_size, args.image_size)
    return EpisodeBatch(
        torch.rand(args.tasks, args.ways * args.shots, *shape, generator=g), labels(args.shots),
        torch.rand(args.tasks, args.ways * args.queries, *shape, generator=g), labels(args.queries),
        torch.arange(args.ways).repeat(args.tasks, 1),
    )


def main() -> None:
    args = worker_arguments()
    torch.manual_seed(0)
    backbone = Conv4((args.channels, args.image_size, args.image_size), filters=args.filters, pooling=args.pooling)
    inner = dict(inner_steps=args.inner_steps, first_order=bool(args.first_order), task_batching="loop")
    if args.method == "maml":
        algorithm = MAML(backbone, args.ways, inner_lr=0.4, **inner)
    elif args.method == "metasgd":
        algorithm = MAML(backbone, args.ways, inner_lr=0.4, learn_inner_lr="per_weight", **inner)
    elif args.method == "mamlpp":  # every MAML++ option on
        algorithm = MAML(backbone, args.ways, inner_lr=0.1, multi_step_loss_steps=10**9, learn_inner_lr=True, per_step_bn=True, **inner)
    elif args.method == "reptile":  # the paper's Omniglot inner loop: Adam on minibatches of 10 from all 5 x 10 images
        algorithm = Reptile(backbone, args.ways, inner_steps=args.inner_steps, inner_batch_size=10, task_batching="loop")
    elif args.method == "metalstm":
        algorithm = MetaLSTM(backbone, args.ways, inner_steps=args.inner_steps)
    elif args.method == "snail":
        algorithm = SNAIL(backbone, args.ways, args.shots)
    else:
        algorithm = ProtoNet(backbone)
    compute = metarun_compute(args, algorithm.inner_loop)
    compute.place(algorithm)
    optimizer = torch.optim.Adam(algorithm.parameters(), lr=1e-3)
    if args.data == "random":
        fixed = random_batch(args)
        next_batch = lambda: fixed  # noqa: E731
    else:
        split: ImageSplit = load_omniglot(args.omniglot, protocol="vinyals").train
        sampler = EpisodeSampler(split, EpisodeSpec(args.ways, args.shots, args.queries), seed=0)
        next_batch = lambda: sampler.sample(args.tasks)  # noqa: E731

    def step():
        with compute.autocast():
            output = algorithm.step(next_batch(), train=True)
        optimizer.zero_grad(set_to_none=True)
        output.objective.backward()
        optimizer.step()

    measure(step, args)


def metarun_compute(args, inner_loop: bool) -> Compute:
    """What metarun's trainer resolves for these settings on the CPU (auto: its default)."""
    device, shape = torch.device("cpu"), (args.channels, args.image_size, args.image_size)
    precision = resolve_precision(args.precision, device, shape, inner_loop)
    channels_last = {"true": True, "false": False}.get(args.channels_last, args.channels_last)
    return Compute(device, precision, resolve_channels_last(channels_last, device, shape, precision, inner_loop))


if __name__ == "__main__":
    main()
