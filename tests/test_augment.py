"""Training-episode augmentation: each operation does what it says, and it is seeded and resumable."""

from __future__ import annotations

import pytest
import torch

from metarun.data import ImageSplit
from metarun.data.augment import Augmentation
from metarun.episodes import EpisodeSampler, EpisodeSpec
from metarun.errors import MetarunError

IMAGES = torch.rand(4, 3, 8, 8)


def choices(offset=(0, 0), flip=0, factors=(1.0, 1.0, 1.0), count=4) -> torch.Tensor:
    return torch.tensor([*offset, flip, *factors], dtype=torch.float).expand(count, 6)


def test_centred_crop_without_flip_or_jitter_is_the_identity():
    augment = Augmentation(crop_padding=2, flip=True, jitter=0.4)
    assert torch.allclose(augment.apply(IMAGES, choices(offset=(2, 2))), IMAGES)


def test_crop_at_the_corner_shifts_the_image_in_and_pads_with_zeros():
    cropped = Augmentation(crop_padding=2).apply(IMAGES, choices(offset=(0, 0)))
    assert torch.equal(cropped[..., 2:, 2:], IMAGES[..., :-2, :-2])
    assert cropped[..., :2, :].abs().sum() == 0 and cropped[..., :, :2].abs().sum() == 0


def test_flip_mirrors_left_right():
    assert torch.equal(Augmentation(flip=True).apply(IMAGES, choices(flip=1)), IMAGES.flip(-1))


def test_jitter_scales_brightness_and_keeps_images_in_range():
    darker = Augmentation(jitter=0.5).apply(IMAGES, choices(factors=(0.5, 1.0, 1.0)))
    assert torch.allclose(darker, IMAGES * 0.5)
    extreme = Augmentation(jitter=0.9).apply(IMAGES, choices(factors=(1.9, 1.9, 0.1)))
    assert extreme.min() >= 0 and extreme.max() <= 1


def test_draws_stay_in_range_and_respect_switched_off_parts():
    drawn = Augmentation(crop_padding=4, flip=False, jitter=0.4).draw((1000,), torch.Generator().manual_seed(0))
    assert drawn[:, :2].min() == 0 and drawn[:, :2].max() == 8
    assert drawn[:, 2].eq(0).all()
    assert drawn[:, 3:].min() >= 0.6 and drawn[:, 3:].max() <= 1.4


def test_bad_settings_are_one_line():
    with pytest.raises(MetarunError, match="jitter in \\[0, 1\\)"):
        Augmentation(jitter=1.5)


def augmented_split() -> ImageSplit:
    generator = torch.Generator().manual_seed(0)
    per_class = [torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=generator) for _ in range(5)]
    return ImageSplit.from_classes(per_class, [f"c{i}" for i in range(5)],
                                   augment=Augmentation(crop_padding=2, flip=True, jitter=0.4))


def test_augmented_episodes_are_seeded_and_resumable():
    spec = EpisodeSpec(ways=3, shots=1, queries=2)
    first, second = EpisodeSampler(augmented_split(), spec, seed=0), EpisodeSampler(augmented_split(), spec, seed=0)
    first.sample(2)
    state = first.state_dict()
    after = first.sample(2)
    second.load_state_dict(state)
    assert torch.equal(second.sample(2).support_x, after.support_x)


def test_augmentation_changes_the_images_of_training_episodes():
    split = augmented_split()
    plain = ImageSplit(split.images, split.offsets, split.counts, split.class_names)
    spec = EpisodeSpec(ways=3, shots=1, queries=2)
    a = EpisodeSampler(split, spec, seed=0).sample(4)
    b = EpisodeSampler(plain, spec, seed=0).sample(4)
    assert a.support_x.shape == b.support_x.shape and not torch.allclose(a.support_x, b.support_x)
