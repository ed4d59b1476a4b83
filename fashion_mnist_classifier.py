"""The seed's own command: `python3 fashion_mnist_classifier.py` trains the reference model.

It is exactly `fmnist train` (same defaults, same flags, e.g. `--epochs 3`), kept so that the way
this project began still works. Run `make` once first: it creates `.venv`, and
this file re-runs itself with that environment's Python when needed.
"""

import os
import sys
from pathlib import Path

try:
    from fmnist.cli import entry_point
except ModuleNotFoundError:
    venv_python = Path(__file__).resolve().parent / ".venv" / "bin" / "python"
    if venv_python.is_file() and Path(sys.executable).resolve() != venv_python.resolve():
        os.execv(venv_python, [str(venv_python), __file__, *sys.argv[1:]])
    sys.exit("fmnist is not installed: run `make` in this directory first, then run this again")

if __name__ == "__main__":
    # `python3 fashion_mnist_classifier.py [--epochs N ...]` is `fmnist train [--epochs N ...]`.
    sys.argv[1:1] = ["train"]
    entry_point()
