"""Augmentations keep shapes, dtypes and label alignment, and do what they say."""

from __future__ import annotations

import numpy as np
import pytest

from fmnist import augment


def numbered(n: int = 64) -> np.ndarray:
    """Images whose every pixel is the image's own index: alignment is visible in the values."""
    return np.broadcast_to(np.arange(1, n + 1, dtype=np.uint8)[:, None, None], (n, 28, 28)).copy()


@pytest.mark.parametrize(
    "options",
    [
        {"shift_pixels": 2},
        {"flip_images": True},
        {"erase_probability": 0.5},
        {"shift_pixels": 3, "flip_images": True, "erase_probability": 0.5},
    ],
)
def test_shapes_dtypes_and_alignment_are_kept(options: dict) -> None:
    images = numbered()
    out = augment.augment(images, np.random.default_rng(0), **options)
    assert out.shape == images.shape and out.dtype == np.uint8
    for index, image in enumerate(out):
        assert set(np.unique(image)) <= {0, index + 1}  # only its own pixels, or black
    assert (images == numbered()).all()  # the input is never changed


def test_shift_moves_content_by_at_most_the_limit() -> None:
    images = np.zeros((200, 28, 28), np.uint8)
    images[:, 13, 13] = 255
    out = augment.shift(images, np.random.default_rng(1), 2)
    positions = np.argwhere(out == 255)
    assert len(positions) == 200  # nothing falls off the edge at this distance
    assert np.abs(positions[:, 1:] - 13).max() == 2 and len({tuple(p) for p in positions[:, 1:]}) > 10


def test_flip_mirrors_about_half() -> None:
    images = np.zeros((400, 28, 28), np.uint8)
    images[:, :, 0] = 255
    out = augment.flip(images, np.random.default_rng(2))
    flipped = out[:, 0, 27] == 255
    assert 150 < flipped.sum() < 250
    assert (out[flipped, :, 0] == 0).all()


def test_erase_blanks_a_rectangle_with_the_given_probability() -> None:
    images = np.full((500, 28, 28), 200, np.uint8)
    out = augment.erase(images, np.random.default_rng(3), 0.5)
    erased = (out == 0).any(axis=(1, 2))
    assert 200 < erased.sum() < 300
    blanked = (out == 0).sum(axis=(1, 2))[erased] / 784
    assert blanked.min() >= 0.005 and blanked.max() <= 0.35


def test_same_generator_same_images() -> None:
    images = numbered()
    first = augment.augment(images, np.random.default_rng(7), 2, True, 0.3)
    second = augment.augment(images, np.random.default_rng(7), 2, True, 0.3)
    np.testing.assert_array_equal(first, second)
