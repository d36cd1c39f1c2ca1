"""Precision, memory format and memory-bounded passes: resolved once, neutral for every method."""

from __future__ import annotations

import pytest
import torch

import metarun.compute
import metarun.memory
from metarun import checkpoints
from metarun.build import build_algorithm, build_trainer, train
from metarun.compute import Compute, resolve_channels_last, resolve_precision
from metarun.episodes import EpisodeBatch
from metarun.errors import MetarunError
from metarun.memory import PassPlan, plan_passes, resumed_plan, task_peak_bytes
from metarun.tasks import Classification, Regression
from tests.helpers import NARROW, compose_run

CPU = torch.device("cpu")
IMAGE = (1, 28, 28)
needs_bf16 = pytest.mark.skipif(not metarun.compute.bf16_runs(CPU), reason="this CPU has no bf16 kernels")

# Every method, with the overrides it needs on 28x28 synthetic images (the smoke data). Inner loops
# are cut to one step (Meta-LSTM's to three): bf16's rounding compounds through each step (cosine
# 0.4-0.7 after five MAML steps), which is why `auto` keeps these methods in fp32.
ONE_STEP = ["algo.inner_steps=1", "algo.eval_inner_steps=1"]
METHODS = {
    "maml": ONE_STEP, "maml-vmap": ["algo=maml", "algo.task_batching=vmap"], "fomaml": ONE_STEP, "anil": ONE_STEP,
    "metasgd": ONE_STEP, "mamlpp": ONE_STEP, "reptile": ONE_STEP, "metalstm": ["algo.inner_steps=3"],
    "protonet": [], "matchingnet": [], "relationnet": ["backbone=relationnet_embedding"], "siamese": [], "baseline": [],
    "baselinepp": [], "snail": [], "imp": [],
}
INNER_LOOP = {"maml", "maml-vmap", "fomaml", "anil", "metasgd", "mamlpp", "reptile", "metalstm"}


def batch(tasks: int = 2, ways: int = 5, shots: int = 1, queries: int = 3, shape=IMAGE, seed: int = 0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    labels = lambda k: torch.arange(ways).repeat_interleave(k).repeat(tasks, 1)  # noqa: E731
    return EpisodeBatch(torch.rand(tasks, ways * shots, *shape, generator=g), labels(shots),
                        torch.rand(tasks, ways * queries, *shape, generator=g), labels(queries),
                        torch.arange(ways).repeat(tasks, 1))


def method(name: str, input_shape=IMAGE, task=None, *extra: str):
    overrides = METHODS[name] if "algo=" in " ".join(METHODS[name]) else [f"algo={name}", *METHODS[name]]
    cfg, choices = compose_run(["debug=smoke", "episode.queries=3", *overrides, *extra])
    return build_algorithm(cfg, input_shape, task or Classification(classes=5), CPU, choices)


def meta_gradient(algorithm, episodes: EpisodeBatch, compute: Compute) -> torch.Tensor:
    algorithm.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same draws (support shuffles, minibatch orders) in both precisions
    with compute.autocast():
        objective = algorithm.step(episodes, train=True).objective
    objective.backward()
    return torch.cat([p.grad.flatten() for p in algorithm.parameters() if p.grad is not None])


@needs_bf16
@pytest.mark.parametrize("name", METHODS)
def test_every_methods_meta_gradient_under_bf16_points_where_the_fp32_one_does(name):
    algorithm = method(name)
    fp32 = meta_gradient(algorithm, batch(), Compute(CPU, "fp32"))
    bf16 = meta_gradient(algorithm, batch(), Compute(CPU, "bf16", channels_last=False))
    assert torch.isfinite(bf16).all()
    # bf16 keeps 8 bits of mantissa in the convolutions; losses, distances and updates stay float32.
    assert torch.nn.functional.cosine_similarity(fp32, bf16, dim=0) > (0.9 if name in INNER_LOOP else 0.95)
    assert algorithm.inner_loop == (name in INNER_LOOP)


@pytest.mark.parametrize("name", ["maml", "protonet", "relationnet"])
def test_channels_last_weights_give_the_fp32_meta_gradient(name):
    algorithm = method(name)
    plain = meta_gradient(algorithm, batch(), Compute(CPU, "fp32"))
    Compute(CPU, "fp32", channels_last=True).place(algorithm)
    assert algorithm.state_dict()[next(k for k in algorithm.state_dict() if k.endswith("0.0.weight"))].is_contiguous(
        memory_format=torch.channels_last)
    # Other kernels round differently, and a max-pool may then pick another of two near-equal inputs.
    cosine = torch.nn.functional.cosine_similarity(meta_gradient(algorithm, batch(), Compute(CPU, "fp32", channels_last=True)), plain, dim=0)
    assert cosine > 0.999


@needs_bf16
def test_sinusoid_regression_under_bf16_keeps_its_meta_gradient():
    cfg, choices = compose_run(["debug=smoke", "data=sinusoid", "algo=maml", "backbone=mlp", "episode=sinusoid_5shot"])
    algorithm = build_algorithm(cfg, (1,), Regression(), CPU, choices)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 10, 1, generator=g) * 10 - 5, torch.rand(4, 10, 1, generator=g)
    episodes = EpisodeBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])
    fp32 = meta_gradient(algorithm, episodes, Compute(CPU, "fp32"))
    bf16 = meta_gradient(algorithm, episodes, Compute(CPU, "bf16"))
    assert torch.nn.functional.cosine_similarity(fp32, bf16, dim=0) > 0.95


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_bf16)])
@pytest.mark.parametrize("algo", ["maml", "fomaml", "anil", "metasgd", "mamlpp", "reptile", "protonet", "matchingnet",
                                  "relationnet", "siamese", "baseline", "baselinepp", "metalstm", "snail", "imp"])
