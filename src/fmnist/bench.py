"""Benchmarks with their own command: `fmnist bench speed`.

Speed is measured as whole processes, import to exit, alternating the two
contenders on the same machine in one invocation, and quoted as a ratio of
medians, so that a noisy shared machine affects both alike.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
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
