"""The one composition root: a composed config becomes the run's objects (the only module that calls instantiate)."""

from __future__ import annotations

import dataclasses
import difflib
import os
import platform
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import metarun
from metarun import checkpoints
from metarun.compute import Compute, resolve_channels_last, resolve_precision, resolve_task_batching
from metarun.data import DataSplits
from metarun.data.augment import Augmentation
from metarun.data.cross_domain import AsInputOf
from metarun.distributed import Distributed, SingleProcess
from metarun.episodes import EpisodeSampler, EpisodeSpec, FixedEpisodes, VariableRules
from metarun.errors import MetarunError
from metarun.loggers import NullLogger
from metarun.loop_settings import LoopSettings
from metarun.memory import plan_passes
from metarun.models.pretrained import Frozen, load_weights
from metarun.pictures import RunPictures
from metarun.tasks import Task
from metarun.trainer import Trainer
from metarun.variable_episodes import FixedVariableEpisodes, variable_meta_batch


def train(cfg: DictConfig, run_dir: Path, choices: dict[str, str], overrides: Sequence[str] = ()) -> dict:
    """Build the run described by `cfg` in `run_dir`, meta-train it and return its results;
    `overrides`: the command line that chose `cfg`, recorded in its results."""
    trainer = build_trainer(cfg, run_dir, choices, overrides)
    try:
        return trainer.fit()
    finally:
        trainer.distributed.close()


def build_trainer(cfg: DictConfig, run_dir: Path, choices: dict[str, str], overrides: Sequence[str] = ()) -> Trainer:
    """Check the config, load the data, build every object; fail with one line before training."""
    check_settings(cfg)
    device = resolve_device(cfg.device)
    train_spec, eval_spec = episode_specs(cfg.episode)
    settings = loop_settings(cfg.trainer)
    distributed = SingleProcess()
    if settings.distributed:
        distributed = Distributed(device)
        distributed.check(settings.meta_batch_size)
        device = distributed.device_for(device)
        run_dir = Path(distributed.from_main(str(run_dir)))  # each process's Hydra named its own folder
    weights, trained_shape = None, None
    if cfg.get("init_from"):  # a new run from another's learned weights; trainer.resume then restores this run's own
        metadata, weights = checkpoints.read_weights(Path(cfg.init_from).expanduser(), "init_from")
        trained_shape = (metadata.get("input") or {}).get("shape")
    splits, algorithm, compute = model_and_data(cfg, choices, device, settings, train_spec, eval_spec, distributed,
                                                weights, trained_shape, weights_from=f"init_from={cfg.get('init_from')}")
    if settings.test_ensemble > 1 and splits.task.name != "classification":
        raise MetarunError(f"trainer.test_ensemble={settings.test_ensemble} averages class probabilities; "
                           f"this data set is a {splits.task.name} task")
    optimizer = make(cfg, "optim")(algorithm.parameters())
    scheduler = make(cfg, "scheduler")(optimizer) if cfg.get("scheduler") else None
    if distributed.is_main:
        prepare_run_dir(run_dir)
    logger = make(cfg, "logger", log_dir=run_dir / "tb") if distributed.is_main else NullLogger()
    val_episodes = fixed_episodes(splits.val, eval_spec, settings.val_episodes, cfg.eval_seed, "val")
    pictures = RunPictures(logger, run_dir, compute, val_episodes=val_episodes, is_main=distributed.is_main,
                           train_episode=fixed_episodes(splits.train, train_spec, 1, cfg.eval_seed, "picture"),
                           figures=splits.test.figures(eval_spec, cfg.eval_seed))
    return Trainer(
        algorithm=algorithm,
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=training_sampler(splits.train, train_spec, cfg.seed, settings.overfit_batches),
        val_episodes=val_episodes,
        test_episodes=fixed_episodes(splits.test, eval_spec, settings.test_episodes, cfg.eval_seed, "test"),
        settings=settings,
        run_dir=run_dir,
        logger=logger,
        monitor=(splits.task.monitor, splits.task.higher_is_better),
        metadata=run_metadata(cfg, choices, device, splits, overrides) | compute.describe(),
        hparams=run_hparams(cfg, choices) | {"precision": compute.precision, "channels_last": compute.channels_last},
        pictures=pictures,
        distributed=distributed,
        compute=compute,
    )


