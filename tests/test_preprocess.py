"""The user-image pipeline: hand-made images, pass-through of real images, every format and mode, bad input."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmnist import data, photos, preprocess
from fmnist.preprocess import ImageError, to_dataset_format


def encode(image: Image.Image, file_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=file_format, **options)
    return buffer.getvalue()


def extent(array: np.ndarray, threshold: int = 128) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the bright pixels."""
    rows = np.flatnonzero((array > threshold).any(axis=1))
    columns = np.flatnonzero((array > threshold).any(axis=0))
    return rows[0], rows[-1], columns[0], columns[-1]


def square(size: int, side: int, fill: int, background: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    canvas = np.full((size, size), background, np.uint8)
    top, left = offset
    canvas[top : top + side, left : left + side] = fill
    return canvas


def test_white_square_on_black_fills_the_frame() -> None:
    result = to_dataset_format(square(300, 100, 255, 0, offset=(20, 150)))
    assert result.shape == (28, 28) and result.dtype == np.uint8
    assert extent(result) == (0, 27, 0, 27)  # trimmed and enlarged: longest edge 28
    assert result.max() == 255 and result[14, 14] == 255


def test_black_square_on_white_is_negated_and_centred() -> None:
    result = to_dataset_format(Image.fromarray(square(400, 120, 0, 255, offset=(250, 30))))
    assert result[14, 14] == 255  # the garment is now light
    assert extent(result) == (0, 27, 0, 27)


def test_a_wide_garment_is_centred_vertically_with_its_aspect_ratio() -> None:
    canvas = np.full((300, 500), 250, np.uint8)
    canvas[200:260, 40:320] = 30  # 280 x 60: dark, wide, off-centre, on white
    top, bottom, left, right = extent(to_dataset_format(canvas))
    assert (left, right) == (0, 27)
    assert bottom - top + 1 == 6  # 28 * 60 / 280
    assert abs((top + bottom) / 2 - 13.5) <= 0.5  # centred


def test_a_transparent_png_gets_the_background_it_implies() -> None:
    rgba = np.zeros((200, 200, 4), np.uint8)
    rgba[50:150, 60:120] = (20, 30, 40, 255)  # a dark opaque garment; the rest is transparent
    result = to_dataset_format(encode(Image.fromarray(rgba, "RGBA")))
    assert result[14, 14] == 255 and result[14, 0] == 0  # light on black, like the dataset
    top, bottom, left, right = extent(result)
    assert (top, bottom) == (0, 27) and right - left + 1 == 17  # 28 * 60 / 100, rounded


def test_an_exif_rotated_jpeg_is_turned_upright() -> None:
    upright = np.full((300, 200, 3), 255, np.uint8)
    upright[20:280, 70:130] = 0  # a tall dark bar
    stored = Image.fromarray(upright).rotate(90, expand=True)  # pixels stored lying down
    exif = Image.Exif()
    exif[photos.EXIF_ORIENTATION] = 6  # "rotate 90 clockwise to view"
    result = to_dataset_format(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    top, bottom, left, right = extent(result)
    assert (top, bottom) == (0, 27)  # tall, as it was photographed
    assert right - left + 1 <= 8


def test_real_test_images_pass_through_unchanged(real_data_dir: Path) -> None:
    images = data.load(real_data_dir).x_test[:300]
    for image in images:
        np.testing.assert_array_equal(to_dataset_format(image), image)
        np.testing.assert_array_equal(to_dataset_format(encode(Image.fromarray(image))), image)
    rgb = np.repeat(images[0][..., None], 3, axis=2)
    np.testing.assert_array_equal(to_dataset_format(encode(Image.fromarray(rgb), "BMP")), images[0])


@pytest.mark.parametrize("file_format, mode", [(f, m) for f, m, _ in photos.ENCODINGS])
def test_every_format_and_mode_gives_a_dataset_image(file_format: str, mode: str) -> None:
    garment = square(28, 20, 220, 0, offset=(4, 4))
    garment[10:18, 10:18] = 90
    photo = photos.make_photo(garment, np.random.default_rng(3), encoding=(file_format, mode))
    with Image.open(io.BytesIO(photo.data)) as image:
        assert image.format == file_format
    result = to_dataset_format(photo.data)
    assert result.shape == (28, 28) and result.dtype == np.uint8
    assert result[0, 0] < 40 and result.max() == 255
    if mode != "1":  # a bilevel image keeps only the outline's worth of shading
        assert result[14, 14] < result[6, 6]  # the darker patch stays darker than the garment around it


def test_file_objects_paths_and_bytes_agree(tmp_path: Path) -> None:
    encoded = encode(Image.fromarray(square(100, 40, 0, 255, offset=(10, 30))))
    path = tmp_path / "garment.png"
    path.write_bytes(encoded)
    expected = to_dataset_format(encoded)
    np.testing.assert_array_equal(to_dataset_format(path), expected)
    np.testing.assert_array_equal(to_dataset_format(str(path)), expected)
    np.testing.assert_array_equal(to_dataset_format(io.BytesIO(encoded)), expected)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels (a decompression bomb's shape)."""
    original = encode(Image.new("L", (8, 8)))
    start = original.index(b"IHDR")
    header = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + original[start + 12 : start + 17]
    return original[: start - 4] + original[start - 4 : start] + header + zlib.crc32(header).to_bytes(4, "big") + \
        original[start + 21 :]


@pytest.mark.parametrize(
    "payload, expected",
    [
        (b"", "the file is empty"),
        (b"just some text, not an image", "not an image in a supported format"),
        (b"%PDF-1.4\n1 0 obj << >> endobj\n", "not an image in a supported format"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image in a supported format"),
        (b"SIMPLE  =                    T" + b" " * 2850, "not an image in a supported format"),
        ("truncated", "truncated or corrupt"),
        ("bomb", "pixel limit"),
        ("huge bomb", "pixel limit"),
        ("flat", "no garment found"),
    ],
)
def test_bad_images_get_a_clear_error(payload: bytes | str, expected: str) -> None:
    if payload == "truncated":
        full = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)))
        payload = full[: len(full) // 2]
    elif payload == "bomb":
        payload = png_declaring(7_000, 7_000)  # 49 million pixels: over our limit, under Pillow's own
    elif payload == "huge bomb":
        payload = png_declaring(20_000, 20_000)  # 400 million: Pillow refuses it first
    elif payload == "flat":
        payload = encode(Image.new("RGB", (50, 40), (200, 120, 30)))
    with pytest.raises(ImageError) as caught:
        to_dataset_format(payload, name="upload.bin")
    message = str(caught.value)
    assert expected in message and message.startswith("upload.bin: ") and "\n" not in message


def test_files_over_the_byte_limit_are_refused_before_reading(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(encode(Image.new("L", (64, 64))))
    monkeypatch.setattr(preprocess, "MAX_BYTES", 10)
    with pytest.raises(ImageError, match="byte limit"):
        to_dataset_format(path)


def test_bad_arrays_are_refused() -> None:
    with pytest.raises(ImageError, match="shape"):
        to_dataset_format(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ImageError, match="within 0-255"):
        to_dataset_format(np.full((28, 28), np.nan))
