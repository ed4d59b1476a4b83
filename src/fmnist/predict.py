"""`Predictor`: load a run, preprocess user images, batch inference, top-k.

    predictor = Predictor.from_run("runs/20261204T101500Z-mlp")
    predictor.predict(["shoe.jpg", open("bag.png", "rb").read()])  # -> [Prediction, ...]

Every image goes through `preprocess.to_dataset_format`, then all of them
through the model together, in batches: never one model call per image.
Choose the Keras backend (`models.select_backend`) before creating a Predictor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmnist import FmnistError, models, preprocess, runs
from fmnist.preprocess import ImageSource

BATCH_SIZE = 256  # images per compiled model call


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    probability: float
    top_k: list[dict[str, Any]]  # [{"label", "index", "probability"}, ...], most probable first

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "probability": self.probability, "top_k": self.top_k}


@dataclass(frozen=True)
class FileResult:
    """The outcome for one input file: a prediction, or the reason there is none."""

    file: str
    prediction: Prediction | None = None
    error: str | None = None
    seen: np.ndarray | None = field(default=None, repr=False)  # the 28x28 image the model saw


class Predictor:
    """A trained run, ready to classify images of any size and kind."""

    def __init__(self, model: Any, class_names: Sequence[str], metadata: dict[str, Any]) -> None:
        self.model = model
        self.class_names = list(class_names)
        self.metadata = metadata
        self._probabilities = models.compile_predict(model, batch_size=BATCH_SIZE)

    @classmethod
    def from_run(cls, run_dir: str | Path) -> Predictor:
        run_dir = Path(run_dir)
        metadata = runs.read_metadata(run_dir)
        return cls(runs.load_model(run_dir), metadata["class_names"], metadata)

    def warm(self) -> None:
        """Compile the model for every batch shape now, so that no request waits for it."""
        self._probabilities.warm()  # type: ignore[attr-defined]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Dataset-format images, uint8 (n, 28, 28) -> probabilities (n, classes)."""
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != (preprocess.SIZE, preprocess.SIZE):
            raise FmnistError(f"expected images of shape (n, 28, 28); received {images.shape}")
        return self._probabilities(images.astype(np.uint8))

    def predict(self, images: Iterable[ImageSource], top_k: int = 3) -> list[Prediction]:
        """Predict each image (a path, bytes, file object, PIL image or array) of any kind.

        Raises `preprocess.ImageError` if one cannot be read; `predict_files`
        reports such files one by one instead.
        """
        seen = np.stack([preprocess.to_dataset_format(image) for image in images])
        return self.top_k(self.probabilities(seen), top_k)

    def top_k(self, probabilities: np.ndarray, k: int = 3) -> list[Prediction]:
        k = max(1, min(k, len(self.class_names)))
        predictions = []
        for row in probabilities:
            order = np.argsort(-row, kind="stable")[:k]
            ranked = [
                {"label": self.class_names[i], "index": int(i), "probability": float(row[i])} for i in order
            ]
            predictions.append(Prediction(ranked[0]["label"], ranked[0]["index"], ranked[0]["probability"], ranked))
        return predictions

    def predict_files(
        self,
        paths: Sequence[Path],
        top_k: int = 3,
        progress: Callable[[int], None] | None = None,
    ) -> list[FileResult]:
        """Predict many files: decoded in parallel threads, scored in batches; bad files get an error."""

        def prepare(path: Path) -> np.ndarray | str:
            try:
                return preprocess.to_dataset_format(path, name=str(path))
            except preprocess.ImageError as error:
                return str(error)

        results: list[FileResult] = []
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for start in range(0, len(paths), BATCH_SIZE):
                batch = paths[start : start + BATCH_SIZE]
                prepared = list(pool.map(prepare, batch))
                good = [item for item in prepared if isinstance(item, np.ndarray)]
                predictions = iter(self.top_k(self.probabilities(np.stack(good)), top_k) if good else [])
                for path, item in zip(batch, prepared):
                    if isinstance(item, np.ndarray):
                        results.append(FileResult(str(path), next(predictions), seen=item))
                    else:
                        results.append(FileResult(str(path), error=item))
                if progress is not None:
                    progress(len(batch))
        return results


def expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[FileResult]]:
    """Files named, found in directories (recursively) or matched by globs; and inputs that matched nothing."""
    import glob

    files: list[Path] = []
    missing: list[FileResult] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            files.extend(found)
            if not found:
                missing.append(FileResult(text, error=f"{text}: the directory holds no files"))
        elif path.exists():
            files.append(path)
        elif any(character in text for character in "*?["):
            matched = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            files.extend(matched)
            if not matched:
                missing.append(FileResult(text, error=f"{text}: no file matches this pattern"))
        else:
            missing.append(FileResult(text, error=f"{text}: no such file or directory"))
    return files, missing


def format_results(results: Sequence[FileResult], style: str) -> str:
    """Results as a table (one line per file), a JSON array, or CSV."""
    import csv
    import io
    import json

    if style == "json":
        rows = [
            {"file": r.file, **r.prediction.to_dict()} if r.prediction else {"file": r.file, "error": r.error}
            for r in results
        ]
        return json.dumps(rows, indent=2)
    if style == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["file", "label", "index", "probability", "top_k", "error"])
        for r in results:
            if r.prediction:
                ranked = ";".join(f"{t['label']}:{t['probability']:.4f}" for t in r.prediction.top_k)
                writer.writerow([r.file, r.prediction.label, r.prediction.index,
                                 f"{r.prediction.probability:.4f}", ranked, ""])
            else:
                writer.writerow([r.file, "", "", "", "", r.error])
        return buffer.getvalue().rstrip("\n")
    width = max([len(r.file) for r in results] + [4])
    lines = []
    for r in results:
        if r.prediction:
            others = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in r.prediction.top_k[1:])
            line = f"{r.file:{width}s}  {r.prediction.label:12s} {r.prediction.probability:6.1%}"
            lines.append(line + (f"  ({others})" if others else ""))
        else:
            lines.append(f"{r.file:{width}s}  error: {r.error}")
    return "\n".join(lines)


def explain(result: FileResult, directory: Path, taken: set[str] = frozenset()) -> Path:  # type: ignore[assignment]
    """Write `<directory>/<file name>.png`: the image beside what the model saw, and its top classes.

    Names in `taken` (written earlier in the same run) get a numbered suffix instead of being overwritten.
    """
    from fmnist import plots

    assert result.prediction is not None and result.seen is not None
    original = preprocess.open_image(Path(result.file))
    original.thumbnail((512, 512))
    picture = np.asarray(original.convert("RGBA" if "A" in original.getbands() else "RGB"))
    title = f"{Path(result.file).name}: {result.prediction.label} {result.prediction.probability:.0%}"
    figure = plots.what_the_model_sees(picture, result.seen, result.prediction.top_k, title)
    directory.mkdir(parents=True, exist_ok=True)
    name, number = f"{Path(result.file).name}.png", 2
    while name in taken:
        name, number = f"{Path(result.file).name}-{number}.png", number + 1
    target = directory / name
    plots.save(figure, target)
    return target
