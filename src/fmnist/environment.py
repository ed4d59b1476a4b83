"""What a result was measured on: the machine and the package versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

from fmnist import __version__


def machine() -> dict[str, object]:
    """The CPU model, the cores this process may use, and the platform."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def versions() -> dict[str, str]:
    """Versions of Python, fmnist and the numerical packages that are installed."""
    found = {"fmnist": __version__, "python": platform.python_version()}
    for name in ("keras", "numpy", "jax", "jaxlib", "tensorflow", "tensorflow-cpu", "matplotlib"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found
