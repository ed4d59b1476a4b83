"""The `fmnist` command: thin subcommands that parse, call one library function, and print.

Bad input ends as one line on stderr: exit status 2 for a bad command line or
setting, 1 for a problem with the data or a run folder. Never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fmnist import ConfigError, FmnistError, __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def _integer_from(minimum: int):
    """An argparse type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise argparse.ArgumentTypeError(f"expected {wanted}, received {text!r}")
        return value

    return parse


_positive_int = _integer_from(1)
_non_negative_int = _integer_from(0)


def _float_from(minimum: float, inclusive: bool):
    """An argparse type: a finite number above `minimum` (or equal to it, if `inclusive`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (minimum <= value if inclusive else minimum < value) or not value < float("inf"):
            wanted = "a number >= 0" if inclusive and minimum == 0 else "a positive number"
            raise argparse.ArgumentTypeError(f"expected {wanted}, received {text!r}")
        return value

    return parse


_positive_float = _float_from(0, inclusive=False)
_non_negative_float = _float_from(0, inclusive=True)


def _names(text: str) -> list[str]:
    """An argparse type: a comma-separated list of names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, received {text!r}")
    return names


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, received {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fmnist", description="Fashion-MNIST classifiers you can trust.")
    parser.add_argument("--version", action="version", version=f"fmnist {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train a model and write its run folder")
    train.add_argument("--config", type=Path, help="a TOML file of settings")
    train.add_argument("--model", help="registered model name (default: mlp, the reference model)")
    train.add_argument("--epochs", type=_positive_int)
    train.add_argument("--batch-size", type=_positive_int)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--validation-split", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--train-images", type=_positive_int, help="use only the first N training images")
    train.add_argument("--test-images", type=_positive_int, help="use only the first N test images")
    train.add_argument("--backend", help="Keras backend: jax or tensorflow (default: the model's fastest)")
    train.add_argument("--time-limit", type=_non_negative_float, metavar="MINUTES",
                       help="train as many epochs as fit in this many minutes, the schedule fitted to them "
                       "(0: no limit, all the recipe's epochs)")
    train.add_argument("--out", type=Path, help="run folder (default: runs/<UTC time>-<model>)")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an unfinished run")
    train.add_argument("--data-dir", type=Path, help="directory with the four IDX files")
    train.add_argument("--show", action="store_true", help="open the learning curves in a window")

    evaluate = commands.add_parser("evaluate", help="re-score a run on the test set")
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluate.add_argument("--backend", help="Keras backend: jax or tensorflow")
    evaluate.add_argument("--data-dir", type=Path)
    evaluate.add_argument("--views", action="store_true",
                          help="compare test-time views (flips, shifts) on the run's validation split instead")

    data = commands.add_parser("data", help="find and verify the dataset, or download it")
    data.add_argument("--data-dir", type=Path)
    data.add_argument("--fetch", action="store_true", help="download the dataset into the cache")

    predict = commands.add_parser("predict", help="classify your own images with a trained run")
    predict.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="files, directories or globs")
    predict.add_argument("--top-k", type=_positive_int, default=3)
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table")
    predict.add_argument("--explain", type=Path, metavar="DIR",
                         help="also write, per image, a PNG of what the model sees beside the image")
    predict.add_argument("--backend", help="Keras backend: jax or tensorflow (default: jax, fastest for inference)")

    serve = commands.add_parser("serve", help="serve a run: the web page and the REST API")
    serve.add_argument("run_dir", type=Path, nargs="?", metavar="RUN_DIR",
                       help="the run to serve (default: the newest finished run under runs/)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument("--workers", type=_positive_int, default=1, help="server processes")
    serve.add_argument("--backend", help="Keras backend: jax or tensorflow (default: jax, fastest for inference)")

    commands.add_parser("models", help="list the registered models")

    bench = commands.add_parser("bench", help="benchmarks")
    benches = bench.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    speed = benches.add_parser("speed", help="fmnist train vs. the seed script, whole processes")
    speed.add_argument("--repeats", type=_positive_int, default=3)
    speed.add_argument("--json", type=Path, help="also write the results to this file")
    accuracy_bench = benches.add_parser(
        "accuracy", help="train every model per seed; table and plot of accuracy against training time"
    )
    accuracy_bench.add_argument("--models", type=_names, help="comma-separated model names (default: all registered)")
    accuracy_bench.add_argument("--seeds", type=_positive_int, default=3, help="runs per model, seeds 0, 1, ...")
    accuracy_bench.add_argument("--budget-minutes", type=_positive_float, metavar="M",
                                help="train each run for at most M minutes (fmnist train --time-limit)")
    accuracy_bench.add_argument("--runs-dir", type=Path, default=Path("runs"),
                                help="where its bench-<time> folder goes")
    accuracy_bench.add_argument("--markdown", type=Path, default=Path("docs/BENCHMARKS.md"))
    accuracy_bench.add_argument("--resume", type=Path, metavar="BENCH_DIR",
                                help="continue an interrupted benchmark (its runs/bench-<time> folder)")
    photo_bench = benches.add_parser("photos", help="accuracy on realistic photos vs. 28x28 images, and speed")
    photo_bench.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    photo_bench.add_argument("--count", type=_positive_int, default=1000, help="photos to make (from test images)")
    photo_bench.add_argument("--speed-count", type=_positive_int, default=1000, help="800x600 JPEGs for the speed test")
    photo_bench.add_argument("--seed", type=_non_negative_int, default=0)
    photo_bench.add_argument("--markdown", type=Path, default=Path("docs/PHOTOS.md"))
    serve_bench = benches.add_parser("serve", help="load-test fmnist serve with wrk on loopback")
    serve_bench.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    serve_bench.add_argument("--seconds", type=_positive_int, default=30, help="per payload and concurrency")
    serve_bench.add_argument("--markdown", type=Path, default=Path("docs/SERVING.md"))
    return parser


def _train(args: argparse.Namespace) -> int:
    from fmnist import config, models, runs

    if args.resume is not None:
        metadata = runs.read_metadata(runs.find_partial(args.resume))
        models.select_backend(metadata["model"], args.backend or metadata["backend"])
        settings = None
    else:
        settings = config.resolve(
            args.config,
            model=args.model,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            validation_split=args.validation_split,
            seed=args.seed,
            train_images=args.train_images,
            test_images=args.test_images,
            time_limit=args.time_limit,
        )
        models.select_backend(settings.model, args.backend)
    from fmnist import experiment, plots

    final = experiment.train_run(
        settings or config.TrainConfig(), out=args.out, data_dir=args.data_dir, resume=args.resume
    )
    if args.show and not plots.show([final / runs.FIGURES["curves"]]):
        print(f"no display: open {final / runs.REPORT_FILE} or the PNG files in {final}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from fmnist import models, runs

    metadata = runs.read_metadata(args.run_dir)
    models.select_backend(metadata["model"], args.backend, training=False)
    from fmnist import experiment

    if args.views:
        comparison = experiment.compare_views(args.run_dir, data_dir=args.data_dir)
        print(f"test-time views of {args.run_dir} on its {comparison['validation_images']:,} validation images "
              f"(its saved model averages {comparison['saved_views']}):")
        print(f"{'views':>5}  {'accuracy':>8}  {'loss':>6}")
        for row in comparison["rows"]:
            print(f"{row['views']:>5}  {row['accuracy']:>8.2%}  {row['loss']:>6.4f}  {row['description']}")
        return 0
    test = experiment.evaluate_run(args.run_dir, data_dir=args.data_dir)
    print(f"test accuracy {test['accuracy']:.4f} on {test['images']} images; "
          f"rewrote metrics, plots and report in {args.run_dir}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from fmnist import models, runs

    metadata = runs.read_metadata(args.run_dir)
    models.select_backend(metadata["model"], args.backend, training=False)
    from tqdm import tqdm

    from fmnist import predict

    files, missing = predict.expand_inputs(args.inputs)
    predictor = predict.Predictor.from_run(args.run_dir)
    with tqdm(total=len(files), unit="image", disable=len(files) < 50 or None, file=sys.stderr) as bar:
        results = predictor.predict_files(files, top_k=args.top_k, progress=bar.update) + missing
    print(predict.format_results(results, args.format))
    if args.explain is not None:
        used: set[str] = set()
        for result in results:
            if result.prediction is not None:
                used.add(predict.explain(result, args.explain, taken=used).name)
        print(f"wrote what the model sees to {args.explain}", file=sys.stderr)
    return 1 if any(result.error for result in results) else 0


def _serve(args: argparse.Namespace) -> int:
    from fmnist import models, runs

    run_dir = args.run_dir or runs.newest(Path("runs"))
    metadata = runs.read_metadata(run_dir)
    models.select_backend(metadata["model"], args.backend, training=False)
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise FmnistError("serving needs the serve extra: pip install 'fmnist[serve]'") from None
    os.environ["FMNIST_SERVE_RUN"] = str(run_dir.resolve())
    print(f"serving {run_dir} on http://{args.host}:{args.port}/  (API docs: /docs)", flush=True)
    uvicorn.run(
        "fmnist.serve.app:app_from_environment", factory=True, host=args.host, port=args.port,
        workers=args.workers, log_level="warning", timeout_keep_alive=30,
    )
    return 0


def _data(args: argparse.Namespace) -> int:
    from fmnist import data

    if args.fetch:
        directory = data.fetch()
        if args.data_dir is None:
            args.data_dir = directory
    dataset = data.load(args.data_dir, download=False)
    print(f"Fashion-MNIST found in {dataset.description}: {dataset.source}")
    for name, path in dataset.files.items():
        print(f"  {path.name:30s} verified  sha256 {dataset.sha256[name][:16]}...")
    return 0


def _models(args: argparse.Namespace) -> int:
    from fmnist import config, models

    models.select_backend("mlp", "jax", training=False)
    print(f"{'model':8s} {'parameters':>10s}  {'trains on':10s} {'training':24s} description")
    for spec in models.MODELS.values():
        parameters = models.count_parameters(spec.build())
        recipe = config.resolve(model=spec.name)
        length = f"{recipe.epochs} epochs"
        if recipe.time_limit:
            length = f"<= {recipe.epochs} epochs, {recipe.time_limit:g} min"
        print(f"{spec.name:8s} {parameters:10,d}  {spec.backend:10s} {length:24s} {spec.description}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.bench in ("speed", "serve"):
        from fmnist import bench

        if args.bench == "speed":
            bench.speed(repeats=args.repeats, json_path=args.json)
        else:
            bench.serve(args.run_dir, seconds=args.seconds, markdown=args.markdown)
        return 0
    from fmnist import models, runs

    if args.bench == "accuracy":
        for name in args.models or []:
            models.get(name)  # an unknown name fails here, before any training
        models.select_backend("mlp", None, training=False)  # this process only measures inference
        from fmnist import bench

        bench.accuracy(args.models, seeds=args.seeds, budget_minutes=args.budget_minutes,
                       runs_root=args.runs_dir, markdown=args.markdown, resume=args.resume)
        return 0
    names = {runs.read_metadata(run_dir)["model"] for run_dir in args.run_dirs}
    models.select_backend(sorted(names)[0], None, training=False)
    from fmnist import bench

    bench.photos(args.run_dirs, count=args.count, speed_count=args.speed_count, seed=args.seed, markdown=args.markdown)
    return 0


COMMANDS = {
    "train": _train, "evaluate": _evaluate, "predict": _predict, "serve": _serve, "data": _data,
    "models": _models, "bench": _bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status."""
    try:
        args = _parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except ConfigError as error:
        print(f"fmnist: error: {error}", file=sys.stderr)
        return 2
    except FmnistError as error:
        print(f"fmnist: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # an unwritable folder, a full disk: the system's words, on one line
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        print(f"fmnist: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fmnist: interrupted", file=sys.stderr)
        return 130


def entry_point() -> None:
    """The console script: run, flush, and leave without the slow interpreter teardown.

    Every file has been written and renamed into place by then; skipping the
    teardown of JAX's and TensorFlow's runtimes saves noticeable time per run.
    """
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