def model_and_data(cfg: DictConfig, choices: dict[str, str], device: torch.device, settings: LoopSettings,
                   train_spec: EpisodeSpec, eval_spec: EpisodeSpec, distributed: SingleProcess,
                   weights: dict | None = None, trained_shape: list[int] | None = None, weights_from: str = "the run"):
    """What training and metarun-eval build alike: the seeded splits on `device`, the algorithm for
    them (with `weights` if given, read from `weights_from`; data whose inputs are not `trained_shape`
    refused in one line) and its Compute (precision, memory format, tasks per pass)."""
    seed_everything(cfg.seed)
    if cfg.get("deterministic"):
        use_deterministic_kernels()
    splits = load_splits(cfg, train_spec, eval_spec, choices)
    if trained_shape is not None and list(splits.test.input_shape) != list(trained_shape):
        raise MetarunError(f"data={choices.get('data')} gives inputs of shape {list(splits.test.input_shape)}; "
                           f"{weights_from} was trained on {list(trained_shape)}")
    splits = splits.to(device)
    algorithm = build_algorithm(cfg, splits.train.input_shape, splits.task, device, choices)
    if weights is not None:
        load_trained(algorithm, weights, weights_from, choices)
    compute = resolve_compute(settings, device, splits.train.input_shape, algorithm.inner_loop)
    compute.place(algorithm)
    compute = plan_memory(compute, settings, algorithm, splits, train_spec, eval_spec, cfg.seed, distributed)
    return splits, algorithm, compute


def training_sampler(source, spec: EpisodeSpec, seed: int, repeat_every: int = 0) -> EpisodeSampler:
    """The seeded, resumable sampler of training episodes: fixed N-way K-shot, or Meta-Dataset's variable ones."""
    return EpisodeSampler(source, spec, seed, repeat_every, variable_meta_batch if spec.variable else None)


def fixed_episodes(source, spec: EpisodeSpec, count: int, seed: int, purpose: str) -> FixedEpisodes | FixedVariableEpisodes:
    """`count` evaluation episodes drawn once from (seed, purpose)."""
    if spec.variable:
        return FixedVariableEpisodes(source, spec.variable, count, seed, purpose)
    return FixedEpisodes(source, spec, count, seed, purpose)


def load_splits(cfg: DictConfig, train_spec: EpisodeSpec, eval_spec: EpisodeSpec, choices: dict[str, str]) -> DataSplits:
    """The data set's splits, the validation classes joined to training's under train_on_val=true,
    validation and test from eval_data if given (cross-domain), checked against the episodes they must supply."""
    splits = load_data(cfg, "data")
    if cfg.get("train_on_val"):
        splits = splits.with_val_in_train()
    if cfg.get("eval_data"):
        trained_on = getattr(splits.train, "input_format", None)
        if trained_on is None:
            raise MetarunError(f"eval_data={choices.get('eval_data')} tests image classification on another data set; "
                               f"data={choices.get('data')} is not image classification")
        other = load_data(cfg, "eval_data")
        splits = DataSplits(splits.train, AsInputOf(other.val, trained_on), AsInputOf(other.test, trained_on))
    if train_spec.variable and not all(hasattr(split, "min_images_per_class") for _, split in splits.items()):
        raise MetarunError(f"episode=variable draws classes with their images; data={choices.get('data')} has classes of modes "
                           "or no classes: use fixed episodes")
    check_splits(splits, train_spec, eval_spec, choices.get("data", "the data set"), choices.get("eval_data"))
    return splits


def load_data(cfg: DictConfig, key: str) -> DataSplits:
    """cfg[key]'s loader called with its augmentation settings made one Augmentation, here."""
    augment = {"augment": Augmentation.from_config(cfg[key].augment)} if "augment" in cfg[key] else {}
    return call(make(cfg, key, _partial_=True), key, cfg[key].get("_target_"), **augment)


def resolve_compute(settings: LoopSettings, device: torch.device, input_shape: tuple[int, ...], inner_loop: bool) -> Compute:
    """trainer.precision and trainer.channels_last for this device, input and kind of method (auto:
    what benchmarks/precision.py measured faster and accuracy-neutral)."""
    precision = resolve_precision(settings.precision, device, input_shape, inner_loop)
    channels_last = resolve_channels_last(settings.channels_last, device, input_shape, precision, inner_loop)
    return Compute(device, precision, channels_last)


