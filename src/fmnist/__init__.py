"""fmnist: Fashion-MNIST classification as reliable, fast, reproducible software."""

__version__ = "0.1.0"


class FmnistError(Exception):
    """A problem with the user's input or environment, reported as one clear line.

    The message names what was received, what was expected, and how to fix it.
    The CLI prints it to stderr and exits non-zero, without a traceback.
    """


class ConfigError(FmnistError):
    """A bad setting or command-line value; the CLI exits with status 2 for it."""
