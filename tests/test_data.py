"""The loader on synthetic IDX files: good, truncated, wrong magic, MNIST-like, wrong counts."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from fmnist import FmnistError, cli, data

TRAIN, TEST = 20, 10  # images in the synthetic files


def idx_payload(array: np.ndarray) -> bytes:
    magic = 0x803 if array.ndim == 3 else 0x801
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (TRAIN, 28, 28)),
        "train_labels": np.arange(TRAIN) % 10,
        "test_images": rng.integers(0, 256, (TEST, 28, 28)),
        "test_labels": np.arange(TEST) % 10,
    }


@pytest.fixture
def dataset_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of four small gzipped IDX files, with the loader's pinned specs swapped for theirs."""
    directory = tmp_path / "fashion"
    directory.mkdir()
    specs = {}
    for key, array in synthetic_arrays().items():
        name = data.FILES[key].name
        payload = idx_payload(array)
        (directory / f"{name}.gz").write_bytes(gzip.compress(payload))
        specs[key] = data.IdxFile(name, data.FILES[key].magic, len(array), hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(data, "FILES", specs)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return directory


def rewrite(directory: Path, key: str, payload: bytes, compress: bool = True) -> Path:
    path = directory / f"{data.FILES[key].name}.gz"
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def test_good_files_load_as_raw_uint8(dataset_dir: Path) -> None:
    dataset = data.load(dataset_dir)
    expected = synthetic_arrays()
    assert dataset.x_train.shape == (TRAIN, 28, 28) and dataset.x_train.dtype == np.uint8
    assert dataset.y_test.shape == (TEST,) and dataset.y_test.dtype == np.uint8
    np.testing.assert_array_equal(dataset.x_train, expected["train_images"])
    np.testing.assert_array_equal(dataset.y_test, expected["test_labels"])
    assert dataset.source == dataset_dir


def test_decoded_copy_is_reused_and_refreshed_when_the_source_changes(dataset_dir: Path) -> None:
    data.load(dataset_dir)
    copy = data.cache_dir() / "decoded" / data.FILES["train_images"].name
    assert copy.is_file()
    first = copy.stat().st_mtime_ns
    data.load(dataset_dir)
    assert copy.stat().st_mtime_ns == first  # read from the copy, not decoded again
    # A corrupted copy is never trusted: it is verified and decoded again.
    copy.write_bytes(b"garbage")
    np.testing.assert_array_equal(data.load(dataset_dir).x_train, synthetic_arrays()["train_images"])
    assert copy.stat().st_size == data.FILES["train_images"].payload_size


def test_uncompressed_files_are_accepted(dataset_dir: Path) -> None:
    for key in data.FILES:
        gz = dataset_dir / f"{data.FILES[key].name}.gz"
        (dataset_dir / data.FILES[key].name).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    assert data.load(dataset_dir).x_test.shape == (TEST, 28, 28)


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("truncated_gzip", "truncated or corrupt gzip"),
        ("short_payload", "bytes of data, expected"),
        ("wrong_magic", "IDX magic number"),
        ("wrong_count", "header says shape"),
        ("label_out_of_range", "out of range"),
        ("mnist_like", "not the Fashion-MNIST original"),
        ("empty", "too short"),
    ],
)
def test_bad_files_get_one_clear_line(dataset_dir: Path, damage: str, expected: str) -> None:
    arrays = synthetic_arrays()
    good = idx_payload(arrays["train_images"])
    if damage == "truncated_gzip":
        compressed = gzip.compress(good)
        path = rewrite(dataset_dir, "train_images", compressed[: len(compressed) // 2], compress=False)
    elif damage == "short_payload":
        path = rewrite(dataset_dir, "train_images", good[:-100])
    elif damage == "wrong_magic":
        path = rewrite(dataset_dir, "train_images", idx_payload(arrays["train_labels"]))
    elif damage == "wrong_count":
        path = rewrite(dataset_dir, "train_images", idx_payload(arrays["train_images"][:-1]))
    elif damage == "label_out_of_range":
        path = rewrite(dataset_dir, "train_labels", idx_payload(arrays["train_labels"] + 1))
    elif damage == "mnist_like":  # same format and sizes, different images
        path = rewrite(dataset_dir, "train_images", idx_payload(synthetic_arrays(seed=1)["train_images"]))
    else:
        path = rewrite(dataset_dir, "train_images", b"")
    with pytest.raises(FmnistError) as caught:
        data.load(dataset_dir)
    message = str(caught.value)
    assert expected in message
    assert str(path) in message  # names the file
    assert "--fetch" in message and "dataset-fashion-mnist" in message  # says how to fix it
    assert "\n" not in message


def test_missing_dataset_in_an_explicit_directory(tmp_path: Path) -> None:
    with pytest.raises(FmnistError, match="not found in --data-dir"):
        data.load(tmp_path / "nowhere")


def test_cli_reports_a_bad_dataset_in_one_line(dataset_dir: Path, capsys: pytest.CaptureFixture) -> None:
    rewrite(dataset_dir, "test_labels", b"not gzip at all", compress=False)
    assert cli.main(["data", "--data-dir", str(dataset_dir)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert "t10k-labels-idx1-ubyte.gz" in error


def mirror_of(directory: Path) -> str:
    return directory.as_uri() + "/"


def test_fetch_downloads_verified_files_from_the_first_working_mirror(dataset_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "downloaded"
    data.fetch(mirrors=[mirror_of(tmp_path / "no-such-mirror"), mirror_of(dataset_dir)], directory=target)
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{s.name}.gz" for s in data.FILES.values())
    assert data.load(target).x_train.shape == (TRAIN, 28, 28)


def test_a_bad_download_never_becomes_a_cached_file(dataset_dir: Path, tmp_path: Path) -> None:
    rewrite(dataset_dir, "train_images", idx_payload(synthetic_arrays(seed=1)["train_images"]))
    target = tmp_path / "downloaded"
    with pytest.raises(FmnistError, match="could not download train-images"):
        data.fetch(mirrors=[mirror_of(dataset_dir)], directory=target)
    assert not any(p.name.startswith("train-images") for p in target.iterdir())


def test_fetch_never_overwrites_a_file_that_is_there(dataset_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "downloaded"
    target.mkdir()
    placed = target / "train-images-idx3-ubyte.gz"
    placed.write_bytes(b"the user's own file")
    with pytest.raises(FmnistError, match="train-images-idx3-ubyte.gz"):
        data.fetch(mirrors=[mirror_of(dataset_dir)], directory=target)
    assert placed.read_bytes() == b"the user's own file"


def test_unreachable_mirrors_fail_with_a_clear_message(dataset_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FmnistError, match="check the network") as caught:
        data.fetch(mirrors=["http://127.0.0.1:9/"], directory=tmp_path / "downloaded")
    assert "\n" not in str(caught.value)


def test_split_holds_out_the_last_fraction() -> None:
    x = np.arange(100).reshape(100, 1, 1)
    y = np.arange(100) % 10
    x_fit, y_fit, x_val, y_val = data.split(x, y, 0.2)
    assert len(x_fit) == 80 and len(x_val) == 20
    np.testing.assert_array_equal(x_val.ravel(), np.arange(80, 100))
    with pytest.raises(FmnistError):
        data.split(x[:2], y[:2], 0.2)
    # 0: every image is for fitting, none held out.
    x_fit, y_fit, x_val, y_val = data.split(x, y, 0.0)
    np.testing.assert_array_equal(x_fit, x)
    assert x_val.shape == (0, 1, 1) and y_val.shape == (0,)


def test_the_real_dataset_verifies(real_data_dir: Path) -> None:
    dataset = data.load(real_data_dir)
    assert dataset.x_train.shape == (60_000, 28, 28) and dataset.x_test.shape == (10_000, 28, 28)
    assert np.bincount(dataset.y_train).tolist() == [6000] * 10
    assert np.bincount(dataset.y_test).tolist() == [1000] * 10
