"""torchvision's ResNet-18/34/50 as few-shot backbones, adapted to small images where needed."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from metarun.errors import MetarunError
from metarun.models.norm import BatchNorm2d

DEPTHS = (18, 34, 50)


class TorchvisionResNet(nn.Module):
    """torchvision.models.resnet<depth> without its classifier: x [B, C, H, W] -> [B, 512 or 2048].

    small_input: the CIFAR variant (3x3 stride-1 first convolution, no max-pool), so 32x32 or
    84x84 images keep a usable map; "auto" picks it below 64 pixels. With small_input false the
    layers are torchvision's own, so its ImageNet weights files load by `backbone.weights`.
    Every batch norm is metarun's, so gradient-based methods run under torch.func unchanged.
    """

    def __init__(self, input_shape: Sequence[int], depth: int = 18, small_input: bool | Literal["auto"] = "auto"):
        super().__init__()
        if depth not in DEPTHS:
            raise MetarunError(f"backbone.depth={depth} is not available; use one of {sorted(DEPTHS)}")
        if len(input_shape) != 3:
            raise MetarunError(f"backbone=resnet{depth} reads images [C, H, W], but this data set's inputs have shape {tuple(input_shape)}")
        channels, height, width = input_shape
        from torchvision import models  # here, not at the top: importing torchvision costs every metarun start seconds

        net = getattr(models, f"resnet{depth}")(weights=None)
        small = min(height, width) < 64 if small_input == "auto" else bool(small_input)
        if small:
            net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif channels != 3:
            net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.out_features = net.fc.in_features
        self.out_shape = (self.out_features, 1, 1)  # the globally pooled map, for methods that compare maps
        net.fc = nn.Identity()
        self.net = _with_metarun_batch_norm(net)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _with_metarun_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every nn.BatchNorm2d by metarun's BatchNorm2d (same parameters and buffers)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            with torch.no_grad():
                replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            _with_metarun_batch_norm(child)
    return module
