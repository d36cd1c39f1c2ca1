"""The 95% confidence interval every test score carries, against values worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from metarun.results import mean_ci95, summarize


def test_the_ci_is_1_96_sample_standard_errors():
    # [1, 2, 3, 4]: mean 2.5, sample variance 5/3, standard error sqrt(5/3) / 2.
    mean, ci = mean_ci95(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and ci == pytest.approx(1.96 * math.sqrt(5 / 3) / 2) and ci == pytest.approx(1.2651, abs=1e-4)
    # 600 episodes at accuracy 0.9 +- 0.1 alternating: std 0.1000834, ci 0.0080083.
    mean, ci = mean_ci95(torch.tensor([0.8, 1.0] * 300))
    assert mean == pytest.approx(0.9) and ci == pytest.approx(1.96 * 0.1 * math.sqrt(600 / 599) / math.sqrt(600))
    assert mean_ci95(torch.tensor([0.7])) == (pytest.approx(0.7), 0.0)  # one episode: no spread to measure


def test_a_summary_has_each_metric_its_ci_and_the_episode_count():
    summary = summarize({"acc": torch.tensor([1.0, 2.0, 3.0, 4.0]), "loss": torch.tensor([0.5] * 4)})
    assert summary == {"acc": 2.5, "acc_ci95": pytest.approx(1.2651, abs=1e-4), "loss": 0.5, "loss_ci95": 0.0, "episodes": 4}
