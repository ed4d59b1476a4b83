"""Benchmarks with their own command: `fmnist bench speed|accuracy|photos|serve`.

Speed is measured as whole processes, import to exit, alternating the two
contenders on the same machine in one invocation, and quoted as a ratio of
medians, so that a noisy shared machine affects both alike.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from fmnist import FmnistError, data, environment

SEED_SCRIPT = Path(__file__).with_name("seed_script.py")


def _keras_home_with_dataset(root: Path) -> Path:
    """A KERAS_HOME whose cache holds the dataset, so the seed's `load_data()` needs no network."""
    dataset = data.load()  # verified; downloads if it must
    target = root / "keras-home" / "datasets" / "fashion-mnist"
    target.mkdir(parents=True)
    for name, path in dataset.files.items():
        link = target / f"{name}.gz"
        if path.suffix == ".gz":
            link.symlink_to(path.resolve())
        else:
            link.write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
    return root / "keras-home"


def _timed(command: list[str], cwd: Path, env: dict[str, str], pattern: str) -> dict[str, float]:
    """Run a whole process; return its wall time, peak memory and the accuracy it printed."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise FmnistError(f"{' '.join(command)} failed with status {process.returncode}:\n{output[-2000:]}")
    match = re.search(pattern, output)
    return {
        "seconds": seconds,
        "peak_mb": usage.ru_maxrss / 1024,  # ru_maxrss is in KiB on Linux
        "test_accuracy": float(match.group(1)) if match else float("nan"),
    }


def speed(repeats: int = 3, json_path: Path | None = None) -> dict[str, object]:
    """`fmnist train` (defaults) vs. the seed script as a beginner writes it, alternating."""
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-") as scratch:
        root = Path(scratch)
        keras_home = _keras_home_with_dataset(root)
        seed_env = {**os.environ, "KERAS_HOME": str(keras_home), "KERAS_BACKEND": "tensorflow"}
        fmnist_env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
        seed_command = [sys.executable, str(SEED_SCRIPT)]
        results: dict[str, list[dict[str, float]]] = {"seed": [], "fmnist": []}

        # One run with an empty fmnist cache first: what a user's very first run costs
        # (decompressing the data, compiling the training step). It is reported apart.
        cold = _timed(
            [sys.executable, "-m", "fmnist", "train", "--out", str(root / "cold")],
            root, {**fmnist_env, "XDG_CACHE_HOME": str(root / "empty-cache")}, r"test accuracy ([\d.]+)",
        )
        print(f"fmnist train, first run with an empty cache: {cold['seconds']:.2f} s", flush=True)
        for repeat in range(repeats):
            for name in ("seed", "fmnist"):
                if name == "seed":
                    result = _timed(seed_command, root, seed_env, r"Test accuracy: ([\d.]+)")
                else:
                    # A different seed per repeat: the seed script is unseeded, so both
                    # sides show the spread that the initial weights cause.
                    command = [
                        sys.executable, "-m", "fmnist", "train", "--seed", str(repeat),
                        "--out", str(root / f"run-{repeat}"),
                    ]
                    result = _timed(command, root, fmnist_env, r"test accuracy ([\d.]+)")
                results[name].append(result)
                print(
                    f"run {repeat + 1}/{repeats}  {name:6s}  {result['seconds']:6.2f} s  "
                    f"peak {result['peak_mb']:6.0f} MB  test accuracy {result['test_accuracy']:.4f}",
                    flush=True,
                )

    medians = {
        name: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        for name, runs in results.items()
    }
    ratio = medians["seed"]["seconds"] / medians["fmnist"]["seconds"]
    summary = {
        "machine": environment.machine(),
        "repeats": repeats,
        "runs": results,
        "fmnist_first_run_empty_cache": cold,
        "medians": medians,
        "speedup": ratio,
    }
    print(
        f"\nmedian of {repeats}: seed script {medians['seed']['seconds']:.2f} s "
        f"(peak {medians['seed']['peak_mb']:.0f} MB, test accuracy {medians['seed']['test_accuracy']:.4f}); "
        f"fmnist train {medians['fmnist']['seconds']:.2f} s "
        f"(peak {medians['fmnist']['peak_mb']:.0f} MB, test accuracy {medians['fmnist']['test_accuracy']:.4f})\n"
        f"fmnist train is {ratio:.2f}x faster, whole process, on {summary['machine']['cpu']} "
        f"({summary['machine']['cores']} cores)"
    )
    if json_path is not None:
        json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def photos(
    run_dirs: list[Path],
    count: int = 1000,
    speed_count: int = 1000,
    seed: int = 0,
    markdown: Path | None = Path("docs/PHOTOS.md"),
) -> dict[str, object]:
    """Accuracy on realistic photos of test images vs. on the 28x28 originals, and photos per second.

    The photos are made by `fmnist.photos` from the first `count` test images.
    Each photo goes through the same path as `fmnist predict` (files on disk,
    `Predictor.predict_files`). The naive baseline converts to grayscale and
    resizes to 28x28, nothing else. Speed: `speed_count` 800x600 JPEG photos
    in one directory, preprocessing plus prediction, median of 3 passes.
    """
    import io
    import warnings

    import numpy as np
    from PIL import Image

    from fmnist import photos as photo_maker
    from fmnist.predict import Predictor

    dataset = data.load()
    images, labels = dataset.x_test[:count], dataset.y_test[:count]
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="fmnist-photos-") as scratch:
        root = Path(scratch)
        made = [photo_maker.make_photo(image, rng) for image in images]
        paths = []
        for index, photo in enumerate(made):
            path = root / "mixed" / f"{index:05d}.{photo_maker.EXTENSIONS[photo.format]}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(photo.data)
            paths.append(path)
        speed_paths = []
        for index in range(speed_count):
            photo = photo_maker.make_photo(
                dataset.x_test[index % len(dataset.x_test)], rng, canvas=(800, 600), encoding=("JPEG", "RGB")
            )
            path = root / "jpeg-800x600" / f"{index:05d}.jpg"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(photo.data)
            speed_paths.append(path)

        def naive(photo: photo_maker.Photo) -> np.ndarray:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return np.asarray(Image.open(io.BytesIO(photo.data)).convert("L").resize((28, 28)))

        naive_images = np.stack([naive(photo) for photo in made])
        backgrounds = np.array([photo.background for photo in made])
        rows = []
        for run_dir in run_dirs:
            predictor = Predictor.from_run(run_dir)
            original = predictor.probabilities(images).argmax(axis=1) == labels
            results = predictor.predict_files(paths, top_k=1)
            on_photos = np.array(
                [r.prediction is not None and r.prediction.index == y for r, y in zip(results, labels)]
            )
            on_naive = predictor.probabilities(naive_images).argmax(axis=1) == labels
            timings = []
            for _ in range(3):
                started = time.perf_counter()
                predictor.predict_files(speed_paths, top_k=3)
                timings.append(time.perf_counter() - started)
            row = {
                "run": str(run_dir),
                "model": predictor.metadata["model"],
                "accuracy_28x28": float(original.mean()),
                "accuracy_photos": float(on_photos.mean()),
                "accuracy_naive": float(on_naive.mean()),
                "gap_points": float(100 * (original.mean() - on_photos.mean())),
                "errors": sum(r.error is not None for r in results),
                "by_background": {
                    kind: {
                        "photos": int((backgrounds == kind).sum()),
                        "accuracy_28x28": float(original[backgrounds == kind].mean()),
                        "accuracy_photos": float(on_photos[backgrounds == kind].mean()),
                    }
                    for kind in ("light", "dark", "transparent")
                },
                "photos_per_second": speed_count / statistics.median(timings),
            }
            rows.append(row)
            print(
                f"{row['model']:8s} 28x28 {row['accuracy_28x28']:.2%}  photos {row['accuracy_photos']:.2%} "
                f"(gap {row['gap_points']:.2f} points)  naive {row['accuracy_naive']:.2%}  "
                f"{row['photos_per_second']:.0f} photos/s (800x600 JPEG)",
                flush=True,
            )
    formats: dict[str, int] = {}
    for photo in made:
        formats[f"{photo.format} {photo.mode}"] = formats.get(f"{photo.format} {photo.mode}", 0) + 1
    summary = {
        "machine": environment.machine(),
        "versions": environment.versions(),
        "command": "fmnist bench photos " + " ".join(str(r) for r in run_dirs)
        + f" --count {count} --speed-count {speed_count} --seed {seed}",
        "photos": count,
        "formats": formats,
        "exif_rotated": sum(photo.orientation != 1 for photo in made),
        "results": rows,
    }
    if markdown is not None:
        _write_report(markdown, summary, _photos_markdown(summary))
    return summary


def _write_report(markdown: Path, summary: dict, text: str) -> None:
    """A benchmark's page and, beside it, its figures as JSON."""
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    markdown.write_text(text)
    print(f"wrote {markdown} and {markdown.with_suffix('.json')}")


