"""TensorBoard pictures of episodes: the grid's layout and colours, and that a run logs them."""

from __future__ import annotations

import torch
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from metarun.build import train
from metarun.pictures import RIGHT, SUPPORT, WRONG, episode_grid
from tests.helpers import compose_run, random_batch


def test_the_episode_grid_has_a_row_per_class_and_a_column_per_image():
    batch = random_batch(tasks=2, ways=5, shots=1, queries=2, size=28)
    grid = episode_grid(batch, frame=2)
    assert grid.shape == (3, 5 * 32, (1 + 2) * 32)
    assert grid.min() >= 0 and grid.max() <= 1
    torch.testing.assert_close(grid[:, 0, 0], torch.tensor(SUPPORT))  # the first tile is a support image


def test_queries_are_framed_green_where_predicted_right_and_red_where_wrong():
    batch = random_batch(tasks=1, ways=3, shots=2, queries=2, size=8)
    predicted = batch.query_y[0].clone()
    predicted[0] = 1  # class 0's first query predicted wrong
    grid = episode_grid(batch, predicted, frame=1)  # tiles of 10 x 10
    corner = lambda row, column: grid[:, row * 10, column * 10]  # noqa: E731
    torch.testing.assert_close(corner(0, 2), torch.tensor(WRONG))
    torch.testing.assert_close(corner(0, 3), torch.tensor(RIGHT))
    torch.testing.assert_close(corner(2, 3), torch.tensor(RIGHT))


def test_a_run_logs_a_training_episode_and_the_predictions_at_each_validation(tmp_path):
    cfg, choices = compose_run(["debug=smoke", "algo=protonet", "logger=tensorboard"])
    train(cfg, tmp_path, choices)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={IMAGES: 0}).Reload()
    train_images, predictions = events.Images("episodes/train"), events.Images("episodes/val_predictions")
    assert [image.step for image in train_images] == [0]
    assert [image.step for image in predictions] == [2, 4]  # eval_every=2, steps=4
    ways, shots, queries = cfg.episode.ways, cfg.episode.shots, cfg.episode.queries
    assert (predictions[0].height, predictions[0].width) == (ways * 32, (shots + queries) * 32)
