"""metarun-eval: score a trained run's model again, on other fixed test episodes.

    metarun-eval run=outputs/reproduce/protonet_omniglot_20w1s episode=5way_1shot
    metarun-eval run=<folder> episode.shots=5 trainer.test_episodes=1000 eval_seed=1

The papers train one model and test it in several settings (ProtoNet's 60-way model at 5 and 20
ways); this follows them without training twice. The run's own command is composed again with
the overrides given here, so they read as they would on `metarun`'s command line. Only what the
test episodes are (episode, data, eval_seed, trainer.test_episodes), how they are computed
(device, precision, batch sizes) and evaluation-time settings of the method (algo.eval_*) may
change: the model is the run's best.pt (last.pt with trainer.test_weights=last; one model, even
for a run trained with trainer.test_ensemble). The scores go to <run>/eval_<setting>.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from metarun import checkpoints
from metarun.errors import MetarunError

USAGE = ("usage: metarun-eval run=<run folder> [episode=5way_1shot] [episode.shots=5] [trainer.test_episodes=1000] [eval_seed=1] "
         "[data.root=...] [eval_data=<another data set> eval_data.root=...]")

# Keys an evaluation may change: the episodes it scores on and how it computes them.
# algo.protocol and algo.instances say how a sequence learner reads an episode (they follow episode.*),
# not what it learned: a model trained on sequences may be scored on N-way K-shot episodes.
EVALUATION_KEYS = ("episode.", "data.", "eval_data", "eval_seed", "device", "deterministic", "malloc", "algo.eval_",
                   "algo.finetune", "algo.protocol", "algo.instances", "logger.",
                   "trainer.test_episodes", "trainer.test_weights", "trainer.eval_batch_size", "trainer.eval_batch_norm",
                   "trainer.precision", "trainer.channels_last", "trainer.max_images_per_pass", "trainer.progress",
                   "trainer.resume")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + USAGE)
        return
    try:
        run, overrides = parse_arguments(args)
        result, path = rescore(run, overrides)
    except MetarunError as error:
        print(f"metarun-eval: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    test, metric, setting = result["test"], result["metric"], result["setting"]
    print(f"test {metric} {test[metric]:.4f} ± {test[metric + '_ci95']:.4f} over {test['episodes']} episodes "
          f"({setting['data']}, {setting['ways']}-way {setting['shots']}-shot, {setting['queries']} queries); written to {path}")


def parse_arguments(args: list[str]) -> tuple[Path, list[str]]:
    runs = [arg.partition("=")[2] for arg in args if arg.startswith("run=")]
    if len(runs) != 1 or not runs[0]:
        raise MetarunError(f"give the run folder once, as run=<folder>; {USAGE}")
    overrides = [arg for arg in args if not arg.startswith("run=")]
    loose = [arg for arg in overrides if "=" not in arg]
    if loose:
        raise MetarunError(f"unknown argument {loose[0]}: give key=value overrides; {USAGE}")
    return Path(runs[0]), overrides


def rescore(run: Path, overrides: list[str]) -> tuple[dict, Path]:
    """Score the run's best weights on the test episodes its config plus `overrides` describe;
    returns the results and the eval_<setting>.json they were written to."""
    from metarun.build import check_settings, episode_specs, fixed_episodes, loop_settings, model_and_data, resolve_device
    from metarun.distributed import SingleProcess
    from metarun.evaluation import evaluate
    from metarun.results import summarize, write_json

    metadata, weights = checkpoints.read_run(run)
    cfg, choices = compose(run, overrides)
    if cfg.trainer.get("test_weights") == "last":
        weights = checkpoints.load(run / "last.pt")["algorithm"]
    check_changes(metadata.get("config", {}), OmegaConf.to_container(cfg, resolve=True))
    check_settings(cfg)
    device = resolve_device(cfg.device)
    train_spec, eval_spec = episode_specs(cfg.episode)
    settings = loop_settings(cfg.trainer)
    cfg.backbone.weights = None  # the checkpoint holds the trained weights
    # A train_on_val run's heads count the validation classes too: the data are loaded as training did.
    splits, algorithm, compute = model_and_data(cfg, choices, device, settings, train_spec, eval_spec, SingleProcess(),
                                                weights, (metadata.get("input") or {}).get("shape"), weights_from=f"run={run}")
    episodes = fixed_episodes(splits.test, eval_spec, settings.test_episodes, cfg.eval_seed, "test")
    metric = splits.task.monitor
    ways, shots, queries = eval_spec.ways, eval_spec.shots, eval_spec.queries
    if eval_spec.variable:  # episode=variable: each episode its own ways and shots
        ways, shots, queries = f"{ways}-{eval_spec.variable.max_ways}", "variable", f"<={eval_spec.variable.max_queries}"
    setting = {"data": choices.get("eval_data") or choices.get("data"), "ways": ways, "shots": shots,
               "queries": queries, "episodes": settings.test_episodes, "eval_seed": cfg.eval_seed}
    result = {
        "metric": metric,
        "test": summarize(evaluate(algorithm, episodes, compute, settings.eval_batch_size, batch_norm=settings.eval_batch_norm)),
        "setting": setting,
        "run": str(run),
        "weights": "best.pt" if (run / "best.pt").is_file() and settings.test_weights == "best" else "last.pt",
        "command": " ".join(["metarun-eval", f"run={run}", *overrides]),
        "overrides": overrides,
        "device": str(device),
        **compute.describe(),
    }
    path = run / f"eval_{setting_name(setting)}.json"
    write_json(path, result)
    return result, path


def setting_name(setting: dict) -> str:
    """omniglot_5way_1shot_15q_1000ep_seed0: everything that makes one set of test episodes."""
    queries = str(setting["queries"]).replace("<=", "max")  # a file name
    return (f"{setting['data']}_{setting['ways']}way_{setting['shots']}shot_{queries}q_"
            f"{setting['episodes']}ep_seed{setting['eval_seed']}")


def compose(run: Path, overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """The run's own command line (its .hydra/overrides.yaml) with `overrides` replacing or adding keys,
    composed as `metarun` would; and the chosen option of each config group."""
    from metarun.cli import compose as compose_config

    saved = run / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise MetarunError(f"{saved} is missing: metarun-eval recomposes the run's command from it (runs started with `metarun` have one)")
    merged = {override_key(o): o for o in OmegaConf.to_container(OmegaConf.load(saved)) if not o.startswith("hydra.")}
    merged.update({override_key(o): o for o in overrides})
    return compose_config(list(merged.values()))


def override_key(override: str) -> str:
    """The key an override sets: `episode` for episode=5way_1shot, `trainer.steps` for +trainer.steps=1."""
    return override.partition("=")[0].lstrip("+~")


def check_changes(trained: dict, now: dict) -> None:
    """Refuse, in one line, an override that would score another model than the one trained."""
    changed = [key for key in checkpoints.config_differences(trained, now) if not key.startswith(EVALUATION_KEYS)]
    if changed:
        raise MetarunError(f"metarun-eval scores the run's trained model, so {', '.join(changed)} cannot change; "
                           "only episode.*, data.*, eval_data, eval_seed, device, trainer.test_episodes, trainer.eval_batch_size, "
                           "trainer.precision, algo.eval_*, algo.finetune* and algo.protocol can")


if __name__ == "__main__":
    main()
