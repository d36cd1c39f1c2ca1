"""Conv4: the four-block convolutional backbone of the few-shot literature."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from metarun.errors import MetarunError
from metarun.models.norm import BatchNorm2d

Pooling = Literal["max", "stride"]


def conv_block(in_channels: int, out_channels: int, pooling: Pooling) -> nn.Sequential:
    """conv3x3 -> batch norm -> ReLU -> max-pool 2, or a stride-2 conv3x3 in place of the pool."""
    stride = 2 if pooling == "stride" else 1
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
        BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pooling == "max":
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """4 x [conv3x3 `filters`, batch norm, ReLU, max-pool 2], flattened.

    pooling="stride" is the MAML paper's Omniglot network: stride-2 convolutions instead of
    max-pooling, then the mean over space (a quarter of the compute).
    x: [B, in_channels, image_size, image_size] -> [B, out_features]
    (max-pooling: 64 features at 28x28, 1600 at 84x84 with 64 filters; stride: `filters`).
    """

    def __init__(self, in_channels: int, image_size: int, filters: int = 64, blocks: int = 4, pooling: Pooling = "max"):
        super().__init__()
        if pooling not in ("max", "stride"):
            raise MetarunError(f"backbone.pooling={pooling!r} is not known; use 'max' or 'stride'")
        if pooling == "max" and image_size < 2**blocks:
            raise MetarunError(f"Conv4 with {blocks} max-pooling blocks needs images of at least {2**blocks} pixels, got {image_size}")
        channels = [in_channels] + [filters] * blocks
        self.blocks = nn.Sequential(*(conv_block(a, b, pooling) for a, b in zip(channels, channels[1:])))
        self.pooling = pooling
        side = image_size // 2**blocks
        self.out_features = filters if pooling == "stride" else filters * side * side

    def forward(self, x: Tensor) -> Tensor:
        features = self.blocks(x)  # [B, filters, h, w]
        if self.pooling == "stride":
            return features.mean(dim=(2, 3))  # [B, filters]
        return features.flatten(1)  # [B, filters * h * w]