def _photos_markdown(summary: dict) -> str:
    machine = summary["machine"]
    lines = [
        "# Prediction on realistic photos",
        "",
        "Produced by `fmnist bench photos`; do not edit by hand. Command:",
        "",
        f"    {summary['command']}",
        "",
        f"{summary['photos']} photos made from the first {summary['photos']} test images by `fmnist.photos` "
        "(the dataset recipe run backwards: enlarged to 100-1000 px, off-centre on non-square canvases, "
        "light, dark and transparent backgrounds, luminance-keeping colour tints, noise, JPEG/WebP "
        f"compression, {summary['exif_rotated']} EXIF-rotated JPEGs, every supported format and mode). "
        "Each photo is read from disk and classified through the same path as `fmnist predict`. "
        "The naive baseline converts to grayscale and resizes to 28x28.",
        "",
        "| model | run | 28x28 test images | photos of them | gap (points) | naive resize | unreadable | "
        "800x600 JPEG photos/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary["results"]:
        lines.append(
            f"| {row['model']} | `{Path(row['run']).name}` | {row['accuracy_28x28']:.2%} | "
            f"{row['accuracy_photos']:.2%} | {row['gap_points']:.2f} | {row['accuracy_naive']:.2%} | "
            f"{row['errors']} | {row['photos_per_second']:.0f} |"
        )
    lines += ["", "By background:", "", "| model | background | photos | 28x28 | photos |"]
    lines += ["| --- | --- | --- | --- | --- |"]
    for row in summary["results"]:
        for kind, part in row["by_background"].items():
            lines.append(
                f"| {row['model']} | {kind} | {part['photos']} | {part['accuracy_28x28']:.2%} | "
                f"{part['accuracy_photos']:.2%} |"
            )
    lines += [
        "",
        "Formats and modes of the photos: "
        + ", ".join(f"{name} ({n})" for name, n in sorted(summary["formats"].items())) + ".",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}. "
        "Speed: preprocessing plus prediction of one directory, median of 3 passes.",
        "",
    ]
    return "\n".join(lines)


