"""Sinusoid regression: the task source, the MLP, the task type flowing from the data, the figure."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from metarun.algorithms import MAML, Pretrain, ProtoNet
from metarun.build import train
from metarun.data.sinusoid import SinusoidTasks, curve, make_sinusoid
from metarun.episodes import EpisodeSampler, EpisodeSpec, FixedEpisodes, split_support_query
from metarun.errors import MetarunError
from metarun.models import MLP, Conv4
from metarun.results import summarize
from metarun.tasks import Classification, Regression
from tests.helpers import compose_run

SPEC = EpisodeSpec(ways=1, shots=10, queries=15)
SMOKE_SINUSOID = ["experiment=maml_sinusoid_10shot", "debug=smoke", "data=sinusoid", "logger=none"]


def test_sinusoid_episodes_have_the_paper_s_ranges_and_lie_on_one_curve_per_task():
    tasks = SinusoidTasks()
    amplitude, phase, x = tasks.draw(SPEC, 500, torch.Generator().manual_seed(0))
    assert amplitude.shape == phase.shape == (500,) and x.shape == (500, 25, 1)
    assert 0.1 <= amplitude.min() and amplitude.max() <= 5.0 and amplitude.max() > 4.5
    assert 0 <= phase.min() and phase.max() <= math.pi
    assert -5 <= x.min() and x.max() <= 5
    batch = split_support_query(tasks.examples((amplitude, phase, x)), SPEC.shots)
    assert batch.support_x.shape == (500, 10, 1) and batch.query_y.shape == (500, 15, 1) and batch.classes is None
    expected = amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))
    torch.testing.assert_close(torch.cat([batch.support_y, batch.query_y], dim=1), expected)


def test_sinusoid_episodes_are_seeded_and_the_splits_draw_apart():
    splits = make_sinusoid()
    first = EpisodeSampler(splits.train, SPEC, seed=0).sample(4)
    assert torch.equal(first.query_y, EpisodeSampler(splits.train, SPEC, seed=0).sample(4).query_y)
    assert not torch.equal(first.query_y, EpisodeSampler(splits.train, SPEC, seed=1).sample(4).query_y)
    val = FixedEpisodes(splits.val, SPEC, 8, seed=0, purpose="val")
    test = FixedEpisodes(splits.test, SPEC, 8, seed=0, purpose="test")
    assert not torch.equal(val.draws[0], test.draws[0])
    assert torch.equal(next(test.batches(8)).query_y, next(FixedEpisodes(splits.test, SPEC, 8, 0, "test").batches(8)).query_y)


def test_mlp_is_the_maml_sinusoid_network_and_flattens_images():
    algorithm = MAML(MLP((1,), hidden=[40, 40]), ways=1, task=Regression())
    assert [p.shape for p in algorithm.parameters()] == [(40, 1), (40,), (40, 40), (40,), (1, 40), (1,)]
    assert MLP((1, 28, 28), hidden=[64])(torch.zeros(3, 1, 28, 28)).shape == (3, 64)


def test_the_task_decides_loss_metric_and_output_size():
    assert Regression().outputs(ways=5) == 1 and Classification().outputs(ways=5) == 5
    predictions, targets = torch.zeros(2, 4, 1), torch.ones(2, 4, 1)
    assert torch.equal(Regression().metrics(predictions, targets)["mse"], torch.ones(2))
    with pytest.raises(MetarunError, match="algo=protonet classifies, but this data set is a regression task"):
        ProtoNet(MLP((1,)), task=Regression())
    with pytest.raises(MetarunError, match="algo=pretrain .* needs a regression data set"):
        Pretrain(Conv4((1, 28, 28)), ways=5, task=Classification())
    with pytest.raises(MetarunError, match="backbone=conv4 reads images"):
        Conv4((1,))


def test_pretrain_fits_every_point_jointly_and_adapts_like_maml_at_evaluation():
    torch.manual_seed(0)
    batch = EpisodeSampler(SinusoidTasks(), SPEC, seed=0).sample(3)
    pretrain = Pretrain(MLP((1,)), ways=1, task=Regression(), inner_lr=0.01, eval_inner_steps=2)
    per_task = pretrain.step(batch, train=True).metrics["loss"]
    x, y = torch.cat([batch.support_x, batch.query_x], 1), torch.cat([batch.support_y, batch.query_y], 1)
    with torch.no_grad():
        joint = (pretrain.net(x.flatten(0, 1)).view_as(y) - y).pow(2).mean(dim=(1, 2))
    torch.testing.assert_close(per_task, joint)
    maml = MAML(MLP((1,)), ways=1, task=Regression(), inner_lr=0.01, eval_inner_steps=2)
    maml.load_state_dict(pretrain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(pretrain.step(batch, train=False).metrics["mse"], maml.step(batch, train=False).metrics["mse"])


def test_summaries_turn_per_step_metrics_into_curves():
    summary = summarize({"mse": torch.tensor([1.0, 3.0]), "mse@0": torch.tensor([4.0, 4.0]), "mse@1": torch.tensor([2.0, 2.0])})
    assert summary["mse"] == 2.0 and summary["mse_by_step"] == {0: 4.0, 1: 2.0} and summary["mse_by_step_ci95"] == {0: 0.0, 1: 0.0}


def test_a_sinusoid_run_reports_mse_with_its_curve_keeps_the_lowest_validation_mse_and_draws_the_figure(tmp_path):
    cfg, choices = compose_run(SMOKE_SINUSOID + ["trainer.steps=6", "trainer.eval_every=2", "logger=tensorboard"])
    results = train(cfg, tmp_path, choices)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["task"] == "regression" and saved["metric"] == "mse"
    assert saved["test"]["mse"] >= 0 and saved["test"]["mse_ci95"] > 0 and "acc" not in saved["test"]
    assert set(saved["test"]["mse_by_step"]) == {str(k) for k in range(11)}
    assert saved["test"]["mse_by_step"]["10"] == pytest.approx(saved["test"]["mse"])
    assert results["val"]["best_mse"] == pytest.approx(min(_scalars(tmp_path, "val/mse")), rel=1e-6)  # lowest, not highest
    with Image.open(tmp_path / "sinusoid_fits.png") as image:
        assert image.format == "PNG" and image.size == (600, 400)
    assert _has_image(tmp_path, "sinusoid_fits")


def _scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0}).Reload()
    return [event.value for event in events.Scalars(tag)]


def _has_image(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return tag in EventAccumulator(str(run_dir / "tb")).Reload().Tags()["images"]


@pytest.mark.slow
def test_maml_learns_to_lower_the_mse_with_inner_steps_and_beats_joint_pretraining(tmp_path):
    def run(algo):
        cfg, choices = compose_run([f"experiment={algo}_sinusoid_10shot", "device=cpu", "logger=none", "trainer.progress=false",
                                    "trainer.steps=3000", "trainer.eval_every=1000", "trainer.test_episodes=200"])
        return train(cfg, tmp_path / algo, choices)["test"]["mse_by_step"]

    maml, pretrained = run("maml"), run("pretrain")
    assert maml[1] < 0.8 * maml[0] and maml[10] < maml[1]
    assert pretrained[1] > maml[1] and pretrained[10] > maml[10]  # the MAML paper's figure 3


def test_curve_is_a_sine_with_amplitude_and_phase():
    x = torch.tensor([[[0.0], [math.pi / 2]]])
    torch.testing.assert_close(curve(torch.tensor([2.0]), torch.tensor([0.0]), x), torch.tensor([[[0.0], [2.0]]]))
