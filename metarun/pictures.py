"""Episodes as pictures for TensorBoard: what the learner is shown, and what it predicts; and a
run's pictures (RunPictures), which the trainer calls at its start, validations and end."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from metarun.compute import Compute
from metarun.episodes import EpisodeBatch, FixedEpisodes
from metarun.loggers import NullLogger

SUPPORT, QUERY = (0.25, 0.45, 0.95), (0.6, 0.6, 0.6)  # frame colours: blue support, grey query
RIGHT, WRONG = (0.1, 0.75, 0.1), (0.9, 0.1, 0.1)


def episode_grid(batch: EpisodeBatch, predicted: Tensor | None = None, max_classes: int = 20, frame: int = 2) -> Tensor:
    """The first episode of `batch` as one RGB image [3, H', W'] in [0, 1]: a row per class (the
    first `max_classes`), its K support images framed blue, then its Q queries framed grey, or,
    given the predicted labels of the queries [N*Q], green where right and red where wrong.

    Each image is stretched to its own full range, as the data are normalised. A tile is the
    image plus `frame` pixels each side: H' = rows * (H + 2 frame), W' = (K + Q) * (W + 2 frame).
    """
    ways = batch.ways
    support = batch.support_x[0].view(ways, -1, *batch.support_x.shape[2:])  # [N, K, C, H, W]
    query = batch.query_x[0].view(ways, -1, *batch.query_x.shape[2:])  # [N, Q, C, H, W]
    shots, queries = support.shape[1], query.shape[1]
    query_colours = torch.tensor(QUERY).expand(ways, queries, 3)
    if predicted is not None:
        right = (predicted.cpu() == batch.query_y[0].cpu()).view(ways, queries, 1)
        query_colours = torch.where(right, torch.tensor(RIGHT), torch.tensor(WRONG))
    colours = torch.cat([torch.tensor(SUPPORT).expand(ways, shots, 3), query_colours], dim=1)  # [N, K+Q, 3]
    tiles = framed(torch.cat([support, query], dim=1).cpu().float(), colours, frame)[:max_classes]  # [rows, K+Q, 3, h, w]
    rows, columns, _, height, width = tiles.shape
    return tiles.permute(2, 0, 3, 1, 4).reshape(3, rows * height, columns * width)


def framed(images: Tensor, colours: Tensor, frame: int) -> Tensor:
    """images [..., C, H, W] (C = 1 or 3) in any range -> RGB tiles [..., 3, H + 2 frame, W + 2 frame]
    in [0, 1], each image stretched to its own range inside a border of its colour [..., 3]."""
    height, width = images.shape[-2:]
    flat = images.flatten(-3)
    low, high = flat.min(-1).values[..., None, None, None], flat.max(-1).values[..., None, None, None]
    images = (images - low) / (high - low).clamp_min(1e-8)
    tiles = colours[..., :, None, None].expand(*images.shape[:-3], 3, height + 2 * frame, width + 2 * frame).clone()
    tiles[..., frame : frame + height, frame : frame + width] = images  # a grey image fills all three channels
    return tiles


def is_image_episode(batch: EpisodeBatch) -> bool:
    """Classification of images [C, H, W]: the episodes a grid can show."""
    if batch.classes is None or batch.support_x.dim() != 5 or batch.support_x.shape[1] == 0:  # regression, or a sequence
        return False
    return bool((batch.support_y[0].bincount() == batch.support_x.shape[1] // batch.ways).all())  # as many shots per class


class RunPictures:
    """What a run shows besides its numbers, all from fixed episodes so that runs compare: a training
    episode at the start, the first validation episode's predictions at each validation, and the data
    set's figures of the tested weights at the end (a PNG in the run folder and in TensorBoard).
    Only the main process draws (is_main)."""

    def __init__(self, logger: NullLogger, run_dir: Path, compute: Compute, train_episode: FixedEpisodes | None = None,
                 val_episodes: FixedEpisodes | None = None, figures: list | None = None, is_main: bool = True):
        self.logger, self.run_dir, self.compute, self.is_main = logger, Path(run_dir), compute, is_main
        self.train_episode, self.val_episodes, self.figures = train_episode, val_episodes, figures or []

    def training_episode(self) -> None:
        batch = next(self.train_episode.batches(1)) if self.train_episode and self.logger.active else None
        if batch is not None and is_image_episode(batch):
            self.logger.log_image("episodes/train", episode_grid(batch), 0)

    def predictions(self, algorithm, step: int) -> None:
        """The first validation episode, its queries framed green where predicted right, red where wrong."""
        batch = next(self.val_episodes.batches(1)) if self.val_episodes and self.logger.active else None
        if batch is None or not is_image_episode(batch):
            return
        device = batch.query_x.device
        algorithm.eval()
        # Forked generators: a method that draws at evaluation must not shift the training's draws.
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), self.compute.autocast():
            predictions = algorithm.step(batch, train=False).predictions
        algorithm.train()
        if predictions:
            predicted = predictions[max(predictions)][0].argmax(dim=-1)
            self.logger.log_image("episodes/val_predictions", episode_grid(batch, predicted), step)

    def final_figures(self, algorithm, step: int) -> None:
        """Each figure of the tested weights to <run>/<name>.png and to TensorBoard."""
        if not self.is_main:
            return
        algorithm.eval()
        for draw in self.figures:
            with torch.no_grad():
                figure = draw(algorithm)
            if figure is not None:
                figure.savefig(self.run_dir / f"{draw.name}.png")
                self.logger.log_figure(draw.name, figure, step)
        algorithm.train()
