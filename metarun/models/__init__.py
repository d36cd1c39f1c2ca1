"""Backbones: each takes the data's `input_shape` (and its own settings) and exposes `out_features`."""

from metarun.models.conv4 import Conv4
from metarun.models.mlp import MLP
from metarun.models.norm import use_batch_statistics

__all__ = ["Conv4", "MLP", "use_batch_statistics"]
