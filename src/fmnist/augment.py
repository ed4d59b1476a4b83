"""Augmentations: pure functions on whole uint8 batches (n, 28, 28), vectorised, label order kept.

Each returns a new array of the same shape and dtype, image i still at
position i, so labels stay aligned. Randomness comes only from the `rng`
passed in; training draws it from (seed, epoch), so a resumed run sees the
same images as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np


def shift(images: np.ndarray, rng: np.random.Generator, pixels: int) -> np.ndarray:
    """Translate each image by a random (dy, dx) in [-pixels, pixels], filling with black."""
    if pixels == 0:
        return images.copy()
    n, height, width = images.shape
    padded = np.pad(images, ((0, 0), (pixels, pixels), (pixels, pixels)))
    offsets = rng.integers(0, 2 * pixels + 1, size=(n, 2))
    out = np.empty_like(images)
    # One slice per distinct offset: at most (2 * pixels + 1) ** 2 vectorised copies.
    codes = offsets[:, 0] * (2 * pixels + 1) + offsets[:, 1]
    for code in np.unique(codes):
        members = codes == code
        dy, dx = divmod(int(code), 2 * pixels + 1)
        out[members] = padded[members, dy : dy + height, dx : dx + width]
    return out


def flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror a random half of the images left to right."""
    out = images.copy()
    chosen = rng.random(len(images)) < 0.5
    out[chosen] = out[chosen, :, ::-1]
    return out


def erase(images: np.ndarray, rng: np.random.Generator, probability: float) -> np.ndarray:
    """Random erasing: with `probability`, blank one rectangle covering 2-25% of the image."""
    out = images.copy()
    n, height, width = images.shape
    area = rng.uniform(0.02, 0.25, n) * height * width
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3), n))
    rect_h = np.clip(np.round(np.sqrt(area * aspect)), 1, height).astype(int)
    rect_w = np.clip(np.round(np.sqrt(area / aspect)), 1, width).astype(int)
    top = (rng.random(n) * (height - rect_h + 1)).astype(int)
    left = (rng.random(n) * (width - rect_w + 1)).astype(int)
    rows = np.arange(height)[None, :, None]
    columns = np.arange(width)[None, None, :]
    inside = (
        (rows >= top[:, None, None]) & (rows < (top + rect_h)[:, None, None])
        & (columns >= left[:, None, None]) & (columns < (left + rect_w)[:, None, None])
        & (rng.random(n) < probability)[:, None, None]
    )
    out[inside] = 0
    return out


def augment(
    images: np.ndarray, rng: np.random.Generator, shift_pixels: int = 0, flip_images: bool = False,
    erase_probability: float = 0.0,
) -> np.ndarray:
    """The training recipe's augmentations, in order: shift, flip, erase."""
    out = shift(images, rng, shift_pixels) if shift_pixels else images
    if flip_images:
        out = flip(out, rng)
    if erase_probability:
        out = erase(out, rng, erase_probability)
    return out
