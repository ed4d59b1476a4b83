"""Realistic "user photos" made from dataset images: the dataset recipe run backwards.

Used by `fmnist bench photos` to measure how well prediction on people's own
photos holds up, and by the tests (a handful of photos). Each photo is one
dataset image, enlarged to 100-1000 pixels, placed off-centre on a canvas of
another aspect ratio, on a light (product photo), dark or transparent
background, tinted with a colour that keeps its luminance, with sensor noise,
then saved in one of the supported formats and modes, sometimes as a JPEG
whose pixels are rotated and whose EXIF tag says how to turn them back.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

# (format, mode) pairs a photo may be saved as, and how often.
ENCODINGS = (
    ("JPEG", "RGB", 30), ("PNG", "RGB", 12), ("PNG", "RGBA", 6), ("PNG", "L", 4), ("PNG", "LA", 3),
    ("PNG", "P", 3), ("PNG", "I;16", 3), ("PNG", "1", 1), ("JPEG", "L", 5), ("JPEG", "CMYK", 3),
    ("WEBP", "RGB", 8), ("WEBP", "RGBA", 3), ("BMP", "RGB", 4), ("GIF", "P", 4), ("TIFF", "RGB", 4),
    ("TIFF", "CMYK", 2), ("TIFF", "I;16", 2),
)
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the rotation (degrees, counter-clockwise) that undoes it.
ROTATIONS = {3: 180, 6: 270, 8: 90}


@dataclass(frozen=True)
class Photo:
    data: bytes  # the encoded file
    format: str
    mode: str
    background: str  # "light", "dark" or "transparent"
    orientation: int  # EXIF orientation tag, 1 = none
    width: int
    height: int


EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tif"}


def make_photo(
    image: np.ndarray,
    rng: np.random.Generator,
    canvas: tuple[int, int] | None = None,
    encoding: tuple[str, str] | None = None,
) -> Photo:
    """One realistic photo of the 28x28 dataset `image` (light garment on black).

    `canvas` (width, height) and `encoding` (format, mode) fix what is otherwise drawn at random.
    """
    names = [(f, m) for f, m, _ in ENCODINGS]
    weights = np.array([w for _, _, w in ENCODINGS], float)
    file_format, mode = encoding or names[rng.choice(len(names), p=weights / weights.sum())]
    background = rng.choice(["light", "dark", "transparent"], p=[0.6, 0.25, 0.15])
    if background == "transparent" and mode not in ("RGBA", "LA", "P"):
        mode = "RGBA" if file_format in ("PNG", "WEBP") else mode
        background = "transparent" if mode in ("RGBA", "LA", "P") else "light"

    # Enlarge the garment: its longest side becomes 60-90% of the canvas's.
    canvas_long = int(rng.integers(100, 1001))
    garment_long = int(canvas_long * rng.uniform(0.6, 0.9))
    aspect = rng.uniform(0.6, 1.0)  # short side / long side of the canvas
    canvas_w, canvas_h = (canvas_long, int(canvas_long * aspect))
    if rng.random() < 0.5:
        canvas_w, canvas_h = canvas_h, canvas_w
    if canvas is not None:
        canvas_w, canvas_h = canvas
        garment_long = int(max(canvas) * rng.uniform(0.6, 0.9))
    scale = min(garment_long / 28, min(canvas_w, canvas_h) / 28 * 0.95)
    size = max(28, int(round(28 * scale)))
    garment = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC), np.float32)
    garment = np.clip(garment, 0, 255) / 255.0  # 1 = garment, 0 = background, as in the dataset

    # Off-centre placement.
    top = int(rng.integers(0, canvas_h - size + 1))
    left = int(rng.integers(0, canvas_w - size + 1))
    coverage = np.zeros((canvas_h, canvas_w), np.float32)
    coverage[top : top + size, left : left + size] = garment

    # Luminance: a product photo is a dark garment on white; otherwise light on dark.
    if background == "dark":
        floor = rng.uniform(0, 30)
        luminance = floor + coverage * rng.uniform(180, 255 - floor)
    else:
        paper = rng.uniform(225, 255)
        luminance = paper - coverage * rng.uniform(150, paper)
    luminance += rng.normal(0, rng.uniform(0, 5), luminance.shape)

    # A colour tint that keeps the luminance (ITU-R 601 weights).
    tint = rng.uniform(0.6, 1.4, 3)
    tint /= tint @ np.array([0.299, 0.587, 0.114])
    rgb = np.clip(luminance[..., None] * tint, 0, 255).astype(np.uint8)
    picture = Image.fromarray(rgb, "RGB")
    if background == "transparent":
        alpha = np.clip(coverage * 4, 0, 1)  # opaque garment, see-through elsewhere
        picture.putalpha(Image.fromarray((alpha * 255).astype(np.uint8)))

    picture = _convert(picture, mode)
    orientation = 1
    if file_format == "JPEG" and rng.random() < 0.3:
        orientation = int(rng.choice(list(ROTATIONS)))
        # Store the pixels turned; the tag tells viewers how to turn them back.
        picture = picture.rotate(-ROTATIONS[orientation], expand=True)
    buffer = io.BytesIO()
    options: dict = {}
    if file_format == "JPEG":
        options["quality"] = int(rng.integers(70, 96))
        if orientation != 1:
            exif = Image.Exif()
            exif[EXIF_ORIENTATION] = orientation
            options["exif"] = exif.tobytes()
    elif file_format == "WEBP":
        options["quality"] = int(rng.integers(75, 96))
    picture.save(buffer, format=file_format, **options)
    return Photo(buffer.getvalue(), file_format, mode, str(background), orientation, canvas_w, canvas_h)


def _convert(picture: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        gray = np.asarray(picture.convert("L"), np.uint16) * 257
        return Image.fromarray(gray.astype(np.uint16))  # I;16
    if mode == "P":
        return picture.convert("RGBA" if picture.mode == "RGBA" else "RGB").quantize(256)
    if mode == "LA":
        return picture.convert("LA")
    return picture.convert(mode)