# Zalando's benchmark table for Fashion-MNIST (github.com/zalandoresearch/fashion-mnist).
REFERENCES = (("SVC (Zalando table)", 0.897), ("ResNet18 (Zalando table)", 0.949), ("WRN40-4 (Zalando table)", 0.967))


def accuracy(
    model_names: list[str] | None = None,
    seeds: int = 3,
    budget_minutes: float | None = None,
    runs_root: Path = Path("runs"),
    markdown: Path | None = Path("docs/BENCHMARKS.md"),
    resume: Path | None = None,
) -> dict[str, object]:
    """Train each model with its recipe once per seed (0, 1, ...); tabulate and plot the results.

    Each run is a whole `fmnist train` process, timed import to exit, on the
    model's own training backend, in a new folder `runs/bench-<UTC time>/`.
    `model_names` defaults to every registered model. With `budget_minutes`,
    each run is given `fmnist train --time-limit`. Inference speed is measured
    on the first seed's saved model, on the 10,000 test images, in this process.

    A benchmark can take hours, so it keeps a ledger (`bench.json` in its
    folder) and rewrites the report after every run; `resume` (that folder)
    continues an interrupted benchmark with its own settings, without
    retraining the runs it recorded, and adds the models in `model_names` that
    it lacks. A run it did not record is trained again: its time was not
    measured whole. Each run records the CPU it ran on, and the report names
    them, so a benchmark resumed on another machine says so.
    """
    from fmnist import models, runs
    from fmnist.predict import Predictor

    settings = {
        "models": list(dict.fromkeys(model_names or models.MODELS)),
        "seeds": seeds,
        "budget_minutes": budget_minutes,
    }
    if resume is not None:
        root = resume
        ledger = _read_ledger(root / "bench.json")
        settings = _resumed_settings(root, ledger["settings"], model_names, seeds, budget_minutes)
    else:
        root = runs_root / time.strftime("bench-%Y%m%dT%H%M%SZ", time.gmtime())
        root.mkdir(parents=True)
        ledger = {"settings": settings, "runs": [], "inference_images_per_second": {}}
        _write_ledger(root, ledger)  # from the start, so that even the first run can be resumed
    specs = [models.get(name) for name in settings["models"]]  # unknown names fail before any training
    specs.sort(key=lambda spec: list(models.MODELS).index(spec.name))  # trained and reported in the registry's order
    settings["models"] = [spec.name for spec in specs]
    if settings != ledger["settings"]:  # models added to a resumed benchmark
        ledger["settings"] = settings
        _write_ledger(root, ledger)
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    x_test = data.load().x_test
    command = f"fmnist bench accuracy {_flags(settings)}"
    for spec in specs:
        for seed in range(seeds):
            if any(run["model"] == spec.name and run["seed"] == seed for run in ledger["runs"]):
                continue
            out = root / f"{spec.name}-seed{seed}"
            for unrecorded in (out, runs.partial_path(out)):  # its time was not measured whole: train again
                shutil.rmtree(unrecorded, ignore_errors=True)
            train = [
                sys.executable, "-m", "fmnist", "train", "--model", spec.name, "--seed", str(seed), "--out", str(out)
            ]
            if budget_minutes is not None:
                train += ["--time-limit", f"{budget_minutes:g}"]
            timed = _timed(train, Path.cwd(), env, r"test accuracy ([\d.]+)")
            metadata = runs.read_metadata(out)
            run = {
                "model": spec.name,
                "seed": seed,
                "run": out.name,  # inside the benchmark folder, wherever that is moved
                "minutes": timed["seconds"] / 60,
                "fit_minutes": metadata["timings"]["fit_seconds"] / 60,
                "peak_mb": timed["peak_mb"],
                "epochs_trained": len(metadata["timings"]["epoch_seconds"]),
                "test_accuracy": metadata["metrics"]["test"]["accuracy"],
                "validation_accuracy": metadata["metrics"].get("validation", {}).get("accuracy"),  # None: no split
                "machine": metadata["machine"]["cpu"],
            }
            ledger["runs"].append(run)
            _write_ledger(root, ledger)
            print(
                f"{spec.name:8s} seed {seed}  {run['minutes']:6.2f} min  "
                f"test {run['test_accuracy']:.2%}  validation {_percent(run['validation_accuracy'])}",
                flush=True,
            )
            if spec.name not in ledger["inference_images_per_second"]:
                ledger["inference_images_per_second"][spec.name] = _inference_speed(Predictor.from_run(out), x_test)
                _write_ledger(root, ledger)
            if markdown is not None:
                _write_accuracy_report(markdown, _accuracy_summary(ledger, specs, root, command))
    summary = _accuracy_summary(ledger, specs, root, command)
    if markdown is not None:  # also when resuming a finished benchmark: the report is rewritten
        _write_accuracy_report(markdown, summary)
    return summary


