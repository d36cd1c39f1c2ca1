"""metarun-predict: a trained run classifies a user's own support and query images."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metarun.build import build_trainer, train
from metarun.errors import MetarunError
from metarun.predict import main, predict, to_input
from tests.helpers import make_fake_omniglot

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30), "grey": (128, 128, 128)}


def colour_image(path: Path, colour: tuple[int, int, int], seed: int, size: int = 20) -> None:
    noise = np.random.default_rng(seed).integers(-10, 11, (size, size, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture
def colour_folders(tmp_path):
    """Training classes of random colours, and support/query folders of five named colours."""
    rng = np.random.default_rng(1)
    for c in range(25):  # 15 / 5 / 5 classes
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        for i in range(6):
            colour_image(tmp_path / "train_data" / f"c{c:02d}" / f"{i}.png", colour, seed=c * 10 + i)
    for name, colour in COLOURS.items():
        for i in range(2):
            colour_image(tmp_path / "support" / name / f"{i}.png", colour, seed=100 + i)
        colour_image(tmp_path / "query" / f"{name}.png", colour, seed=200)
    return tmp_path


@pytest.mark.parametrize("algo", ["protonet", "maml", "baselinepp"])
def test_a_trained_run_classifies_a_users_images_and_writes_a_csv(smoke_cfg, colour_folders, algo):
    cfg, choices = smoke_cfg("data=image_folder", f"data.root={colour_folders / 'train_data'}", "data.image_size=16",
                             f"algo={algo}", "episode.ways=5", "episode.queries=3", "episode.shots=2",
                             *(["trainer.steps=12"] if algo == "maml" else []))
    run = colour_folders / "run"
    train(cfg, run, choices)
    out = colour_folders / "predictions.csv"
    main([f"run={run}", f"support={colour_folders / 'support'}", f"query={colour_folders / 'query'}", f"out={out}"])
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["file"]).stem for r in rows] == sorted(COLOURS)
    correct = sum(Path(r["file"]).stem == r["predicted_class"] for r in rows)
    # Each colour finds its own class; MAML after 12 smoke steps adapts from a barely trained start (seeded: 4 of 5,
    # in fp32 and in bf16).
    assert correct >= (4 if algo == "maml" else 5)
    assert all(0 < float(r["confidence"]) <= 1 for r in rows)


def test_omniglot_pngs_at_full_size_become_exactly_the_inputs_the_run_was_trained_on(smoke_cfg, tmp_path):
    root = make_fake_omniglot(tmp_path / "omniglot", as_folders=True)
    cfg, choices = smoke_cfg("data=omniglot", f"data.root={root}", "data.protocol=lake", "data.lake_val_alphabets=1",
                             "episode.ways=2", "episode.train_ways=2", "episode.shots=1", "episode.queries=1")
    trainer = build_trainer(cfg, tmp_path / "run", choices)
    split = trainer.test_episodes.source
    png = next(iter(sorted(root.rglob("images_evaluation/*/character01/*.png"))))  # the first test character's first drawing
    assert Image.open(png).size == (105, 105)
    first_image = split.gather(torch.tensor([0]))[0]
    assert torch.allclose(to_input(png, split.input_format), first_image)


def test_uneven_support_is_allowed_and_said_empty_support_and_bad_runs_are_one_line(smoke_cfg, colour_folders, tmp_path, capsys):
    cfg, choices = smoke_cfg("data=image_folder", f"data.root={colour_folders / 'train_data'}", "data.image_size=16",
                             "algo=protonet", "episode.ways=3", "episode.queries=3")
    train(cfg, tmp_path / "run", choices)
    queries = [colour_folders / "query" / "red.png"]
    (colour_folders / "support" / "red" / "0.png").unlink()
    assert predict(tmp_path / "run", colour_folders / "support", queries)[0].predicted_class == "red"
    assert "different numbers of images (blue 2, green 2, grey 2, red 1, yellow 2)" in capsys.readouterr().err
    (colour_folders / "support" / "red" / "1.png").unlink()
    with pytest.raises(MetarunError, match="support class folder .*red has no images"):
        predict(tmp_path / "run", colour_folders / "support", queries)
    with pytest.raises(MetarunError, match="no run in"):
        predict(tmp_path / "elsewhere", colour_folders / "support", queries)
    sinusoid, choices = smoke_cfg("data=sinusoid", "algo=maml", "backbone=mlp", "episode=sinusoid_5shot")
    train(sinusoid, tmp_path / "curves", choices)
    with pytest.raises(MetarunError, match="sinusoid, which has no images"):
        predict(tmp_path / "curves", colour_folders / "support", queries)


def test_the_command_reports_usage_errors_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "metarun.predict", f"run={tmp_path}"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing support=..." in result.stderr and "usage:" in result.stderr


def test_help_shows_examples_and_images_unlike_the_training_data_are_warned_about(smoke_cfg, colour_folders, tmp_path, capsys):
    main(["--help"])
    assert "examples:" in capsys.readouterr().out
    cfg, choices = smoke_cfg("data=image_folder", f"data.root={colour_folders / 'train_data'}", "data.image_size=16",
                             "algo=protonet", "episode.ways=3", "episode.queries=3")
    train(cfg, tmp_path / "run", choices)
    grey = tmp_path / "grey"
    for image in (colour_folders / "support").rglob("*.png"):
        target = grey / "support" / image.relative_to(colour_folders / "support")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(image).convert("L").save(target)
    Image.open(colour_folders / "query" / "red.png").convert("L").save(grey / "red.png")
    main([f"run={tmp_path / 'run'}", f"support={grey / 'support'}", f"query={grey / 'red.png'}", f"out={tmp_path / 'p.csv'}"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == ["metarun-predict: warning: the images are grey; the run was trained on image_folder's 16x16 colour "
                        "images (predictions may be near chance)"]
    main([f"run={tmp_path / 'run'}", f"support={colour_folders / 'support'}", f"query={colour_folders / 'query'}",
          f"out={tmp_path / 'q.csv'}"])
    assert "warning" not in capsys.readouterr().err  # the colours it was trained on
