"""Matplotlib figures of a run: learning curves, confusion matrix, predictions.

Figures are built as `matplotlib.figure.Figure` objects on the Agg canvas, with
no pyplot state, so they render the same with or without a display and from
any thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter


def _figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    figure = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(figure)
    return figure


def learning_curves(history: Sequence[dict[str, float]]) -> Figure:
    """Training and validation accuracy and loss per epoch (the seed's two plots)."""
    figure = _figure(11, 4)
    epochs = [row["epoch"] for row in history]
    for axes, key, title in zip(figure.subplots(1, 2), ("accuracy", "loss"), ("Accuracy", "Loss")):
        axes.plot(epochs, [row[key] for row in history], "o-", label="training")
        if history and f"val_{key}" in history[0]:  # a run trained on every image has no validation
            axes.plot(epochs, [row[f"val_{key}"] for row in history], "s-", label="validation")
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.set_ylabel(key)
        axes.grid(alpha=0.3)
        axes.legend()
        axes.xaxis.get_major_locator().set_params(integer=True)
    return figure


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Test-set confusion matrix: counts, with rows coloured by recall."""
    matrix = np.asarray(matrix)
    figure = _figure(7.5, 6.5)
    axes = figure.subplots()
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"Confusion matrix ({int(matrix.sum())} test images)")
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(
            column, row, str(count), ha="center", va="center", fontsize=7,
            color="white" if rates[row, column] > 0.5 else "black",
        )
    figure.colorbar(image, ax=axes, label="fraction of the true class")
    return figure


def prediction_grid(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    columns: int = 5,
) -> Figure:
    """Test images with predicted vs. true class, each beside its probability bars.

    Green: correct, red: wrong, as in TensorFlow's classification tutorial.
    """
    rows = -(-len(images) // columns)
    # A fixed layout: constrained layout costs half a second for this many axes.
    figure = _figure(2.6 * columns, 1.6 * rows, layout=None)
    grid = figure.subplots(rows, 2 * columns, squeeze=False, width_ratios=[1, 1.2] * columns)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.04, top=0.9, wspace=0.15, hspace=0.6)
    for axes in grid.flat:
        axes.set_axis_off()
    for index, (image, label, probs) in enumerate(zip(images, labels, probabilities)):
        picture, bars = grid[index // columns, 2 * (index % columns) : 2 * (index % columns) + 2]
        predicted = int(np.argmax(probs))
        colour = "tab:green" if predicted == label else "tab:red"
        picture.imshow(image, cmap="gray", vmin=0, vmax=255)
        picture.set_title(
            f"{class_names[predicted]} {probs[predicted]:.0%}\n(true: {class_names[label]})",
            fontsize=7, color=colour,
        )
        bars.set_axis_on()
        bar_colours = ["lightgray"] * len(probs)
        bar_colours[predicted] = "tab:red"
        bar_colours[int(label)] = "tab:green"
        bars.bar(range(len(probs)), probs, color=bar_colours)
        bars.set_ylim(0, 1)
        bars.set_xticks(range(len(probs)))
        bars.tick_params(labelsize=5, length=0)
        bars.set_yticks([])
    return figure


def what_the_model_sees(
    original: np.ndarray, seen: np.ndarray, top_k: Sequence[dict], title: str = ""
) -> Figure:
    """The user's image beside the 28x28 image the model was given, and its top classes."""
    figure = _figure(9, 3.2)
    left, middle, right = figure.subplots(1, 3, width_ratios=[1, 1, 1.3])
    left.imshow(original, cmap=None if original.ndim == 3 else "gray")
    left.set_title(title or "your image", fontsize=9)
    middle.imshow(seen, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    middle.set_title("what the model sees (28x28)", fontsize=9)
    for axes in (left, middle):
        axes.set_axis_off()
    labels = [entry["label"] for entry in top_k][::-1]
    right.barh(labels, [entry["probability"] for entry in top_k][::-1], color="tab:blue")
    right.set_xlim(0, 1)
    right.set_title("probability", fontsize=9)
    right.tick_params(labelsize=8)
    return figure


def accuracy_vs_time(
    results: Sequence[dict], references: Sequence[tuple[str, float]] = ()
) -> Figure:
    """Test accuracy against training minutes: each run a dot, each model's mean a cross.

    `results`: one dict per model with "model" and "runs", each run having
    "minutes" and "test_accuracy". `references`: (label, accuracy) drawn as
    labelled horizontal lines.
    """
    figure = _figure(8, 5)
    axes = figure.subplots()
    for result in results:
        minutes = [run["minutes"] for run in result["runs"]]
        accuracy = [100 * run["test_accuracy"] for run in result["runs"]]
        (dots,) = axes.plot(minutes, accuracy, "o", alpha=0.45)
        axes.plot(
            np.mean(minutes), np.mean(accuracy), "X", markersize=11, color=dots.get_color(),
            label=f"{result['model']} ({np.mean(accuracy):.2f}%)",
        )
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    for label, accuracy in references:
        axes.axhline(100 * accuracy, color="grey", linestyle="--", linewidth=1)
        axes.text(  # at the left edge, whatever the time range
            0.01, 100 * accuracy + 0.08, label, color="dimgrey", fontsize=9, va="bottom",
            transform=axes.get_yaxis_transform(),
        )
    axes.set_xlabel("training time, minutes (whole fmnist train process; log scale)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("Fashion-MNIST: test accuracy against training time")
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="lower right", title="model (mean over seeds)")
    return figure


def save(figure: Figure, path: Path) -> None:
    """Write the figure as a PNG under a temporary name, then rename it into place."""
    import os

    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, dpi=100, format="png")
    os.replace(temporary, path)


def show(paths: Sequence[Path]) -> bool:
    """Open images in a window if a GUI backend is available; return whether it did."""
    import matplotlib
    import matplotlib.pyplot as pyplot

    if matplotlib.get_backend().lower() in {"agg", "pdf", "svg", "ps", "cairo", "template"}:
        return False
    for path in paths:
        window = pyplot.figure(path.name)
        axes = window.add_axes((0, 0, 1, 1))
        axes.imshow(pyplot.imread(path))
        axes.set_axis_off()
    pyplot.show()
    return True
