"""A small data set made on the fly with learnable class structure, for tests and debug=smoke."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metarun.data.split import DataSplits, ImageSplit


def make_synthetic(
    train_classes: int = 64,
    val_classes: int = 24,
    test_classes: int = 24,
    images_per_class: int = 20,
    image_size: int = 28,
    channels: int = 1,
    noise: float = 0.5,
    seed: int = 0,
) -> DataSplits:
    """Each class is a smooth random pattern; its images are shifted, noisy copies of it."""
    generator = torch.Generator().manual_seed(seed)
    sizes = {"train": train_classes, "val": val_classes, "test": test_classes}
    splits = {}
    for name, num_classes in sizes.items():
        patterns = _class_patterns(num_classes, channels, image_size, generator)  # [C', ch, S, S]
        per_class = [_noisy_copies(p, images_per_class, noise, generator) for p in patterns]
        names = [f"{name}/class{c:03d}" for c in range(num_classes)]
        splits[name] = ImageSplit.from_classes(per_class, names)
    return DataSplits(**splits)


def _class_patterns(num_classes: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.randn(num_classes, channels, 4, 4, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)  # [C', ch, S, S]


def _noisy_copies(pattern: torch.Tensor, count: int, noise: float, generator: torch.Generator) -> torch.Tensor:
    shifts = torch.randint(-2, 3, (count, 2), generator=generator).tolist()
    copies = torch.stack([pattern.roll(tuple(shift), dims=(-2, -1)) for shift in shifts])  # [n, ch, S, S]
    copies = copies + noise * torch.randn(copies.shape, generator=generator)
    return (torch.sigmoid(copies) * 255).round().to(torch.uint8)