def _resumed_settings(
    root: Path, recorded: dict, model_names: list[str] | None, seeds: int, budget_minutes: float | None
) -> dict:
    """A resumed benchmark's settings: its own, with any models of `model_names` it lacks added after its own."""
    if (seeds, budget_minutes) != (recorded["seeds"], recorded["budget_minutes"]):
        raise FmnistError(f"{root} was run with {_flags(recorded)}; resume it with the same settings")
    return {**recorded, "models": list(dict.fromkeys(recorded["models"] + (model_names or [])))}


def _flags(settings: dict) -> str:
    flags = f"--models {','.join(settings['models'])} --seeds {settings['seeds']}"
    if settings["budget_minutes"] is not None:
        flags += f" --budget-minutes {settings['budget_minutes']:g}"
    return flags


def _write_ledger(root: Path, ledger: dict) -> None:
    from fmnist import runs

    runs.write_bytes(root / "bench.json", (json.dumps(ledger, indent=2) + "\n").encode())


def _read_ledger(path: Path) -> dict:
    try:
        ledger = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FmnistError(f"{path.parent} is not a benchmark folder to resume ({path.name}: {error})") from None
    if not isinstance(ledger, dict) or not {"settings", "runs", "inference_images_per_second"} <= set(ledger):
        raise FmnistError(f"{path} is not an fmnist benchmark ledger")
    from fmnist import runs

    for run in ledger["runs"]:  # ledgers written before runs recorded their CPU: from the run's own metadata
        run.setdefault("machine", runs.read_metadata(path.parent / run["run"])["machine"]["cpu"])
    return ledger