def plan_memory(compute: Compute, settings: LoopSettings, algorithm, splits: DataSplits, train_spec: EpisodeSpec,
                eval_spec: EpisodeSpec, seed: int, distributed: SingleProcess) -> Compute:
    """`compute` with the tasks per pass that trainer.max_images_per_pass allows (auto: one training task
    measured); rank 0's plan for every process, so all evaluate the same batches. Episodes of
    different shapes (episode=variable) go one per pass."""
    if train_spec.variable:
        return dataclasses.replace(compute, tasks_per_pass=1, eval_tasks_per_pass=1)
    probe = next(FixedEpisodes(splits.train, train_spec, 1, seed, "memory probe").batches(1))
    plan = plan_passes(settings.max_images_per_pass, algorithm, probe, compute, settings.meta_batch_size,
                       settings.eval_batch_size, eval_spec.ways * eval_spec.images_per_class)
    plan = distributed.from_main(plan)
    return dataclasses.replace(compute, tasks_per_pass=plan.tasks, eval_tasks_per_pass=plan.eval_tasks)


def build_algorithm(cfg: DictConfig, input_shape: tuple[int, ...], task: Task, device: torch.device, choices: dict[str, str]):
    """The configured algorithm around its backbone, for inputs of `input_shape` and `task`."""
    backbone = build_backbone(cfg.backbone, input_shape)
    extra = {"task": task}
    if cfg.algo.get("ways") is not None and cfg.episode.train_ways != cfg.episode.ways:
        raise MetarunError(
            f"algo={choices.get('algo')} has a head of episode.ways={cfg.episode.ways} outputs, "
            f"so episode.train_ways={cfg.episode.train_ways} must equal it"
        )
    if cfg.algo.get("task_batching") is not None:
        extra["task_batching"] = resolve_task_batching(cfg.algo.task_batching, device)
    algorithm = make(cfg, "algo", backbone=backbone, **extra).to(device)
    if cfg.episode.get("protocol") == "sequence" and not algorithm.reads_sequences:
        raise MetarunError(f"episode.protocol=sequence episodes have no support set, and algo={choices.get('algo')} "
                           "needs one; use a sequence learner (mann, lstm, snail)")
    if cfg.episode.get("protocol") == "variable" and not algorithm.variable_episodes:
        raise MetarunError(f"episode=variable episodes differ in ways and shots, and algo={choices.get('algo')} needs them "
                           "fixed; use protonet, matchingnet, baseline, baselinepp or the MAML family (maml, fomaml, anil, metasgd, mamlpp)")
    if not any(p.requires_grad for p in algorithm.parameters()):
        raise MetarunError(f"backbone.freeze=true leaves algo={choices.get('algo')} nothing to train; "
                           "freeze the backbone only for methods with a head (baseline, maml, anil, ...)")
    return algorithm


def load_trained(algorithm, weights: dict, weights_from: str, choices: dict[str, str]) -> None:
    """Load a trained run's weights, refusing in one line those of another method, architecture or class count."""
    own = algorithm.state_dict()
    problems = ([f"{key} is missing" for key in own if key not in weights]
                + [f"{key} has shape {tuple(weights[key].shape)} there, {tuple(own[key].shape)} here"
                   for key in own if key in weights and weights[key].shape != own[key].shape]
                + [f"{key} is not in algo={choices.get('algo')}" for key in weights if key not in own])
    if problems:
        raise MetarunError(f"the weights of {weights_from} do not fit algo={choices.get('algo')} "
                           f"backbone={choices.get('backbone')}: {problems[0]} ({len(problems)} mismatches)")
    algorithm.load_state_dict(weights)


def build_backbone(backbone_cfg: DictConfig, input_shape: tuple[int, ...]):
    """The backbone for inputs of `input_shape`, started from `weights` (a local file) and frozen if asked."""
    settings = {key: value for key, value in backbone_cfg.items() if key not in ("weights", "freeze")}
    backbone = make({"backbone": OmegaConf.create(settings)}, "backbone", input_shape=input_shape)
    if backbone_cfg.get("weights"):
        load_weights(backbone, backbone_cfg.weights)
    return Frozen(backbone) if backbone_cfg.get("freeze") else backbone


