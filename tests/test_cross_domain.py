"""Cross-domain evaluation (eval_data=...): another data set's episodes mapped to the training
data's input, image by image, in a run and in metarun-eval."""

from __future__ import annotations

import json

import pytest
import torch

from metarun.build import build_trainer
from metarun.data.cross_domain import AsInputOf, map_images
from metarun.data.synthetic import make_synthetic
from metarun.episodes import EpisodeSpec, FixedEpisodes
from metarun.errors import MetarunError
from metarun.rescore import rescore
from tests.helpers import compose_run, make_fake_omniglot, trained_run

GREY_INK = {"shape": [1, 2, 2], "mean": [0.5], "std": [0.25], "ink": True}
COLOUR = {"shape": [3, 2, 2], "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5], "ink": False}


def normalised(raw: torch.Tensor, image_format: dict) -> torch.Tensor:
    mean, std = (torch.tensor(image_format[key]).view(1, -1, 1, 1) for key in ("mean", "std"))
    return (raw - mean) / std


def test_ink_drawings_become_dark_strokes_on_white_in_colour_with_the_training_normalisation():
    raw = torch.zeros(1, 1, 2, 2)
    raw[..., 0, 0] = 1.0  # ink in the top-left pixel: black on white once mapped
    mapped = map_images(normalised(raw, GREY_INK), GREY_INK, COLOUR)
    expected = torch.tensor([[0.0, 1.0], [1.0, 1.0]]).expand(1, 3, 2, 2)
    torch.testing.assert_close(mapped, normalised(expected, COLOUR))


def test_images_are_resized_to_the_training_size():
    large = {**GREY_INK, "shape": [1, 8, 8]}
    flat = map_images(normalised(torch.full((2, 1, 8, 8), 0.7), large), large, GREY_INK)
    torch.testing.assert_close(flat, normalised(torch.full((2, 1, 2, 2), 0.7), GREY_INK))


def test_colour_becomes_grey_by_luma_and_equal_formats_change_nothing():
    raw = torch.rand(2, 3, 2, 2)
    colour = normalised(raw, COLOUR)
    grey = {**COLOUR, "shape": [1, 2, 2], "mean": [0.0], "std": [1.0]}
    luma = (raw * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(map_images(colour, COLOUR, grey), luma)
    torch.testing.assert_close(map_images(colour, COLOUR, COLOUR), colour)


def test_mapped_episodes_are_the_sources_episodes_in_the_training_format():
    source, target = make_synthetic(image_size=28, channels=1).test, make_synthetic(image_size=16, channels=3).train
    spec = EpisodeSpec(5, 1, 2)
    mapped = next(FixedEpisodes(AsInputOf(source, target.input_format), spec, 3, seed=0, purpose="test").batches(3))
    plain = next(FixedEpisodes(source, spec, 3, seed=0, purpose="test").batches(3))
    assert mapped.support_x.shape == (3, 5, 3, 16, 16) and torch.equal(mapped.classes, plain.classes)
    torch.testing.assert_close(mapped.query_x.flatten(0, 1),
                               map_images(plain.query_x.flatten(0, 1), source.input_format, target.input_format))


def test_a_run_validates_and_tests_on_the_eval_data_in_the_training_format(tmp_path):
    root = make_fake_omniglot(tmp_path / "omniglot")
    cfg, choices = compose_run(["debug=smoke", "logger=none", "algo=protonet", "data.channels=3", "data.image_size=16",
                                "eval_data=omniglot", f"eval_data.root={root}", "eval_data.protocol=lake",
                                "eval_data.lake_val_alphabets=1", f"eval_data.cache_dir={tmp_path / 'cache'}",
                                "episode.ways=2", "episode.queries=3"])
    trainer = build_trainer(cfg, tmp_path / "run", choices)
    batch = next(trainer.test_episodes.batches(1))
    assert batch.query_x.shape[2:] == (3, 16, 16)  # Omniglot's 28x28 grey, as the training data's 16x16 colour
    results = trainer.fit()
    assert results["eval_data"] == "omniglot" and results["data"] == "synthetic" and results["test"]["episodes"] == 8
    assert json.loads((tmp_path / "run" / "results.json").read_text())["eval_data"] == "omniglot"


def test_metarun_eval_scores_a_trained_run_on_another_data_set(tmp_path):
    run = trained_run(tmp_path / "run", ["debug=smoke", "logger=none", "algo=protonet", "data.channels=3", "data.image_size=16"])
    root = make_fake_omniglot(tmp_path / "omniglot")
    result, path = rescore(run, ["eval_data=omniglot", f"eval_data.root={root}", "eval_data.protocol=lake",
                                              "eval_data.lake_val_alphabets=1", f"eval_data.cache_dir={tmp_path / 'cache'}",
                                              "episode.ways=2", "trainer.test_episodes=6"])
    assert path.name.startswith("eval_omniglot_2way_1shot") and result["test"]["episodes"] == 6


def test_eval_data_needs_image_classification_to_train_on(tmp_path):
    cfg, choices = compose_run(["debug=smoke", "logger=none", "data=sinusoid", "backbone=mlp", "episode=sinusoid_10shot",
                                "eval_data=synthetic"])
    with pytest.raises(MetarunError, match="eval_data=synthetic tests image classification on another data set"):
        build_trainer(cfg, tmp_path, choices)

