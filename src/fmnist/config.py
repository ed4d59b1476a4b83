"""Typed, frozen settings for a training run, loaded from TOML and CLI overrides.

A run is described by one `TrainConfig`. It is resolved in layers, each
overriding the one before: the dataclass defaults, the model's own recipe
(`fmnist/configs/<model>.toml`), the user's `--config FILE.toml`, and the
command-line flags. The resolved config is recorded in the run folder.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fmnist import ConfigError

BACKENDS = ("jax", "tensorflow")
PRECISIONS = ("float32", "bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run computes."""

    model: str = "mlp"
    epochs: int = 10
    batch_size: int = 32  # images per optimizer step
    learning_rate: float = 0.001  # the optimizer's (peak) step size
    validation_split: float = 0.2  # fraction of the training images held out, from the end (0: none)
    seed: int = 42
    optimizer: str = "adam"  # "adam" (Keras's defaults) or "adamw"
    weight_decay: float = 0.0  # AdamW's decoupled decay, per step, scaled by the learning rate
    schedule: str = "constant"  # "constant", or "cosine": linear warm-up, then cosine decay to 0
    warmup_epochs: float = 0.0  # length of the warm-up of the cosine schedule
    label_smoothing: float = 0.0  # weight moved from the true class to all classes uniformly
    # Augmentation of the training images, drawn anew every epoch from (seed, epoch):
    shift_pixels: int = 0  # random translation by up to this many pixels each way, zero-filled
    flip: bool = False  # random horizontal flip of half the images
    erase: float = 0.0  # probability of blanking one random rectangle (2-25% of the image) per image
    # "bfloat16": compute in bfloat16 while training, keeping float32 weights (Keras's
    # mixed_bfloat16); the saved model is float32 either way.
    precision: str = "float32"
    # Test-time augmentation: the saved model averages its probabilities over each
    # image and its mirror image (for models trained with flip = true), and with
    # shift_average = s also over their copies shifted s pixels up, down, left and
    # right (for models trained with shifts): 2 or 5 views, 10 with both.
    flip_average: bool = False
    shift_average: int = 0
    # Minutes of training (the epoch loop) the run may take (None or 0: no limit). The
    # run trains as many of its `epochs` as fit, timed as it goes, and fits its
    # learning-rate schedule to them, so a recipe keeps its budget on any machine.
    time_limit: float | None = None
    # Use only the first N training / test images (None: all). For quick checks;
    # a run trained on a subset says so in its metadata.
    train_images: int | None = None
    test_images: int | None = None

    def __post_init__(self) -> None:
        _check_positive_int("epochs", self.epochs)
        _check_positive_int("batch_size", self.batch_size)
        _check_int("seed", self.seed)
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be within 0 to 2**32 - 1. Received: seed={self.seed!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"model must be a model name. Received: model={self.model!r}")
        if not _is_number(self.learning_rate) or not 0 < self.learning_rate < 1:
            raise ConfigError(
                f"learning_rate must be a number in (0, 1). Received: learning_rate={self.learning_rate!r}"
            )
        if not _is_number(self.validation_split) or not 0 <= self.validation_split < 1:
            raise ConfigError(
                "validation_split must be a fraction in [0, 1) (0: train on every training image). "
                f"Received: validation_split={self.validation_split!r}"
            )
        _check_choice("optimizer", self.optimizer, ("adam", "adamw"))
        _check_choice("schedule", self.schedule, ("constant", "cosine"))
        _check_choice("precision", self.precision, PRECISIONS)
        for name in ("weight_decay", "warmup_epochs", "label_smoothing", "erase"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0. Received: {name}={value!r}")
        for name in ("label_smoothing", "erase"):
            if getattr(self, name) >= 1:
                raise ConfigError(f"{name} must be below 1. Received: {name}={getattr(self, name)!r}")
        if self.warmup_epochs >= self.epochs and self.schedule == "cosine":
            raise ConfigError(
                f"warmup_epochs must be shorter than the run. Received: warmup_epochs={self.warmup_epochs!r}, "
                f"epochs={self.epochs!r}"
            )
        if self.weight_decay and self.optimizer != "adamw":
            raise ConfigError(
                f"weight_decay applies to optimizer = 'adamw' only. Received: optimizer={self.optimizer!r}"
            )
        if self.warmup_epochs and self.schedule != "cosine":
            raise ConfigError(
                f"warmup_epochs applies to schedule = 'cosine' only. Received: schedule={self.schedule!r}"
            )
        for name, most in (("shift_pixels", 8), ("shift_average", 4)):
            value = getattr(self, name)
            _check_int(name, value)
            if not 0 <= value <= most:
                raise ConfigError(f"{name} must be within 0-{most}. Received: {name}={value!r}")
        for name in ("flip", "flip_average"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false. Received: {name}={getattr(self, name)!r}")
        if self.time_limit is not None and (not _is_number(self.time_limit) or self.time_limit < 0):
            raise ConfigError(
                f"time_limit must be a number of minutes >= 0 (0: no limit). Received: time_limit={self.time_limit!r}"
            )
        for name in ("train_images", "test_images"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}. Received: {name}={value!r}")


def _check_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer. Received: {name}={value!r}")


def _check_positive_int(name: str, value: object) -> None:
    _check_int(name, value)
    if value < 1:  # type: ignore[operator]
        raise ConfigError(f"{name} must be at least 1. Received: {name}={value!r}")


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file of config keys, with errors that name the file."""
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    return table


def model_recipe(model: str) -> dict[str, Any]:
    """The packaged default recipe of a model, or {} if it has none."""
    recipe = resources.files("fmnist") / "configs" / f"{model}.toml"
    if not recipe.is_file():
        return {}
    return tomllib.loads(recipe.read_text(encoding="utf-8"))


def resolve(config_file: Path | None = None, **overrides: Any) -> TrainConfig:
    """Layer defaults, the model's recipe, a user TOML and CLI overrides into one config.

    `overrides` whose value is None are treated as not given.
    """
    user = read_toml(config_file) if config_file is not None else {}
    given = {key: value for key, value in overrides.items() if value is not None}
    model = given.get("model", user.get("model", TrainConfig.model))
    layers = [(f"fmnist/configs/{model}.toml", model_recipe(str(model))), (str(config_file), user)]
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    for origin, table in layers + [("the command line", given)]:
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(unknown)} in {origin}; "
                f"known settings: {', '.join(sorted(known))}"
            )
        values.update(table)
    try:
        return TrainConfig(**values)
    except TypeError as error:  # a value of a type the dataclass cannot compare
        raise ConfigError(f"invalid config: {error}") from None


def from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a recorded config (for example from a run's metadata)."""
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{key: value for key, value in values.items() if key in known})