def _accuracy_summary(ledger: dict, specs: list, root: Path, command: str) -> dict[str, object]:
    """The benchmark's figures so far, per model, from its ledger and its runs' metadata."""
    import numpy as np

    from fmnist import runs

    results = []
    for spec in specs:
        model_runs = sorted((run for run in ledger["runs"] if run["model"] == spec.name), key=lambda run: run["seed"])
        if not model_runs:
            continue
        first = runs.read_metadata(root / model_runs[0]["run"])
        test = np.array([run["test_accuracy"] for run in model_runs])
        results.append({
            "model": spec.name,
            "description": spec.description,
            "parameters": first["parameters"],
            "backend": first["backend"],
            "recipe": first["config"],
            "selection": first["selection"],
            "runs": model_runs,
            "test_accuracy_mean": float(test.mean()),
            "test_accuracy_std": float(test.std(ddof=1)) if len(test) > 1 else None,
            "validation_accuracy_mean": _mean([run["validation_accuracy"] for run in model_runs]),
            "validation_images": first["split"]["validation_images"],
            "minutes_mean": float(np.mean([run["minutes"] for run in model_runs])),
            "inference_images_per_second": ledger["inference_images_per_second"].get(spec.name),
        })
    return {
        "machine": environment.machine(),
        "versions": environment.versions(),
        "command": command,
        "runs_folder": str(root),
        "budget_minutes": ledger["settings"]["budget_minutes"],
        "references": [{"label": label, "test_accuracy": value} for label, value in REFERENCES],
        "results": results,
    }


def _mean(values: list[float | None]) -> float | None:
    """The mean of the values that exist (a run trained on every image has no validation accuracy)."""
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _write_accuracy_report(markdown: Path, summary: dict) -> None:
    from fmnist import plots

    figure = markdown.with_name("accuracy_vs_time.png")
    markdown.parent.mkdir(parents=True, exist_ok=True)
    plots.save(plots.accuracy_vs_time(summary["results"], REFERENCES), figure)
    _write_report(markdown, summary, _accuracy_markdown(summary, figure.name))