def make(cfg: DictConfig, key: str, **kwargs):
    """instantiate(cfg[key]); a MetarunError inside comes out as itself, any other failure as one line."""
    try:
        return instantiate(cfg[key], **kwargs)
    except InstantiationException as error:
        raise one_line(key, cfg[key].get("_target_"), error.__cause__ or error) from None


def call(built, key: str, target: str, **kwargs):
    """A partial from make(cfg, key, _partial_=True) called with `kwargs`, failing as make does."""
    try:
        return built(**kwargs)
    except MetarunError:
        raise
    except Exception as error:  # what instantiate would have wrapped: a bad key, a loader's own bug
        raise one_line(key, target, error) from None


def one_line(key: str, target: str | None, cause: BaseException) -> MetarunError:
    if isinstance(cause, MetarunError):
        return cause
    detail = str(cause).splitlines()[-1] if str(cause) else type(cause).__name__
    return MetarunError(f"could not build {key} ({target}): {detail}")


def loop_settings(trainer: DictConfig) -> LoopSettings:
    known = [field.name for field in dataclasses.fields(LoopSettings)]
    unknown = sorted(set(trainer) - set(known))
    if unknown:  # a key the loop does not know, added with +trainer.<key>
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"; did you mean trainer.{close[0]}?" if close else f" (trainer has: {', '.join(known)})"
        raise MetarunError(f"trainer.{unknown[0]} is not a setting of the training loop{hint}")
    return LoopSettings(**trainer)


def episode_specs(episode: DictConfig) -> tuple[EpisodeSpec, EpisodeSpec]:
    """(training episodes, evaluation episodes): training may use more ways or other query counts.
    Under episode.protocol=sequence both are sequences of `instances` images of each of `ways` classes;
    under variable (episode=variable), Meta-Dataset's episodes of their own ways and shots."""
    protocol = episode.get("protocol", "standard")
    if protocol not in ("standard", "sequence", "variable"):
        raise MetarunError(f"episode.protocol={protocol!r} is not known; use standard, sequence or variable")
    if protocol == "variable":  # ways and queries: the fewest ways and the most queries per class
        def rules(ways: int, queries: int) -> VariableRules:
            return VariableRules(ways, episode.max_ways, queries, episode.max_support, episode.max_shots)

        return (EpisodeSpec(episode.train_ways, 1, 1, variable=rules(episode.train_ways, episode.train_queries)),
                EpisodeSpec(episode.ways, 1, 1, variable=rules(episode.ways, episode.queries)))
    if protocol == "sequence":
        return (EpisodeSpec(episode.train_ways, 0, episode.instances, sequence=True),
                EpisodeSpec(episode.ways, 0, episode.instances, sequence=True))
    train = EpisodeSpec(episode.train_ways, episode.shots, episode.train_queries)
    return train, EpisodeSpec(episode.ways, episode.shots, episode.queries)


