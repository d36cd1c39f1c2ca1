"""The `metarun` command: the Hydra entry point and nothing else; training lives in build.py and trainer.py.

Hydra and torch are imported only once Ctrl-C and SIGTERM answer in one line, so a stop in the
first seconds is as quiet as one during training.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

from metarun.interrupts import Interrupted, RunInterrupted, exit_code, interrupt_on_signals, signals_held

log = logging.getLogger("metarun")


def config_dir() -> str:
    """configs/ inside the installed package, or the repository's top-level configs/ in a checkout."""
    installed = Path(__file__).parent / "configs"
    return str(installed if installed.is_dir() else Path(__file__).resolve().parents[1] / "configs")


def run() -> None:
    """The console script: bad folders and unknown options are one line before Hydra starts, and a
    stop before training is one line too."""
    interrupt_on_signals()
    try:
        problem = command_line_problem(sys.argv[1:])
        if problem:
            print(f"metarun: error: {problem}", file=sys.stderr)
            sys.exit(2)
        with signals_held():  # a stop during torch's import is one line too, not an abort
            import torch  # noqa: F401
        main()
    except Interrupted as stopped:
        for key, _, value in (arg.partition("=") for arg in sys.argv[1:]):
            if key == "hydra.run.dir":  # made by writable() or by Hydra, before the job could clean up
                remove_if_unused(Path(value))
        print(f"metarun: stopped ({stopped.signal_name}) before training began; nothing to resume", file=sys.stderr)
        logging.disable(logging.CRITICAL)  # a half-imported torch would log its exit hooks' statistics at INFO
        sys.exit(exit_code(stopped.signal_name))


def command_line_problem(args: list[str]) -> str | None:
    """What is wrong with the command line in one line (an output folder that cannot be written,
    an option or key that does not exist, with the closest valid names), or None."""
    from metarun.overrides import unknown_override

    unknown = unknown_override(args, Path(config_dir()))
    if unknown:
        return unknown
    folders = [value for key, _, value in (arg.partition("=") for arg in args) if key in ("hydra.run.dir", "hydra.sweep.dir")]
    for folder in folders or ["outputs"]:
        if not writable(Path(folder), create=bool(folders)):
            return (f"the output folder {folder} cannot be written; choose another with hydra.run.dir=... "
                    "(hydra.sweep.dir=... for -m)")
    return None


def compose(overrides: list[str]):
    """train.yaml composed with `overrides` as `metarun` would, without Hydra's own node; and the
    chosen option of each config group. A composition Hydra refuses is one MetarunError line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    from metarun.errors import MetarunError

    try:
        with initialize_config_dir(config_dir(), version_base="1.3", job_name="metarun"):
            cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as error:
        raise MetarunError(str(error).splitlines()[0]) from None
    choices = {group: choice for group, choice in cfg.hydra.runtime.choices.items() if isinstance(choice, str)}
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def writable(folder: Path, create: bool) -> bool:
    """Whether runs can be written under `folder`; `create`: make it (as Hydra would) to find out."""
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
    existing = folder
    while not existing.exists():
        existing = existing.parent
    return existing.is_dir() and os.access(existing, os.W_OK)


def main() -> None:
    """Hydra's entry point over train.yaml, parsing sys.argv (hydra.main, imported only now)."""
    import hydra

    hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")(train_job)()


def train_job(cfg) -> float | None:
    """Train one run (a job of a sweep); returns `optimized_metric` for sweepers that maximise it."""
    from hydra.core.hydra_config import HydraConfig

    from metarun.allocator import tune_malloc
    from metarun.build import train  # heavy imports after Hydra has parsed the command line
    from metarun.errors import MetarunError

    if cfg.get("malloc") == "tuned":
        tune_malloc()
    hydra_config = HydraConfig.get()
    runtime = hydra_config.runtime
    run_dir = Path(runtime.output_dir)
    try:
        results = train(cfg, run_dir, dict(runtime.choices), list(hydra_config.overrides.task))
    except MetarunError as error:
        remove_if_unused(run_dir)
        print(f"metarun: error: {error}", file=sys.stderr)
        sys.exit(2)
    except Interrupted:
        remove_if_unused(run_dir)
        raise
    except RunInterrupted as stopped:
        print(f"metarun: {stopped}; continue with: {resume_command(run_dir)}", file=sys.stderr)
        sys.exit(stopped.exit_code)
    test, metric = results["test"], results["metric"]
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the run
        log.info("test %s %.4f ± %.4f over %d episodes; results in %s", metric, test[metric], test[f"{metric}_ci95"], test["episodes"], runtime.output_dir)
    return lookup(results, cfg.get("optimized_metric") or f"val/best_{metric}")


def resume_command(run_dir: Path) -> str:
    """The command that continues this job: its own overrides, resuming from its folder."""
    from hydra.core.hydra_config import HydraConfig

    kept = [o for o in HydraConfig.get().overrides.task if o.partition("=")[0] not in ("trainer.resume", "hydra.run.dir")]
    return shlex.join(["metarun", *kept, "trainer.resume=true", f"hydra.run.dir={run_dir}"])


def remove_if_unused(run_dir: Path) -> None:
    """A run that stopped before its first checkpoint leaves no folder behind (only Hydra's files were in it)."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "cli.log", "tb"}:
        shutil.rmtree(run_dir, ignore_errors=True)


def lookup(results: dict, metric: str) -> float:
    """results["val"]["best_acc"] for metric "val/best_acc"; NaN where no value was finite."""
    value = results
    for part in metric.split("/"):
        value = value[part]
    return float("nan") if value is None else float(value)


if __name__ == "__main__":
    run()