def _inference_speed(predictor, images) -> float:
    """Test images per second through a run's saved model: median of 3 passes after a warm-up."""
    predictor.probabilities(images[:1000])
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        predictor.probabilities(images)
        timings.append(time.perf_counter() - started)
    return len(images) / statistics.median(timings)


def _recipe_words(recipe: dict) -> str:
    """A recipe in a few words: what differs from the reference model's defaults."""
    epochs = f"{recipe['epochs']} epochs"
    if recipe.get("time_limit"):
        epochs = f"as many of up to {recipe['epochs']} epochs as fit in {recipe['time_limit']:g} minutes of training"
    if recipe.get("validation_split") == 0:
        epochs += " on every training image (no validation split)"
    words = [
        epochs, f"batch {recipe['batch_size']}",
        f"{recipe['optimizer']} lr {recipe['learning_rate']:g}",
    ]
    if recipe["weight_decay"]:
        words.append(f"weight decay {recipe['weight_decay']:g}")
    if recipe["schedule"] != "constant":
        words.append(f"{recipe['schedule']} schedule, {recipe['warmup_epochs']:g}-epoch warm-up")
    if recipe["label_smoothing"]:
        words.append(f"label smoothing {recipe['label_smoothing']:g}")
    augment = [f"shifts of up to {recipe['shift_pixels']} px"] if recipe["shift_pixels"] else []
    augment += ["flips"] if recipe["flip"] else []
    augment += [f"erasing p={recipe['erase']:g}"] if recipe["erase"] else []
    if augment:
        words.append("augmentation: " + ", ".join(augment))
    if recipe.get("precision", "float32") != "float32":
        words.append(f"{recipe['precision']} compute")
    views = (["the mirror image"] if recipe.get("flip_average") else []) + (
        [f"copies shifted {recipe['shift_average']} px up, down, left and right"] if recipe.get("shift_average") else []
    )
    if views:
        words.append("prediction averaged with " + " and ".join(views))
    return "; ".join(words)