def test_every_method_trains_and_tests_in_each_precision(tmp_path, algo, precision):
    extra = {"reptile": ["algo.eval_inner_steps=5"], "relationnet": ["backbone=relationnet_embedding"],
             "metalstm": ["algo.inner_steps=2", "algo.eval_inner_steps=2"]}.get(algo, [])
    results = run(tmp_path, "debug=smoke", "logger=none", f"algo={algo}", f"trainer.precision={precision}", NARROW, *extra)
    assert 0 <= results["test"]["acc"] <= 1 and results["precision"] == precision
    assert (tmp_path / "best.pt").exists()


@needs_bf16
def test_sinusoid_regression_trains_under_bf16_and_auto_keeps_it_in_fp32(tmp_path):
    overrides = ["debug=smoke", "logger=none", "data=sinusoid", "algo=maml", "backbone=mlp", "episode=sinusoid_5shot",
                 "algo.inner_lr=0.01"]
    forced = run(tmp_path / "bf16", *overrides, "trainer.precision=bf16")
    assert forced["precision"] == "bf16" and forced["test"]["mse"] < float("inf")
    auto = run(tmp_path / "auto", *overrides)
    assert auto["precision"] == "fp32" and auto["channels_last"] is False


def test_precision_and_memory_format_resolve_per_device_and_input(monkeypatch):
    monkeypatch.setattr(metarun.compute, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    monkeypatch.setattr(metarun.compute, "bf16_runs", lambda device: True)
    assert resolve_precision("auto", CPU, IMAGE) == "bf16"
    assert resolve_precision("auto", CPU, (1,)) == "fp32"  # a tiny MLP: nothing to gain, regression digits to lose
    monkeypatch.setattr(metarun.compute, "cpu_flags", lambda: frozenset({"avx2"}))  # bf16 only emulated: slower
    assert resolve_precision("auto", CPU, IMAGE) == "fp32"
    assert resolve_precision("bf16", CPU, IMAGE) == "bf16"  # asked for, it still runs
    assert resolve_channels_last("auto", CPU, IMAGE, "fp32") is True
    assert resolve_channels_last("auto", CPU, (1,), "fp32") is False
    assert resolve_channels_last(True, CPU, (1,), "fp32") is False  # nothing 4-D to lay out
    assert resolve_channels_last(False, CPU, IMAGE, "bf16") is False
    assert resolve_precision("auto", CPU, IMAGE, inner_loop=True) == "fp32"  # rounding compounds through inner steps
    assert resolve_channels_last("auto", CPU, IMAGE, "fp32", inner_loop=True) is False  # measured no faster there


@pytest.mark.parametrize("override,message", [
    ("trainer.precision=fp16", "trainer.precision=fp16 runs only on a CUDA GPU, not on cpu"),
    ("trainer.precision=half", "trainer.precision='half' is not known; use auto, fp32, bf16 or fp16"),
    ("trainer.channels_last=maybe", "trainer.channels_last='maybe' is not known"),
    ("trainer.max_images_per_pass=50", "trainer.max_images_per_pass=50 is fewer than the 80 images of one training task"),
    ("trainer.max_images_per_pass=-1", "trainer.max_images_per_pass=-1 is invalid"),
])
def test_a_setting_the_device_cannot_run_is_one_line_before_training(tmp_path, override, message):
    cfg, choices = compose_run(["debug=smoke", "logger=none", override])
    with pytest.raises(MetarunError, match=message.replace("(", r"\(")):
        build_trainer(cfg, tmp_path, choices)
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("algo", ["maml", "metasgd", "reptile", "metalstm"])
def test_per_task_methods_give_the_same_meta_gradient_split_into_passes_or_not(tmp_path, algo):
    # 4 tasks of 80 images in passes of 2; one SGD step of rate 1, so the weights moved by the meta-gradient.
    base = ["debug=smoke", "logger=none", f"algo={algo}", "trainer.precision=fp32", "trainer.meta_batch_size=4",
            "trainer.steps=1", "optim=sgd", "optim.lr=1.0", "optim.momentum=0.0",
            *(["algo.eval_inner_steps=5"] if algo == "reptile" else []), *(["algo.inner_steps=2", "algo.eval_inner_steps=2"] if algo == "metalstm" else [])]
    whole = run(tmp_path / "whole", *base, "trainer.max_images_per_pass=null")
    split = run(tmp_path / "split", *base, "trainer.max_images_per_pass=160")
    assert whole["tasks_per_pass"] is None and (split["tasks_per_pass"], split["eval_tasks_per_pass"]) == (2, 2)
    moved = {name: checkpoints.load(tmp_path / name / "last.pt")["algorithm"] for name in ("whole", "split")}
    for name, weight in moved["whole"].items():
        torch.testing.assert_close(moved["split"][name], weight, rtol=1e-5, atol=1e-6)
    for name, value in whole["test"].items():  # evaluation in passes of 2 episodes scores the same
        assert split["test"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_auto_splits_a_meta_batch_that_would_not_fit_and_refuses_a_task_that_cannot(tmp_path, monkeypatch, caplog):
    cfg, choices = compose_run(["debug=smoke", "logger=none", "trainer.meta_batch_size=8", "algo=protonet"])
    monkeypatch.setattr(metarun.memory, "task_peak_bytes", lambda *args: 10**6)
    monkeypatch.setattr(metarun.memory, "available_bytes", lambda device: int(3.5e6 / metarun.memory.USABLE))
    trainer = build_trainer(cfg, tmp_path, choices)
    assert trainer.compute.tasks_per_pass == 2  # 3 would fit: a power of two, so noise cannot change the plan
    assert "training passes 2 tasks at a time and accumulates their gradients" in caplog.text
    monkeypatch.setattr(metarun.memory, "available_bytes", lambda device: 10**5)
    with pytest.raises(MetarunError, match=r"one training task \(80 images\) needs about 1 MiB of memory and 0 MiB can be used"):
        build_trainer(cfg, tmp_path / "refused", choices)


def test_a_resumed_run_trains_in_the_interrupted_runs_passes_even_with_more_memory(tmp_path, monkeypatch):
    # ProtoNet's batch norm spans a pass, so the passes decide the numbers.
    base = ["debug=smoke", "logger=none", "algo=protonet", "trainer.meta_batch_size=4", "trainer.eval_every=3"]
    monkeypatch.setattr(metarun.memory, "task_peak_bytes", lambda *args: 10**6)
    monkeypatch.setattr(metarun.memory, "available_bytes", lambda device: int(2.5e6 / metarun.memory.USABLE))
    straight = run(tmp_path / "straight", *base, "trainer.steps=6")
    run(tmp_path / "resumed", *base, "trainer.steps=3")
    monkeypatch.setattr(metarun.memory, "available_bytes", lambda device: 10**15)  # would take the whole meta-batch
    resumed = run(tmp_path / "resumed", *base, "trainer.steps=6", "trainer.resume=true")
    assert straight["tasks_per_pass"] == resumed["tasks_per_pass"] == 2
    assert resumed["test"] == straight["test"] and resumed["val"] == straight["val"]
    assert resumed_plan(PassPlan(4, 8), PassPlan(2, None)) == PassPlan(2, 8)  # what no longer fits is cut
    assert resumed_plan(PassPlan(None, None), PassPlan(8, 4)) == PassPlan(8, 4)


def test_the_memory_probe_leaves_weights_gradients_and_random_draws_as_they_were():
    cfg, choices = compose_run(["debug=smoke", "algo=maml"])
    algorithm, probe, compute = probe_setup(cfg, choices)
    before = {name: value.clone() for name, value in algorithm.state_dict().items()}
    torch.manual_seed(3)
    expected_draw = torch.rand(3)
    torch.manual_seed(3)
    task_peak_bytes(algorithm, probe, compute)
    torch.testing.assert_close(torch.rand(3), expected_draw)
    assert all(torch.equal(before[name], value) for name, value in algorithm.state_dict().items())
    assert all(p.grad is None for p in algorithm.parameters())


def test_no_bound_and_a_roomy_bound_leave_passes_whole():
    cfg, choices = compose_run(["debug=smoke", "algo=protonet"])
    algorithm, probe, compute = probe_setup(cfg, choices)
    assert plan_passes(None, algorithm, probe, compute, 32, 25, 80).tasks is None
    plan = plan_passes(80 * 32, algorithm, probe, compute, 32, 25, 80)
    assert plan.tasks is None and plan.eval_tasks is None
    assert plan_passes(80 * 8, algorithm, probe, compute, 32, 25, 80).tasks == 8


def test_a_split_meta_batch_keeps_every_task_in_order():
    episodes = batch(tasks=5)
    parts = episodes.split(2)
    assert [part.tasks for part in parts] == [2, 2, 1]
    for field in ("support_x", "support_y", "query_x", "query_y", "classes"):
        torch.testing.assert_close(torch.cat([getattr(part, field) for part in parts]), getattr(episodes, field))
    assert episodes.split(5) == [episodes]


def run(run_dir, *overrides: str) -> dict:
    cfg, choices = compose_run(list(overrides))
    return train(cfg, run_dir, choices)


def probe_setup(cfg, choices):
    algorithm = build_algorithm(cfg, IMAGE, Classification(classes=64), CPU, choices)
    return algorithm, batch(tasks=1, queries=15), Compute(CPU, resolve_precision("auto", CPU, IMAGE))


def test_task_batching_auto_is_a_loop_on_a_cpu_and_vmap_on_a_gpu_and_a_choice_stays():
    from metarun.compute import resolve_task_batching

    assert resolve_task_batching("auto", torch.device("cpu")) == "loop"
    assert resolve_task_batching("auto", torch.device("cuda")) == "vmap"
    assert resolve_task_batching("vmap", torch.device("cpu")) == "vmap"
