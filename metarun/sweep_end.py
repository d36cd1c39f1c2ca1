"""The line a finished sweep ends with: where its runs are and the command that compares them."""

from __future__ import annotations

import shlex
import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class PointToReport(Callback):
    """A Hydra callback (configs/hydra/default.yaml): after the last job of `metarun -m ...`."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        folder = config.hydra.sweep.dir
        print(f"metarun: the sweep's runs are in {folder}; compare them with: metarun-report {shlex.quote(str(folder))}",
              file=sys.stderr)
