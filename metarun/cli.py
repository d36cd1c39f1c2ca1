"""The `metarun` command: the Hydra entry point and nothing else; training lives in build.py and trainer.py."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from metarun.allocator import tune_malloc
from metarun.errors import MetarunError
from metarun.interrupts import RunInterrupted

log = logging.getLogger("metarun")


def config_dir() -> str:
    """configs/ inside the installed package, or the repository's top-level configs/ in a checkout."""
    installed = Path(__file__).parent / "configs"
    return str(installed if installed.is_dir() else Path(__file__).resolve().parents[1] / "configs")


def run() -> None:
    """The console script: an output folder that cannot be made is one line, before Hydra tries."""
    folders = [value for key, _, value in (arg.partition("=") for arg in sys.argv[1:]) if key in ("hydra.run.dir", "hydra.sweep.dir")]
    for folder in folders or ["outputs"]:
        if not writable(Path(folder), create=bool(folders)):
            print(f"metarun: error: the output folder {folder} cannot be written; choose another with hydra.run.dir=... "
                  "(hydra.sweep.dir=... for -m)", file=sys.stderr)
            sys.exit(2)
    main()


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


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train one run; returns `optimized_metric` for sweepers that maximise it."""
    from metarun.build import train  # heavy imports after Hydra has parsed the command line

    if cfg.get("malloc") == "tuned":
        tune_malloc()
    runtime = HydraConfig.get().runtime
    try:
        results = train(cfg, Path(runtime.output_dir), dict(runtime.choices))
    except MetarunError as error:
        print(f"metarun: error: {error}", file=sys.stderr)
        sys.exit(2)
    except RunInterrupted as stopped:
        print(f"metarun: {stopped}", file=sys.stderr)
        sys.exit(stopped.exit_code)
    test, metric = results["test"], results["metric"]
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the run
        log.info("test %s %.4f ± %.4f over %d episodes; results in %s", metric, test[metric], test[f"{metric}_ci95"], test["episodes"], runtime.output_dir)
    return lookup(results, cfg.get("optimized_metric") or f"val/best_{metric}")


def lookup(results: dict, metric: str) -> float:
    """results["val"]["best_acc"] for metric "val/best_acc"; NaN where no value was finite."""
    value = results
    for part in metric.split("/"):
        value = value[part]
    return float("nan") if value is None else float(value)


if __name__ == "__main__":
    run()
