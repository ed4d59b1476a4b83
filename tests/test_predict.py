"""`Predictor` and `fmnist predict`: batching, per-file errors, the three output formats, --explain."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmnist import cli, data, photos
from fmnist.predict import Predictor, expand_inputs


@pytest.fixture(scope="module")
def test_images(real_data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    dataset = data.load(real_data_dir)
    return dataset.x_test[:40], dataset.y_test[:40]


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory, test_images) -> Path:
    """Eight generated photos of test images, plus a text file and an empty 'image'."""
    directory = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(11)
    for index, image in enumerate(test_images[0][:8]):
        photo = photos.make_photo(image, rng)
        (directory / f"photo{index}.{photos.EXTENSIONS[photo.format]}").write_bytes(photo.data)
    return directory


def test_predictor_api_on_arrays_paths_and_bytes(trained_run: Path, test_images, photo_dir: Path) -> None:
    predictor = Predictor.from_run(trained_run)
    images, _ = test_images
    expected = predictor.probabilities(images).argmax(axis=1)
    # 28x28 dataset images pass through the pipeline unchanged, so the classes are the same.
    assert [p.index for p in predictor.predict(list(images))] == expected.tolist()
    first = predictor.predict([sorted(photo_dir.iterdir())[0]], top_k=4)[0]
    assert len(first.top_k) == 4 and first.top_k[0]["label"] == first.label
    assert first.probability == first.top_k[0]["probability"] >= first.top_k[1]["probability"]
    assert first.label == data.CLASS_NAMES[first.index]


def test_photos_look_like_the_images_they_were_made_from(trained_run: Path, test_images) -> None:
    predictor = Predictor.from_run(trained_run)
    images, _ = test_images
    rng = np.random.default_rng(5)
    made = [photos.make_photo(image, rng).data for image in images]
    seen = np.stack([photos_to_array(photo) for photo in made])
    assert np.abs(seen.astype(int) - images).mean() < 25  # out of 255
    agree = predictor.probabilities(seen).argmax(1) == predictor.probabilities(images).argmax(1)
    assert agree.mean() >= 0.8


def photos_to_array(photo: bytes) -> np.ndarray:
    from fmnist.preprocess import to_dataset_format

    return to_dataset_format(photo)


def with_bad_files(photo_dir: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "inputs"
    directory.mkdir()
    for path in photo_dir.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    (directory / "notes.txt").write_text("not an image")
    (directory / "empty.png").write_bytes(b"")
    return directory


def test_table_output_keeps_going_past_bad_files(
    trained_run: Path, photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    inputs = with_bad_files(photo_dir, tmp_path)
    assert cli.main(["predict", str(trained_run), str(inputs), str(tmp_path / "missing.jpg")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 11  # 8 photos, 2 bad files, 1 missing path
    assert sum("error:" in line for line in lines) == 3
    assert any("notes.txt" in line and "not an image" in line for line in lines)
    assert any("empty.png" in line and "empty" in line for line in lines)
    assert all(any(name in line for name in data.CLASS_NAMES) for line in lines if "error:" not in line)


def test_json_output_has_an_error_object_per_bad_file(
    trained_run: Path, photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    inputs = with_bad_files(photo_dir, tmp_path)
    assert cli.main(["predict", str(trained_run), str(inputs), "--format", "json", "--top-k", "2"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 10
    errors = [row for row in rows if "error" in row]
    assert {Path(row["file"]).name for row in errors} == {"notes.txt", "empty.png"}
    good = [row for row in rows if "error" not in row]
    assert all(len(row["top_k"]) == 2 and 0 <= row["probability"] <= 1 for row in good)


def test_csv_output_and_a_clean_exit_when_every_file_reads(
    trained_run: Path, photo_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert cli.main(["predict", str(trained_run), str(photo_dir / "*"), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 8
    assert all(row["label"] in data.CLASS_NAMES and row["error"] == "" for row in rows)
    assert all(row["top_k"].count(":") == 3 for row in rows)


def test_explain_writes_what_the_model_sees(
    trained_run: Path, photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = sorted(photo_dir.iterdir())[0]
    assert cli.main(["predict", str(trained_run), str(first), "--explain", str(tmp_path / "seen")]) == 0
    written = tmp_path / "seen" / f"{first.name}.png"
    with Image.open(written) as picture:
        picture.load()
        assert picture.width > 600


def test_inputs_expand_directories_and_globs(photo_dir: Path, tmp_path: Path) -> None:
    files, missing = expand_inputs([str(photo_dir), str(photo_dir / "photo1.*"), str(tmp_path / "x*.png")])
    assert len(files) == 9 and len(missing) == 1
    assert "no file matches" in missing[0].error


def test_explain_never_overwrites_a_file_of_the_same_name(
    trained_run: Path, photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = sorted(photo_dir.iterdir())[0]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / first.name).write_bytes(first.read_bytes())
    seen = tmp_path / "seen"
    argv = ["predict", str(trained_run), str(tmp_path / "a"), str(tmp_path / "b"), "--explain", str(seen)]
    assert cli.main(argv) == 0
    assert sorted(p.name for p in seen.iterdir()) == [f"{first.name}-2.png", f"{first.name}.png"]
