"""Backbones: each takes the data's `input_shape` (and its own settings) and exposes `out_features`."""

from metarun.models.conv4 import Conv4
from metarun.models.mlp import MLP
from metarun.models.norm import use_batch_statistics
from metarun.models.resnet12 import ResNet12
from metarun.models.torchvision_resnet import TorchvisionResNet

__all__ = ["Conv4", "MLP", "ResNet12", "TorchvisionResNet", "use_batch_statistics"]
