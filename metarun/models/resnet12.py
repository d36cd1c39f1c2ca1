"""ResNet-12: the backbone of MetaOptNet (Lee et al. 2019) and FEAT (Ye et al. 2020)."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarun.errors import MetarunError
from metarun.models.norm import BatchNorm2d


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018): in training, zero `block_size` x `block_size` squares of
    each feature map so that about `drop_rate` of the units are dropped, then rescale."""

    def __init__(self, drop_rate: float, block_size: int):
        super().__init__()
        self.drop_rate = drop_rate
        self.block_size = block_size

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W]
        if not self.training or self.drop_rate == 0:
            return x
        height, width = x.shape[-2:]
        size = min(self.block_size, height, width)
        # The rate of block centres that drops `drop_rate` of the units (the paper's gamma).
        gamma = self.drop_rate / size**2 * height * width / ((height - size + 1) * (width - size + 1))
        centres = (torch.rand(x.shape[0], 1, height - size + 1, width - size + 1, device=x.device) < gamma).to(x.dtype)
        pad = size - 1
        blocks = F.max_pool2d(F.pad(centres, (pad, pad, pad, pad)), kernel_size=size, stride=1)  # [B, 1, H, W]
        keep = 1 - blocks
        return x * keep * (keep.numel() / keep.sum().clamp_min(1))


class ResidualBlock(nn.Module):
    """3 x [conv3x3, batch norm, leaky ReLU 0.1] plus a 1x1-conv shortcut, then max-pool 2 and DropBlock."""

    def __init__(self, in_channels: int, out_channels: int, drop_rate: float, block_size: int):
        super().__init__()
        layers = []
        for index in range(3):
            layers += [nn.Conv2d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                       BatchNorm2d(out_channels)]
            if index < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), BatchNorm2d(out_channels))
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2), DropBlock(drop_rate, block_size))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(nn.Module):
    """Four residual blocks of `channels` (64-160-320-640 as in MetaOptNet and FEAT).

    pool="avg": the mean over space (640 features, FEAT); "flatten": the whole map (MetaOptNet:
    640 x 5 x 5 at 84x84). DropBlock (drop_rate > 0) acts in the last two blocks with
    `block_size`, plain dropout-like blocks of 1 in the first two, as MetaOptNet does.
    x: [B, C, H, W] -> [B, out_features].
    """

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int] = (64, 160, 320, 640), drop_rate: float = 0.0,
                 block_size: int = 5, pool: Literal["avg", "flatten"] = "avg"):
        super().__init__()
        if len(input_shape) != 3:
            raise MetarunError(f"backbone=resnet12 reads images [C, H, W], but this data set's inputs have shape {tuple(input_shape)}")
        if pool not in ("avg", "flatten"):
            raise MetarunError(f"backbone.pool={pool!r} is not known; use 'avg' or 'flatten'")
        if not 0 <= drop_rate < 1:
            raise MetarunError(f"backbone.drop_rate={drop_rate} is invalid: it must be in [0, 1)")
        in_channels, height, width = input_shape
        if min(height, width) < 2 ** len(channels):
            raise MetarunError(f"ResNet-12 with {len(channels)} pooling blocks needs images of at least {2 ** len(channels)} pixels, got {height}x{width}")
        sizes = [in_channels, *channels]
        self.blocks = nn.Sequential(*(
            ResidualBlock(a, b, drop_rate, block_size if index >= 2 else 1) for index, (a, b) in enumerate(zip(sizes, sizes[1:]))))
        self.pool = pool
        for _ in channels:
            height, width = height // 2, width // 2
        self.out_shape = (channels[-1], 1, 1) if pool == "avg" else (channels[-1], height, width)
        self.out_features = self.out_shape[0] * self.out_shape[1] * self.out_shape[2]

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(x)
        return x.mean(dim=(2, 3)) if self.pool == "avg" else x.flatten(1)
