"""One library function per CLI workflow: train a run, re-evaluate a run, compare its test-time views.

This is the glue between the stages (data -> models -> train -> run folder ->
evaluate / plots / report); each stage's logic lives in its own module.
The Keras backend must already be chosen (`models.select_backend`) before
this module is imported, because it imports Keras.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from fmnist import FmnistError, data, environment, evaluate, models, plots, report, runs, train
from fmnist.config import TrainConfig, from_dict

PREDICTION_GRID_IMAGES = 15  # the first test images, shown in predictions.png


def train_run(
    config: TrainConfig,
    out: Path | None = None,
    runs_root: Path = Path("runs"),
    data_dir: Path | None = None,
    resume: Path | None = None,
) -> Path:
    """Train `config` (or continue the unfinished run `resume`) and return the finished run folder."""
    started = time.perf_counter()
    if resume is not None:
        partial = runs.find_partial(resume)
        metadata = runs.read_metadata(partial)
        config = from_dict(metadata["config"])
        if metadata["backend"] != keras.backend.backend():
            raise FmnistError(
                f"{partial} was trained on {metadata['backend']}; resume it with "
                f"--backend {metadata['backend']}"
            )
    else:
        metadata = _new_metadata(config)

    # Everything that can fail on the user's input (the data, the split) is done
    # before a run folder exists, so a failed start leaves nothing to clean up.
    dataset = data.load(data_dir)
    x_train, x_fit, y_fit, x_val, y_val = _training_split(config, dataset)
    x_test, y_test = dataset.x_test[: config.test_images], dataset.y_test[: config.test_images]
    metadata["data"] = {
        "source": str(dataset.source),
        "sha256": dataset.sha256,
        "train_images": len(x_train),
        "test_images": len(x_test),
    }
    metadata["split"] = {
        "method": "last",
        "description": "the last validation_split of the training images, as Keras's validation_split"
        if len(x_val) else "none: every training image is trained on (validation_split = 0)",
        "fit_images": len(x_fit),
        "validation_images": len(x_val),
        "validation_class_counts": np.bincount(y_val, minlength=len(data.CLASS_NAMES)).tolist(),
    }
    if resume is None:
        partial = runs.start(out or runs.default_dir(runs_root, config.model))
    print(f"run folder: {partial}  (resume with: fmnist train --resume {partial})", flush=True)
    runs.write_metadata(partial, metadata)
    data_seconds = time.perf_counter() - started

    keras.utils.set_random_seed(config.seed)
    model = models.build(config.model, config.precision)
    metadata["parameters"] = models.count_parameters(model)
    fit_started = time.perf_counter()
    history = train.fit(
        config, model, x_fit, y_fit, x_val, y_val, checkpoint=partial / runs.CHECKPOINT_FILE
    )
    fit_seconds = time.perf_counter() - fit_started
    model = models.for_inference(  # what is saved, scored and served
        model, config.model, config.flip_average, config.shift_average
    )
    metadata["selection"] = _selection(config, history)
    predict = models.compile_predict(model)  # one compiled function for validation and test
    metadata["metrics"] = {"validation": _validation_metrics(predict, x_val, y_val)} if len(x_val) else {}
    metadata["timings"] = {
        "data_seconds": data_seconds,
        "fit_seconds": fit_seconds,
        "epoch_seconds": [row["seconds"] for row in history],
    }
    runs.save_model(partial, model)
    runs.write_history(partial, history)
    metadata["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _score_and_report(partial, metadata, history, predict, x_test, y_test)
    final = runs.finish(partial)
    accuracy = metadata["metrics"]["test"]["accuracy"]
    print(f"test accuracy {accuracy:.4f} on {len(x_test)} images; run folder: {final}", flush=True)
    return final


def evaluate_run(run_dir: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """Re-score a finished run on the test set; rewrite its metrics, plots and report."""
    _refuse_unfinished(run_dir)
    metadata = runs.read_metadata(run_dir)
    model = runs.load_model(run_dir)
    config = from_dict(metadata["config"])
    dataset = data.load(data_dir)
    history = _read_history(run_dir)
    _score_and_report(
        run_dir, metadata, history, models.compile_predict(model),
        dataset.x_test[: config.test_images], dataset.y_test[: config.test_images],
    )
    return metadata["metrics"]["test"]


def compare_views(run_dir: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """Score a run's network on its validation split averaged over each set of test-time views.

    The evidence for a recipe's `flip_average` and `shift_average`: the
    network inside the saved model (without its own averaging) predicts each
    view once, the image or its mirror image shifted by s pixels (s the
    run's `shift_average`, else 1), and each set of views averages their
    probabilities. It never looks at the test set, so a run trained on every
    image (`validation_split = 0`) has nothing to compare on.
    """
    _refuse_unfinished(run_dir)
    config = from_dict(runs.read_metadata(run_dir)["config"])
    if not config.validation_split:
        raise FmnistError(
            f"{run_dir} trained on every training image (validation_split = 0), so it has no validation "
            f"images to compare views on; train one with --validation-split 0.2"
        )
    network = models.network_of(runs.load_model(run_dir))
    _, _, _, x_val, y_val = _training_split(config, data.load(data_dir))

    from fmnist.layers import Mirror, Shift

    predict = models.compile_predict(network)
    s = config.shift_average or 1
    originals = {False: x_val, True: keras.ops.convert_to_numpy(Mirror()(x_val))}
    probabilities = {  # (mirrored, dy, dx) -> (n, 10), every view predicted once
        (mirrored, dy, dx): predict(keras.ops.convert_to_numpy(Shift(dy, dx)(original)) if dy or dx else original)
        for mirrored, original in originals.items()
        for dy in (-s, 0, s)
        for dx in (-s, 0, s)
    }
    centre, sideways, updown = [(0, 0)], [(0, -s), (0, s)], [(-s, 0), (s, 0)]
    image, both = [False], [False, True]
    view_sets = {  # description -> (which originals, their offsets)
        "the image alone": (image, centre),
        "the image and its mirror image (flip_average)": (both, centre),
        f"the image, also shifted {s} px up, down, left and right (shift_average = {s}, no flip)":
            (image, centre + updown + sideways),
        f"both, also shifted {s} px left and right": (both, centre + sideways),
        f"both, also shifted {s} px up and down": (both, centre + updown),
        f"both, also shifted {s} px up, down, left and right (flip_average and shift_average = {s})":
            (both, centre + updown + sideways),
        f"both, also shifted to all 8 neighbours {s} px away": (both, [(y, x) for y in (-s, 0, s) for x in (-s, 0, s)]),
    }
    rows = []
    for description, (mirrored, offsets) in view_sets.items():
        keys = [(m, dy, dx) for m in mirrored for dy, dx in offsets]
        scores = evaluate.score(y_val, np.mean([probabilities[key] for key in keys], axis=0), data.CLASS_NAMES)
        rows.append({"views": len(keys), "description": description,
                     "accuracy": scores["accuracy"], "loss": scores["loss"]})
    return {
        "validation_images": len(x_val),
        "saved_views": (2 if config.flip_average else 1) * (5 if config.shift_average else 1),
        "rows": rows,
    }


def _training_split(config: TrainConfig, dataset: data.Dataset) -> tuple[np.ndarray, ...]:
    """(x_train, x_fit, y_fit, x_val, y_val): the run's training images and its split, the same every time."""
    x_train, y_train = dataset.x_train[: config.train_images], dataset.y_train[: config.train_images]
    return (x_train, *data.split(x_train, y_train, config.validation_split))


def _refuse_unfinished(run_dir: Path) -> None:
    if run_dir.name.endswith(runs.PARTIAL):
        raise FmnistError(f"{run_dir} is an unfinished run; finish it first with fmnist train --resume {run_dir}")


def _score_and_report(
    directory: Path,
    metadata: dict[str, Any],
    history: list[dict[str, float]],
    predict: Any,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> None:
    """Score the test set once with `predict` (`models.compile_predict`), then write the figures,
    the report and the metadata."""
    started = time.perf_counter()
    probabilities = predict(x_test)
    test = evaluate.score(y_test, probabilities, data.CLASS_NAMES)
    metadata["metrics"]["test"] = test
    metadata["evaluated_backend"] = keras.backend.backend()
    metadata["timings"]["evaluate_seconds"] = time.perf_counter() - started

    started = time.perf_counter()
    shown = slice(0, PREDICTION_GRID_IMAGES)
    figures = {
        "curves": plots.learning_curves(history),
        "confusion_matrix": plots.confusion_matrix(np.array(test["confusion_matrix"]), data.CLASS_NAMES),
        "predictions": plots.prediction_grid(
            x_test[shown], y_test[shown], probabilities[shown], data.CLASS_NAMES
        ),
    }
    for key, figure in figures.items():
        plots.save(figure, directory / runs.FIGURES[key])
    runs.write_bytes(
        directory / runs.REPORT_FILE,
        report.render(metadata, directory, runs.FIGURES).encode(),
    )
    metadata["timings"]["report_seconds"] = time.perf_counter() - started
    runs.write_metadata(directory, metadata)


def _selection(config: TrainConfig, history: list[dict[str, float]]) -> str:
    """How the saved model was chosen, in words."""
    if not config.time_limit:
        return "the model after the last epoch (no early stopping)"
    trained_under = train.planned_epochs(config, history[:-1])  # the plan the last epoch trained under
    if trained_under == len(history):
        return (
            f"the model after the last epoch (no early stopping); {len(history)} of up to {config.epochs} epochs "
            f"fit in the time limit of {config.time_limit:g} minutes, the learning-rate schedule fitted to them"
        )
    return (
        f"the model after epoch {len(history)}: the time limit of {config.time_limit:g} minutes ended training "
        f"before its learning-rate schedule, planned for {trained_under} epochs, did"
    )


def _validation_metrics(predict: Any, x_val: np.ndarray, y_val: np.ndarray) -> dict[str, float]:
    """The saved model's validation loss and accuracy (the history's last row is the training model's)."""
    probabilities = predict(x_val)
    loss = keras.losses.CategoricalCrossentropy()(np.eye(models.NUM_CLASSES, dtype=np.float32)[y_val], probabilities)
    return {"loss": float(loss), "accuracy": float(np.mean(probabilities.argmax(axis=1) == y_val))}


def _read_history(directory: Path) -> list[dict[str, float]]:
    import csv

    try:
        with open(directory / runs.HISTORY_FILE, newline="") as file:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(file)]
    except (OSError, ValueError) as error:
        raise FmnistError(f"{directory / runs.HISTORY_FILE} is missing or unreadable: {error}") from None


def _new_metadata(config: TrainConfig) -> dict[str, Any]:
    return {
        "format": "fmnist-run",
        "format_version": runs.FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": config.model,
        "config": config.to_dict(),
        "seed": config.seed,
        "backend": keras.backend.backend(),
        "versions": environment.versions(),
        "machine": environment.machine(),
        "git_commit": _git_commit(),
        "class_names": list(data.CLASS_NAMES),
        "input": {
            "shape": [data.IMAGE_SIZE, data.IMAGE_SIZE],
            "dtype": "uint8",
            "range": [0, 255],
            "layout": "a light garment on a black background, centred, as the dataset stores it",
            "scaling": "inside the model (Rescaling 1/255)",
        },
        "output": "probabilities of the classes in class_names order",
    }


def _git_commit() -> str | None:
    """The commit of the fmnist source tree, with -dirty if it has local changes."""
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
