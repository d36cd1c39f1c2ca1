"""Episodes as pictures for TensorBoard: what the learner is shown, and what it predicts."""

from __future__ import annotations

import torch
from torch import Tensor

from metarun.episodes import EpisodeBatch

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
    return batch.classes is not None and batch.support_x.dim() == 5
