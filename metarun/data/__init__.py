"""Data sets as class-indexed uint8 tensors, split into train / val / test classes."""

from metarun.data.split import DataSplits, ImageSplit

__all__ = ["DataSplits", "ImageSplit"]
