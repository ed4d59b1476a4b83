"""The run folder contract: where a run lives, and saving and loading it atomically.

A run folder holds everything that evaluation, prediction and serving need:

    model.keras           the trained Keras model (raw uint8 images in, probabilities out)
    metadata.json         resolved config, seed, backend, versions, classes, input spec,
                          data checksums, split, metrics, timings, git commit
    history.csv           one row per epoch
    curves.png            training and validation accuracy and loss
    confusion_matrix.png  test-set confusion matrix
    predictions.png       test images with predicted and true class and probability bars
    report.html           one self-contained page with the figures and metrics

While training, the folder is `<name>.partial` and holds a `checkpoint.npz`;
when the run is complete it is renamed to `<name>`. A killed run therefore
never looks finished, and `fmnist train --resume <name>.partial` continues it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmnist import FmnistError

if TYPE_CHECKING:
    import keras

PARTIAL = ".partial"
MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
HISTORY_FILE = "history.csv"
CHECKPOINT_FILE = "checkpoint.npz"
FIGURES = {
    "curves": "curves.png",
    "confusion_matrix": "confusion_matrix.png",
    "predictions": "predictions.png",
}
REPORT_FILE = "report.html"
FORMAT_VERSION = 1  # of the run folder layout


def default_dir(root: Path, model: str) -> Path:
    """`root/<UTC time>-<model>`, unique even for runs started in the same second."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    candidate = root / f"{stamp}-{model}"
    number = 2
    while candidate.exists() or partial_path(candidate).exists():
        candidate = root / f"{stamp}-{model}-{number}"
        number += 1
    return candidate


def newest(root: Path) -> Path:
    """The finished run folder under `root` that finished training last (by its recorded times)."""
    created = {}
    for folder in root.glob("*"):
        if folder.name.endswith(PARTIAL) or not (folder / MODEL_FILE).is_file():
            continue
        try:
            metadata = read_metadata(folder)
        except FmnistError:
            continue
        stamp = metadata.get("finished") or metadata.get("created")
        if isinstance(stamp, str):
            created[folder] = stamp
    if not created:
        raise FmnistError(f"no finished run under {root}/; train one first (fmnist train, or make serve)")
    return max(created, key=lambda folder: (created[folder], folder.name))


def partial_path(final: Path) -> Path:
    return final.with_name(final.name + PARTIAL)


def start(final: Path) -> Path:
    """Create the in-progress folder for a run that will end up at `final`."""
    if final.exists():
        raise FmnistError(f"run folder {final} already exists; choose another --out")
    partial = partial_path(final)
    try:
        partial.mkdir(parents=True)
    except FileExistsError:
        raise FmnistError(
            f"{partial} exists: an unfinished run; continue it with --resume {partial} "
            "or remove it"
        ) from None
    return partial


def find_partial(path: Path) -> Path:
    """The in-progress folder for `--resume PATH` (PATH may omit the .partial suffix)."""
    for candidate in (path, partial_path(path)):
        if candidate.name.endswith(PARTIAL) and (candidate / METADATA_FILE).is_file():
            return candidate
    if (path / MODEL_FILE).is_file() and not path.name.endswith(PARTIAL):
        raise FmnistError(f"{path} is a finished run; there is nothing to resume")
    raise FmnistError(f"{path} is not an unfinished run folder (no {path.name}{PARTIAL}/{METADATA_FILE})")


def finish(partial: Path) -> Path:
    """Rename a completed in-progress folder to its final name."""
    (partial / CHECKPOINT_FILE).unlink(missing_ok=True)
    final = partial.with_name(partial.name.removesuffix(PARTIAL))
    os.rename(partial, final)
    return final


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file under a temporary name, then rename it into place."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_metadata(directory: Path, metadata: dict[str, Any]) -> None:
    write_bytes(directory / METADATA_FILE, json.dumps(metadata, indent=2).encode() + b"\n")


def read_metadata(directory: Path) -> dict[str, Any]:
    path = directory / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FmnistError(f"{directory} is not an fmnist run folder (no {METADATA_FILE})") from None
    except (OSError, ValueError) as error:
        raise FmnistError(f"{path} is unreadable or not JSON: {error}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != "fmnist-run":
        raise FmnistError(f"{path} is not fmnist run metadata")
    return metadata


def write_history(directory: Path, history: Sequence[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]) if history else ["epoch"])
    writer.writeheader()
    writer.writerows(history)
    write_bytes(directory / HISTORY_FILE, buffer.getvalue().encode())


def save_model(directory: Path, model: keras.Model) -> None:
    temporary = directory / f".tmp-{MODEL_FILE}"  # Keras insists on the .keras suffix
    model.save(temporary)
    os.replace(temporary, directory / MODEL_FILE)


def load_model(directory: Path) -> keras.Model:
    """Load a run's model in Keras's safe mode, with a clear error if it is not ours."""
    import keras

    import fmnist.layers  # noqa: F401  (registers fmnist's own layers for loading)

    read_metadata(directory)
    path = directory / MODEL_FILE
    if not path.is_file():
        raise FmnistError(f"{directory} has no {MODEL_FILE}")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad file
        raise FmnistError(f"{path} is not a loadable Keras model: {str(error).splitlines()[0]}") from None
    if tuple(model.input_shape[1:]) != (28, 28) or tuple(model.output_shape[1:]) != (10,):
        raise FmnistError(
            f"{path} takes {model.input_shape} and returns {model.output_shape}; "
            "an fmnist model takes (None, 28, 28) and returns (None, 10)"
        )
    return model
