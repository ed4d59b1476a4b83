"""Shared fixtures. Tests are offline; the real dataset is used where it is installed.

Every test session gets its own cache directory, so tests never read or write
the user's `~/.cache/fmnist`. Set FMNIST_REQUIRE_DATA=1 (CI does) to make a
missing dataset an error instead of a skip.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fmnist import data, models

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    cache = Path(config.rootpath) / ".pytest_cache" / "fmnist-cache"
    os.environ["XDG_CACHE_HOME"] = str(cache)
    os.environ.pop("FMNIST_DATA", None)
    # The tests that train in this process use the reference model's backend.
    models.select_backend("mlp", "jax")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The directory of the installed Fashion-MNIST, or skip (fail in CI) if there is none."""
    found = data.find()
    if found is None:
        message = "Fashion-MNIST is not installed (make setup installs it)"
        if os.environ.get("FMNIST_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found[1]


SMALL = ["--train-images", "6000", "--test-images", "1000"]  # 4800 to fit, 1200 to validate


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, real_data_dir: Path) -> Path:
    """A reference-model run, 3 epochs on a subset of the real data (a few seconds)."""
    from fmnist import cli

    out = tmp_path_factory.mktemp("runs") / "a"
    assert cli.main(["train", "--out", str(out), "--epochs", "3", *SMALL]) == 0
    return out


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300):
    """Run `python -m fmnist ARGS` as a separate process and return the completed process."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "fmnist", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )
