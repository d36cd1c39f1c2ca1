"""Conv4: the four-block convolutional backbone of the few-shot literature."""

from __future__ import annotations

from typing import Literal, Sequence

from torch import Tensor, nn

from metarun.errors import MetarunError
from metarun.models.norm import BatchNorm2d

Pooling = Literal["max", "stride"]


def conv_block(in_channels: int, out_channels: int, pooling: Pooling | None, padding: int = 1) -> nn.Sequential:
    """conv3x3 -> batch norm -> ReLU -> max-pool 2, or a stride-2 conv3x3 in place of the pool,
    or (pooling None) neither."""
    stride = 2 if pooling == "stride" else 1
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=padding),
        BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pooling == "max":
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """4 x [conv3x3 `filters`, batch norm, ReLU, max-pool 2], flattened.

    filters: one width for every block, or one per block (R2D2's 64-96-128-256).
    pooling="stride" is the MAML paper's Omniglot network: stride-2 convolutions instead of
    max-pooling, then the mean over space (a quarter of the compute).
    pooled_blocks < blocks leaves the last blocks without pooling, and unpadded_blocks > 0 the first
    convolutions without padding (Relation Networks' embedding: 64x5x5 at 28x28, 64x19x19 at 84x84).
    x: [B, C, H, W] with input_shape = (C, H, W) -> [B, out_features], the flattened map of
    shape out_shape (max-pooling: 64 features at 28x28, 1600 at 84x84 with 64 filters; stride:
    `filters`).
    """

    def __init__(self, input_shape: Sequence[int], filters: int | Sequence[int] = 64, blocks: int = 4, pooling: Pooling = "max",
                 pooled_blocks: int | None = None, unpadded_blocks: int = 0):
        super().__init__()
        if len(input_shape) != 3:
            raise MetarunError(f"backbone=conv4 reads images [C, H, W], but this data set's inputs have shape "
                               f"{tuple(input_shape)}; use backbone=mlp")
        in_channels, height, width = input_shape
        if pooling not in ("max", "stride"):
            raise MetarunError(f"backbone.pooling={pooling!r} is not known; use 'max' or 'stride'")
        pooled = blocks if pooled_blocks is None else pooled_blocks
        side = (1, 1) if pooling == "stride" else map_side((height, width), pooled, unpadded_blocks)
        if min(side) < 1:
            raise MetarunError(f"Conv4 with {pooled} max-pooling and {unpadded_blocks} unpadded blocks leaves no map "
                               f"of {height}x{width} images; use larger images or fewer such blocks")
        widths = [filters] * blocks if isinstance(filters, int) else list(filters)
        if len(widths) != blocks:
            raise MetarunError(f"backbone.filters={widths} names {len(widths)} widths for {blocks} blocks; give one per block or one for all")
        channels = [in_channels] + widths
        self.blocks = nn.Sequential(*(
            conv_block(a, b, pooling if index < pooled else None, padding=0 if index < unpadded_blocks else 1)
            for index, (a, b) in enumerate(zip(channels, channels[1:]))))
        self.pooling = pooling
        self.out_shape = (widths[-1], *side)
        self.out_features = widths[-1] * side[0] * side[1]

    def forward(self, x: Tensor) -> Tensor:
        features = self.blocks(x)  # [B, filters, h, w]
        if self.pooling == "stride":
            return features.mean(dim=(2, 3))  # [B, filters]
        return features.flatten(1)  # [B, filters * h * w]


def map_side(size: tuple[int, int], pooled: int, unpadded: int) -> tuple[int, int]:
    """The feature map's (h, w) after max-pooling blocks: an unpadded 3x3 convolution trims 2, a pool halves."""
    for index in range(max(pooled, unpadded)):
        size = tuple(s - 2 if index < unpadded else s for s in size)
        size = tuple(s // 2 if index < pooled else s for s in size)
    return size