def check_settings(cfg: DictConfig) -> None:
    """Reject values no run can use, naming the key, the value and what is allowed."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise MetarunError(f"{missing[0]} has no value (???); give it on the command line: {missing[0]}=...")
    rules = [
        # One rule for ways, here and in ImageSplit.check (which knows the data's task).
        ("episode.ways", 1, "at least 2 for classification, 1 for regression"),
        ("episode.train_ways", 1, "at least 2 for classification, 1 for regression"),
        ("episode.shots", 1, "at least 1"),
        ("episode.queries", 1, "at least 1"),
        ("episode.train_queries", 1, "at least 1"),
        ("episode.instances", 1, "at least 1"),
        ("trainer.steps", 1, "a positive integer"),
        ("trainer.meta_batch_size", 1, "a positive integer"),
        ("trainer.eval_every", 1, "a positive integer"),
        ("trainer.val_episodes", 1, "a positive integer"),
        ("trainer.test_episodes", 1, "a positive integer"),
        ("trainer.eval_batch_size", 1, "a positive integer"),
        ("algo.inner_steps", 1, "at least 1"),
        ("algo.eval_inner_steps", 0, "0 or more"),
    ]
    if OmegaConf.select(cfg, "episode.protocol") == "sequence":  # no support set: shots and queries are unused
        rules = [rule for rule in rules if rule[0] not in ("episode.shots", "episode.queries", "episode.train_queries")]
    for key, minimum, allowed in rules:
        value = OmegaConf.select(cfg, key)
        if value is not None and (not isinstance(value, int) or value < minimum):
            raise MetarunError(f"{key}={value!r} is invalid: it must be {allowed}")
    for key in ("optim.lr", "algo.inner_lr"):
        value = OmegaConf.select(cfg, key)
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise MetarunError(f"{key}={value!r} is invalid: a learning rate must be positive")


def check_splits(splits: DataSplits, train_spec: EpisodeSpec, eval_spec: EpisodeSpec, data_name: str,
                 eval_data_name: str | None = None) -> None:
    """Episodes must fit the splits (for images: enough classes and images per class)."""
    # Evaluation first: train_ways and train_queries follow ways and queries unless set, so an
    # error then names the key the user typed.
    for split_name, split in sorted(splits.items(), key=lambda item: item[0] == "train"):
        spec, prefix = (train_spec, "train_") if split_name == "train" else (eval_spec, "")
        split.check(spec, split_name, data_name if split_name == "train" else eval_data_name or data_name, prefix)


def resolve_device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda") and not str(name).startswith("cuda:"):
        raise MetarunError(f"device={name!r} is not known; use auto, cpu or cuda")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise MetarunError(f"device={name} was asked for but no CUDA GPU is available; use device=cpu or device=auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, so initialisation is the same for the same seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def use_deterministic_kernels() -> None:
    """torch.use_deterministic_algorithms, warning (not failing) on an op that has no deterministic kernel."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS repeats its sums only with a fixed workspace
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def prepare_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ".write-test").touch()
        (run_dir / ".write-test").unlink()
    except OSError as error:
        raise MetarunError(f"the run folder {run_dir} cannot be written ({error.strerror}); choose another with hydra.run.dir=...") from None


def run_metadata(cfg: DictConfig, choices: dict[str, str], device: torch.device, splits: DataSplits,
                 overrides: Sequence[str] = ()) -> dict:
    """What results.json (and every checkpoint) says about the run besides its numbers; `input`
    and `classes` let metarun-predict rebuild the model without the data set, and `overrides`
    tell the command behind these numbers from a later start in the same folder."""
    return {
        "algorithm": choices.get("algo"),
        "data": choices.get("data"),
        "eval_data": choices.get("eval_data"),
        "task": splits.task.name,
        "classes": getattr(splits.task, "classes", None),
        "input": getattr(splits.test, "input_format", None),
        "backbone": choices.get("backbone"),
        "ways": cfg.episode.ways,
        "shots": cfg.episode.shots,
        "queries": cfg.episode.queries,
        "train_ways": cfg.episode.train_ways,
        "seed": cfg.seed,
        "eval_seed": cfg.eval_seed,
        "device": str(device),
        "versions": {
            "metarun": metarun.__version__,
            "torch": str(torch.__version__),  # a str subclass that weights-only loading refuses
            "torchvision": _version("torchvision"),
            "python": platform.python_version(),
        },
        "overrides": list(overrides),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def run_hparams(cfg: DictConfig, choices: dict[str, str]) -> dict:
    """The TensorBoard HParams row: the settings researchers sweep under short names, then every
    scalar option of the method, backbone and optimiser (a method's options are absent for the others)."""
    hparams = {group: choices.get(group) for group in ("algo", "data", "eval_data", "backbone", "experiment") if choices.get(group)}
    episode = cfg.episode
    hparams.update(seed=cfg.seed, ways=episode.ways, shots=episode.shots, queries=episode.queries,
                   train_ways=episode.train_ways, train_queries=episode.train_queries, lr=cfg.optim.lr,
                   steps=cfg.trainer.steps, meta_batch_size=cfg.trainer.meta_batch_size)
    for group in ("algo", "backbone", "optim"):
        for key, value in OmegaConf.to_container(cfg[group], resolve=True).items():
            if not key.startswith("_") and key not in ("ways", "lr") and isinstance(value, (int, float, str, bool)):
                hparams[f"{group}.{key}"] = value
    return hparams


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
