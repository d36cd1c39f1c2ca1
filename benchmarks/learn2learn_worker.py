"""learn2learn's side of a throughput benchmark, written as its own examples do (see compare.py).

Runs in a separate virtual environment with learn2learn 0.2.0 (benchmarks/README.md says how).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zipfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import learn2learn as l2l  # noqa: E402
from common import measure, worker_arguments  # noqa: E402


def model(args) -> torch.nn.Module:
    if args.pooling == "stride":
        return l2l.vision.models.OmniglotCNN(args.ways)  # stride-2 convolutions, mean over space
    side = args.image_size // 16  # four max-pools
    return l2l.vision.models.CNN4(args.ways, hidden_size=args.filters, channels=args.channels, max_pool=True,
                                  embedding_size=args.filters * side * side)


def omniglot_tasks(args):
    """l2l's own Omniglot task pipeline (get_tasksets), over an unpacked copy of the zips.

    torchvision checks the zips' md5, which a repacked copy fails, so that one check is skipped.
    """
    import torchvision

    root = tempfile.mkdtemp()
    for part in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(os.path.join(args.omniglot, f"{part}.zip")) as archive:
            archive.extractall(os.path.join(root, "omniglot-py"))
    torchvision.datasets.Omniglot._check_integrity = lambda self: True
    tasksets = l2l.vision.benchmarks.get_tasksets(
        "omniglot", train_ways=args.ways, train_samples=args.shots + args.queries,
        test_ways=args.ways, test_samples=args.shots + args.queries, root=root)
    return tasksets.train, root


def split_task(data, labels, args):
    """Support/query as l2l's examples split them: the first `shots` of each class are support."""
    order = labels.argsort()
    data, labels = data[order], labels[order]
    per_class = args.shots + args.queries
    support = torch.zeros(data.size(0), dtype=torch.bool)
    support[torch.arange(args.ways) * per_class] = True
    for shot in range(1, args.shots):
        support[torch.arange(args.ways) * per_class + shot] = True
    return data[support], labels[support], data[~support], labels[~support]


def main() -> None:
    args = worker_arguments()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    shape = (args.channels, args.image_size, args.image_size)
    fixed = [(torch.rand(args.ways * args.shots, *shape, generator=g), torch.arange(args.ways).repeat_interleave(args.shots),
              torch.rand(args.ways * args.queries, *shape, generator=g), torch.arange(args.ways).repeat_interleave(args.queries))
             for _ in range(args.tasks)]
    tasks, root = omniglot_tasks(args) if args.data == "omniglot" else (None, None)

    def next_task(t):
        return fixed[t] if tasks is None else split_task(*tasks.sample(), args)

    net = model(args)
    if args.method == "maml":
        maml = l2l.algorithms.MAML(net, lr=0.4, first_order=bool(args.first_order))
        optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)

        def step():  # learn2learn's examples/vision/maml_omniglot.py, per task
            optimizer.zero_grad()
            for t in range(args.tasks):
                sx, sy, qx, qy = next_task(t)
                learner = maml.clone()
                for _ in range(args.inner_steps):
                    learner.adapt(F.cross_entropy(learner(sx), sy))
                F.cross_entropy(learner(qx), qy).backward()
            for p in maml.parameters():
                p.grad.data.mul_(1.0 / args.tasks)
            optimizer.step()
    else:
        features = net.features if hasattr(net, "features") else net
        optimizer = torch.optim.Adam(features.parameters(), lr=1e-3)

        def step():  # learn2learn's examples/vision/protonet_miniimagenet.py, one episode at a time
            for t in range(args.tasks):
                sx, sy, qx, qy = next_task(t)
                embeddings = features(torch.cat([sx, qx]))
                support = embeddings[: len(sx)].reshape(args.ways, args.shots, -1).mean(dim=1)
                query = embeddings[len(sx):]
                logits = -((query.unsqueeze(1) - support.unsqueeze(0)) ** 2).sum(dim=2)
                optimizer.zero_grad()
                F.cross_entropy(logits, qy).backward()
                optimizer.step()

    try:
        measure(step, args)
    finally:
        if root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
