"""End to end on the real dataset: the run folder, determinism, resume after kill -9, both backends."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SMALL, run_cli
from fmnist import cli, runs

PROBABILITIES = """
import sys, numpy as np
from pathlib import Path
from fmnist import data, models, runs
models.select_backend("mlp", sys.argv[2])
model = runs.load_model(Path(sys.argv[1]))
np.save(sys.argv[3], models.compile_predict(model)(data.load().x_test[:500]))
"""


def probabilities_on(backend: str, run_dir: Path, out: Path) -> np.ndarray:
    """Test-set probabilities of a saved run, computed in a fresh process on `backend`."""
    subprocess.run(
        [sys.executable, "-c", PROBABILITIES, str(run_dir), backend, str(out)],
        check=True, capture_output=True, timeout=300,
    )
    return np.load(out)


@pytest.fixture
def run_a(trained_run: Path) -> Path:
    return trained_run


def test_the_run_folder_is_complete(run_a: Path) -> None:
    assert not runs.partial_path(run_a).exists()
    names = {path.name for path in run_a.iterdir()}
    assert names == {
        runs.MODEL_FILE, runs.METADATA_FILE, runs.HISTORY_FILE, runs.REPORT_FILE, *runs.FIGURES.values()
    }
    for figure in runs.FIGURES.values():
        with Image.open(run_a / figure) as image:
            image.load()  # decodes the whole PNG
            assert image.width > 300 and image.height > 200

    metadata = json.loads((run_a / runs.METADATA_FILE).read_text())
    for key in (
        "config", "seed", "backend", "versions", "class_names", "input", "data", "split",
        "metrics", "timings", "git_commit", "parameters", "selection",
    ):
        assert key in metadata, key
    assert metadata["backend"] == "jax" and metadata["config"]["epochs"] == 3
    assert metadata["versions"]["keras"].startswith("3.")
    assert metadata["split"] == {
        **metadata["split"], "method": "last", "fit_images": 4800, "validation_images": 1200,
    }
    assert set(metadata["data"]["sha256"]) == {
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
    }
    test = metadata["metrics"]["test"]
    assert test["images"] == 1000
    assert test["accuracy"] > 0.7  # chance is 0.1; 3 epochs on 4,800 images reach ~0.8
    assert len(test["per_class"]) == 10 and np.sum(test["confusion_matrix"]) == 1000

    with open(run_a / runs.HISTORY_FILE, newline="") as file:
        history = list(csv.DictReader(file))
    assert [int(float(row["epoch"])) for row in history] == [1, 2, 3]
    assert float(history[-1]["loss"]) < float(history[0]["loss"])

    page = (run_a / runs.REPORT_FILE).read_text()
    assert page.count("data:image/png;base64,") == 3 and "Ankle boot" in page
    assert f"{test['accuracy']:.2%}" in page
    assert f"<title>fmnist run {run_a.name}</title>" in page


def test_training_on_jax_does_not_import_tensorflow(run_a: Path) -> None:
    assert "tensorflow" not in sys.modules


def test_same_seed_gives_identical_metrics(run_a: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    assert cli.main(["train", "--out", str(out), "--epochs", "3", *SMALL]) == 0
    a, b = (json.loads((d / runs.METADATA_FILE).read_text()) for d in (run_a, out))
    assert a["metrics"] == b["metrics"]
    assert [r["loss"] for r in _history(run_a)] == [r["loss"] for r in _history(out)]


def test_resume_after_kill_finishes_as_if_never_stopped(
    run_a: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "fmnist", "train", "--out", str(out), "--epochs", "3", *SMALL],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("epoch 1/3"):
            os.kill(process.pid, signal.SIGKILL)  # the checkpoint of epoch 1 is on disk by now
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    partial = runs.partial_path(out)
    assert partial.is_dir() and not out.exists()  # a killed run never looks finished
    assert (partial / runs.CHECKPOINT_FILE).is_file()
    with np.load(partial / runs.CHECKPOINT_FILE) as checkpoint:
        done = len(json.loads(checkpoint["history"].tobytes()))  # epochs completed before the kill
    assert done >= 1

    capsys.readouterr()
    assert cli.main(["train", "--resume", str(partial)]) == 0
    resumed_output = capsys.readouterr().out
    assert f"epoch {done}/3" not in resumed_output  # it continued, not restarted
    assert done == 3 or f"epoch {done + 1}/3" in resumed_output
    assert out.is_dir() and not partial.exists()
    resumed, uninterrupted = (json.loads((d / runs.METADATA_FILE).read_text()) for d in (out, run_a))
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert [r["loss"] for r in _history(out)] == [r["loss"] for r in _history(run_a)]


def test_resume_refuses_a_finished_run(run_a: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", "--resume", str(run_a)]) == 1
    assert "finished run" in capsys.readouterr().err


def test_evaluate_rescores_the_saved_model(run_a: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run_a, copy)
    recorded = json.loads((copy / runs.METADATA_FILE).read_text())["metrics"]["test"]
    (copy / runs.REPORT_FILE).unlink()
    assert cli.main(["evaluate", str(copy)]) == 0
    assert f"test accuracy {recorded['accuracy']:.4f}" in capsys.readouterr().out
    assert (copy / runs.REPORT_FILE).is_file()
    assert json.loads((copy / runs.METADATA_FILE).read_text())["metrics"]["test"] == recorded


def test_views_are_compared_on_the_validation_split(run_a: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fmnist import data, experiment, models

    comparison = experiment.compare_views(run_a)
    rows = comparison["rows"]
    assert comparison["validation_images"] == 1200 and comparison["saved_views"] == 1
    assert [row["views"] for row in rows] == [1, 2, 5, 6, 6, 10, 18]
    # One view is the saved model itself, as scored on validation when it was trained.
    recorded = runs.read_metadata(run_a)["metrics"]["validation"]
    assert rows[0]["accuracy"] == pytest.approx(recorded["accuracy"], abs=1e-9)
    # The recipe's 10 views are what `for_inference` averages (the oracle, built independently).
    x_val, y_val = data.load().x_train[4800:6000], data.load().y_train[4800:6000]
    averaged = models.for_inference(runs.load_model(run_a), "mlp", flip_average=True, shift_average=1)
    expected = np.mean(models.compile_predict(averaged)(x_val).argmax(axis=1) == y_val)
    assert rows[5]["accuracy"] == pytest.approx(expected, abs=1e-9)

    # A saved model that averages views is compared through the network inside it.
    copy = tmp_path / "averaged"
    shutil.copytree(run_a, copy)
    runs.save_model(copy, averaged)
    assert experiment.compare_views(copy)["rows"] == rows
    assert cli.main(["evaluate", str(copy), "--views"]) == 0
    out = capsys.readouterr().out
    assert "on its 1,200 validation images" in out and f"{rows[5]['accuracy']:.2%}" in out
    assert runs.read_metadata(copy)["metrics"] == runs.read_metadata(run_a)["metrics"]  # nothing rewritten


@pytest.mark.parametrize("damage", ["garbage", "foreign", "no-metadata"])
def test_a_model_that_is_not_ours_or_corrupt_is_a_clear_error(
    run_a: Path, tmp_path: Path, capsys: pytest.CaptureFixture, damage: str
) -> None:
    import keras

    copy = tmp_path / "copy"
    shutil.copytree(run_a, copy)
    if damage == "garbage":
        (copy / runs.MODEL_FILE).write_bytes(b"PK\x03\x04 not really a zip")
        expected = "is not a loadable Keras model"
    elif damage == "foreign":
        foreign = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
        foreign.save(copy / runs.MODEL_FILE)
        expected = "an fmnist model takes (None, 28, 28)"
    else:
        (copy / runs.METADATA_FILE).unlink()
        expected = "is not an fmnist run folder"
    assert cli.main(["evaluate", str(copy)]) == 1
    error = capsys.readouterr().err
    assert expected in error and error.count("\n") == 1


def test_tensorflow_backend_and_cross_backend_loading(run_a: Path, tmp_path: Path) -> None:
    out = tmp_path / "tf"
    result = run_cli("train", "--backend", "tensorflow", "--out", str(out), "--epochs", "1", *SMALL)
    assert result.returncode == 0, result.stdout + result.stderr
    metadata = json.loads((out / runs.METADATA_FILE).read_text())
    assert metadata["backend"] == "tensorflow"
    assert metadata["metrics"]["test"]["accuracy"] > 0.6

    # A model saved on either backend loads on the other and gives the same classes.
    for run_dir in (run_a, out):
        on_jax = probabilities_on("jax", run_dir, tmp_path / "jax.npy")
        on_tensorflow = probabilities_on("tensorflow", run_dir, tmp_path / "tf.npy")
        np.testing.assert_array_equal(on_jax.argmax(axis=1), on_tensorflow.argmax(axis=1))
        np.testing.assert_allclose(on_jax, on_tensorflow, atol=1e-5)


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / runs.HISTORY_FILE, newline="") as file:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(file)]


def test_a_failed_start_leaves_no_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "never"
    assert cli.main(["train", "--out", str(out), "--train-images", "1"]) == 1
    assert "leaves no images" in capsys.readouterr().err
    assert not out.exists() and not runs.partial_path(out).exists()


def test_an_unwritable_run_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli.main(["train", "--out", str(blocker / "run"), "--epochs", "1", *SMALL]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error and "a-file" in error


def test_newest_run_is_the_last_trained_and_partial_runs_are_not_evaluated(run_a: Path, tmp_path: Path) -> None:
    for name, created in (("older", "2026-01-01T00:00:00Z"), ("newer", "2026-06-01T00:00:00Z")):
        shutil.copytree(run_a, tmp_path / name)
        metadata = json.loads((tmp_path / name / runs.METADATA_FILE).read_text())
        runs.write_metadata(tmp_path / name, {**metadata, "created": created, "finished": created})
    (tmp_path / "older" / runs.METADATA_FILE).touch()  # touched last, still older
    assert runs.newest(tmp_path) == tmp_path / "newer"
    # A run that started earlier but finished later is the newer one.
    metadata = json.loads((tmp_path / "older" / runs.METADATA_FILE).read_text())
    runs.write_metadata(tmp_path / "older", {**metadata, "finished": "2026-07-01T00:00:00Z"})
    assert runs.newest(tmp_path) == tmp_path / "older"
    shutil.copytree(run_a, tmp_path / "x.partial")
    assert cli.main(["evaluate", str(tmp_path / "x.partial")]) == 1


def test_a_run_on_every_training_image_has_no_validation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fmnist import config, experiment

    settings = config.TrainConfig(epochs=2, validation_split=0.0, train_images=3000, test_images=500)
    run_dir = experiment.train_run(settings, out=tmp_path / "all")
    metadata = runs.read_metadata(run_dir)
    assert metadata["split"]["fit_images"] == 3000 and metadata["split"]["validation_images"] == 0
    assert set(metadata["metrics"]) == {"test"} and metadata["metrics"]["test"]["accuracy"] > 0.5
    with open(run_dir / runs.HISTORY_FILE, newline="") as file:
        assert next(csv.reader(file)) == ["epoch", "loss", "accuracy", "seconds"]
    assert "validation accuracy<b>n/a</b>" in (run_dir / runs.REPORT_FILE).read_text()
    with Image.open(run_dir / runs.FIGURES["curves"]) as image:
        image.load()
    # Nor validation images to compare test-time views on: a clear error, not the test set.
    assert cli.main(["evaluate", str(run_dir), "--views"]) == 1
    assert "validation_split = 0" in capsys.readouterr().err