def _accuracy_markdown(summary: dict, figure: str) -> str:
    import numpy as np

    machine = summary["machine"]
    counts = sorted({result["validation_images"] for result in summary["results"]} - {0})
    held_out = f"last {counts[0]:,} training images" if len(counts) == 1 else "held-out end of the training images"
    if any(result["validation_images"] == 0 for result in summary["results"]):
        held_out += " (a model trained on every training image, validation_split = 0, has none: —)"
    lines = [
        "# Accuracy against training time",
        "",
        "Produced by `fmnist bench accuracy`; do not edit by hand. Command:",
        "",
        f"    {summary['command']}",
        "",
        "Each model is trained with its own recipe once per seed, each run a whole `fmnist train` process "
        "(training time = import to exit: data, training, scoring, figures). Test accuracy is the mean ± "
        "standard deviation over the seeds on the 10,000 test images, each scored once, after training ended; "
        f"validation accuracy is on the {held_out}, which are never trained on. A recipe with a time limit "
        "(`--budget-minutes` sets one for every model) trains as many epochs as fit in it, its learning-rate "
        "schedule fitted to them, so its epochs depend on the machine. "
        "Inference: the first seed's saved model, 10,000 test images, median of 3 passes.",
        "",
        "| model | parameters | trains on | epochs | training time (min) | test accuracy | validation accuracy | "
        "inference images/s |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in summary["results"]:
        runs = result["runs"]
        trained = sorted({run["epochs_trained"] for run in runs})
        epochs = "/".join(map(str, trained))
        if trained != [result["recipe"]["epochs"]] and not result["recipe"].get("time_limit"):
            epochs += f" of {result['recipe']['epochs']}"
        spread = f" ± {100 * result['test_accuracy_std']:.2f}" if result["test_accuracy_std"] is not None else ""
        minutes = [run["minutes"] for run in runs]
        ips = result["inference_images_per_second"]
        speed = "—" if ips is None else f"{ips:,.0f}"
        lines.append(
            f"| {result['model']} | {result['parameters']:,} | {result['backend']} | {epochs} | "
            f"{np.mean(minutes):.2f} ({min(minutes):.2f}-{max(minutes):.2f}) | "
            f"{100 * result['test_accuracy_mean']:.2f}%{spread} (n={len(runs)}) | "
            f"{_percent(result['validation_accuracy_mean'])} | {speed} |"
        )
    references = ", ".join(
        f"{ref['label'].split(' (')[0]} {100 * ref['test_accuracy']:.1f}%" for ref in summary["references"]
    )
    lines += ["", f"![test accuracy against training minutes]({figure})", "", f"Zalando's table: {references}."]
    lines += ["", "## Recipes", ""]
    for result in summary["results"]:
        lines.append(f"- **{result['model']}** ({result['description']}): {_recipe_words(result['recipe'])}. "
                     f"Final model: {result['selection']}.")
    # A benchmark resumed on another machine names each run's CPU.
    cpus = {run["machine"] for result in summary["results"] for run in result["runs"]}
    lines += [
        "", "## Every run", "",
        "| model | seed | minutes | epochs | test accuracy | validation accuracy | peak memory (MB) |"
        + (" CPU |" if len(cpus) > 1 else ""),
    ]
    lines += ["| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" --- |" if len(cpus) > 1 else "")]
    for result in summary["results"]:
        for run in result["runs"]:
            lines.append(
                f"| {result['model']} | {run['seed']} | {run['minutes']:.2f} | {run['epochs_trained']} | "
                f"{100 * run['test_accuracy']:.2f}% | {_percent(run['validation_accuracy'])} | {run['peak_mb']:.0f} |"
                + (f" {run['machine']} |" if len(cpus) > 1 else "")
            )
    versions = ", ".join(f"{name} {version}" for name, version in summary["versions"].items())
    here = f"{machine['cpu']}, {machine['cores']} cores, {machine['platform']}"
    where = (
        f"Machine: {here}." if cpus == {machine["cpu"]}
        else f"The runs ran on: {'; '.join(sorted(cpus))}. This report was written on {here}."
    )
    lines += ["", f"{where} Versions: {versions}.", ""]
    return "\n".join(lines)


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("FMNIST_CONTENT_TYPE")
local file = io.open(os.getenv("FMNIST_BODY"), "rb")
wrk.body = file:read("*all")
file:close()
"""


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wrk(url: str, body: Path, content_type: str, connections: int, seconds: int, script: Path) -> dict:
    """One wrk run; its throughput, latency percentiles (ms) and error counts."""
    result = subprocess.run(
        ["wrk", f"-t{min(connections, 2)}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True,
        env={**os.environ, "FMNIST_BODY": str(body), "FMNIST_CONTENT_TYPE": content_type},
        timeout=seconds + 60,
    )
    if result.returncode != 0:
        raise FmnistError(f"wrk failed: {result.stderr.strip() or result.stdout.strip()}")
    text = result.stdout
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def latency(percentile: str) -> float:
        match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
        return float(match.group(1)) * units[match.group(2)] if match else float("nan")

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    requests = re.search(r"(\d+) requests in", text)
    return {
        "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "requests": int(requests.group(1)) if requests else 0,
        "p50_ms": latency("50"),
        "p90_ms": latency("90"),
        "p99_ms": latency("99"),
        "errors": (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, socket.groups())) if socket else 0),
    }


def serve(run_dir: Path, seconds: int = 30, markdown: Path | None = Path("docs/SERVING.md")) -> dict[str, object]:
    """Load-test `fmnist serve` on loopback with wrk: three payloads at concurrency 1 and 8.

    Payloads: a 28x28 PNG (a test image), an 800x600 JPEG photo, and a JSON
    batch of 32 test images. The server's memory is read after warm-up and
    again after all the load.
    """

    import numpy as np
    from PIL import Image

    from fmnist import photos as photo_maker

    if shutil.which("wrk") is None:
        raise FmnistError("the serving benchmark needs wrk: apt-get install wrk")
    dataset = data.load()
    with tempfile.TemporaryDirectory(prefix="fmnist-serve-") as scratch:
        root = Path(scratch)
        script = root / "post.lua"
        script.write_text(WRK_SCRIPT)
        png = root / "image.png"
        Image.fromarray(dataset.x_test[0]).save(png)
        jpeg = root / "photo.jpg"
        jpeg.write_bytes(
            photo_maker.make_photo(
                dataset.x_test[1], np.random.default_rng(0), canvas=(800, 600), encoding=("JPEG", "RGB")
            ).data
        )
        batch = root / "batch.json"
        batch.write_text(json.dumps({"instances": dataset.x_test[:32].tolist()}))
        payloads = [
            ("28x28 PNG", png, "image/png"),
            ("800x600 JPEG", jpeg, "image/jpeg"),
            ("JSON batch of 32", batch, "application/json"),
        ]
        with running_server(run_dir) as (url, server):
            # Warm-up: every payload once at concurrency 8, then memory is read.
            for _, body, content_type in payloads:
                _wrk(url + "/v1/predict", body, content_type, 8, 3, script)
            memory_warm = _rss_mb(server.pid)
            rows = []
            load_started = time.perf_counter()
            for name, body, content_type in payloads:
                for connections in (1, 8):
                    row = {"payload": name, "connections": connections,
                           **_wrk(url + "/v1/predict", body, content_type, connections, seconds, script)}
                    rows.append(row)
                    print(
                        f"{name:18s} c={connections}  {row['requests_per_second']:7.0f} req/s  "
                        f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  errors {row['errors']}",
                        flush=True,
                    )
            load_seconds = time.perf_counter() - load_started
            memory_after = _rss_mb(server.pid)
    summary = {
        "machine": environment.machine(),
        "versions": environment.versions(),
        "command": f"fmnist bench serve {run_dir} --seconds {seconds}",
        "run": str(run_dir),
        "results": rows,
        "memory_mb": {"after_warm_up": memory_warm, "after_load": memory_after, "load_seconds": load_seconds},
    }
    print(f"server memory: {memory_warm:.0f} MB after warm-up, {memory_after:.0f} MB after {load_seconds:.0f} s load")
    if markdown is not None:
        _write_report(markdown, summary, _serve_markdown(summary))
    return summary


@contextlib.contextmanager
def running_server(run_dir: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`fmnist serve RUN_DIR` on a free loopback port, ready; stopped on exit. Yields (url, process)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "fmnist", "serve", str(run_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url)
        yield url, server
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_ready(url: str, timeout: float = 120.0) -> None:
    import urllib.request

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise FmnistError(f"the server at {url} did not become ready within {timeout:.0f} s")


def _serve_markdown(summary: dict) -> str:
    machine, memory = summary["machine"], summary["memory_mb"]
    lines = [
        "# Serving under load",
        "",
        "Produced by `fmnist bench serve`; do not edit by hand. Command:",
        "",
        f"    {summary['command']}",
        "",
        "`fmnist serve` (one uvicorn worker) on loopback, loaded by `wrk` for the stated time per row; "
        "every request is a `POST /v1/predict`.",
        "",
        "| payload | concurrency | requests/s | p50 (ms) | p90 (ms) | p99 (ms) | errors |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary["results"]:
        lines.append(
            f"| {row['payload']} | {row['connections']} | {row['requests_per_second']:.0f} | {row['p50_ms']:.2f} | "
            f"{row['p90_ms']:.2f} | {row['p99_ms']:.2f} | {row['errors']} |"
        )
    growth = 100 * (memory["after_load"] / memory["after_warm_up"] - 1)
    lines += [
        "",
        f"Server memory (RSS): {memory['after_warm_up']:.0f} MB after warm-up, {memory['after_load']:.0f} MB after "
        f"{memory['load_seconds']:.0f} s of load ({growth:+.1f}%).",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}; "
        "the load generator shares those cores with the server.",
        "",
    ]
    return "\n".join(lines)
