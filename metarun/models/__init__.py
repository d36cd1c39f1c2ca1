"""Backbones: each takes (in_channels, image_size, ...) and exposes `out_features`."""

from metarun.models.conv4 import Conv4
from metarun.models.norm import use_batch_statistics

__all__ = ["Conv4", "use_batch_statistics"]
