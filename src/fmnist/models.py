"""A small registry of Keras architectures by name, and compiled inference.

Every model takes raw images, `uint8` of shape (n, 28, 28) with values 0-255,
scales them inside itself (a `Rescaling` layer), and returns class
probabilities of shape (n, 10). So a saved model takes the same input
everywhere: training, evaluation, the CLI and the server.

Keras is imported inside the functions, not at module level: the registry is
read to choose the Keras backend, and the backend must be fixed before Keras is
first imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fmnist import ConfigError, FmnistError

if TYPE_CHECKING:
    import keras

NUM_CLASSES = 10


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], keras.Model]
    backend: str  # the Keras backend this model trains fastest on, measured on CPU
    description: str
    # CPU cores to run on (None: all). The MLP's steps are so small that
    # waking threads on other cores costs more than it gains: one core is faster.
    cpu_cores: int | None = None


def build_mlp() -> keras.Model:
    """The reference model, exactly the seed script's: 784-128-64-10, relu, softmax."""
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=(28, 28), dtype="uint8", name="image"),
            keras.layers.Rescaling(1.0 / 255.0, name="scale"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(128, activation="relu", name="dense_128"),
            keras.layers.Dense(64, activation="relu", name="dense_64"),
            keras.layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities"),
        ],
        name="mlp",
    )


def build_cnn() -> keras.Model:
    """A fast convolutional net: 3x3 convolutions with BatchNorm, 32-32 | 64-64 | 128, global pooling.

    141K parameters; trains at about 1,000 images/s on 2 CPU cores with TensorFlow.
    """
    import keras

    def block(x, filters: int, name: str):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x)

    images = keras.Input(shape=(28, 28), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(images)
    x = keras.layers.Reshape((28, 28, 1), name="channels")(x)  # (28, 28, 1)
    x = block(x, 32, "b1a")
    x = block(x, 32, "b1b")
    x = keras.layers.MaxPooling2D(name="pool1")(x)  # (14, 14, 32)
    x = block(x, 64, "b2a")
    x = block(x, 64, "b2b")
    x = keras.layers.MaxPooling2D(name="pool2")(x)  # (7, 7, 64)
    x = block(x, 128, "b3")
    x = keras.layers.GlobalAveragePooling2D(name="pool3")(x)  # (128,)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    return keras.Model(images, outputs, name="cnn")


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "mlp",
            build_mlp,
            backend="jax",
            description="the reference MLP (Flatten, Dense 128, Dense 64, Dense 10 softmax)",
            cpu_cores=1,
        ),
        ModelSpec(
            "cnn",
            build_cnn,
            backend="tensorflow",  # oneDNN convolutions: 3-4x faster than XLA's on this CPU
            description="a fast CNN (5 conv layers with BatchNorm, global pooling; cosine AdamW, shifts, flips)",
        ),
    ]
}


def get(name: str) -> ModelSpec:
    """The registered model called `name`, or a clear error listing the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}"
        ) from None


def compile_predict(model: keras.Model, batch_size: int = 1000) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled inference function: uint8 images (n, 28, 28) -> float32 probabilities (n, 10).

    It calls the model directly as one compiled function per batch, padded to
    a power of two up to `batch_size`, avoiding `model.predict`'s per-call
    overhead and a recompilation for every new input size. `predict.warm()`
    compiles every batch shape ahead of time.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        @jax.jit
        def forward(trainable, non_trainable, images):
            return model.stateless_call(trainable, non_trainable, images, training=False)[0]

        def call(images: np.ndarray) -> np.ndarray:
            trainable = [v.value for v in model.trainable_variables]
            non_trainable = [v.value for v in model.non_trainable_variables]
            return np.asarray(forward(trainable, non_trainable, images))

    elif backend == "tensorflow":
        import tensorflow as tf

        forward_tf = tf.function(lambda images: model(images, training=False), jit_compile=False)

        def call(images: np.ndarray) -> np.ndarray:
            return forward_tf(images).numpy()

    else:
        raise FmnistError(f"unsupported Keras backend {backend!r}; use jax or tensorflow")

    buckets = [1 << i for i in range(batch_size.bit_length()) if 1 << i < batch_size] + [batch_size]

    def predict(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.uint8)
        outputs = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            # Pad to the next bucket size: few shapes, so few compilations, and a
            # single image does not pay for a full batch.
            size = next(b for b in buckets if b >= len(batch))
            if size > len(batch):
                batch = np.concatenate([batch, np.zeros((size - len(batch),) + batch.shape[1:], np.uint8)])
            outputs.append(call(batch)[: min(batch_size, len(images) - start)])
        if not outputs:
            return np.zeros((0, NUM_CLASSES), np.float32)
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def warm() -> None:
        """Compile every batch shape now, so that no request waits for a compilation."""
        for size in buckets:
            call(np.zeros((size, 28, 28), np.uint8))

    predict.warm = warm  # type: ignore[attr-defined]
    return predict


def count_parameters(model: keras.Model) -> int:
    return int(sum(np.prod(v.shape) for v in model.weights))


INFERENCE_BACKEND = "jax"  # measured fastest for inference on CPU, for every model here


def select_backend(model: str, requested: str | None = None, training: bool = True) -> str:
    """Fix the Keras backend for this process, before Keras is imported.

    The user's choice wins (`requested`, from `--backend`, then the
    `KERAS_BACKEND` environment variable); otherwise the backend measured
    fastest: the model's own for training, JAX for inference.
    """
    import os
    import sys

    from fmnist.config import BACKENDS

    spec = get(model)
    backend = requested or os.environ.get("KERAS_BACKEND") or (spec.backend if training else INFERENCE_BACKEND)
    if backend not in BACKENDS:
        raise ConfigError(f"unsupported backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            raise FmnistError(
                f"Keras is already running on {keras.backend.backend()!r} in this process; "
                f"start a new process to use {backend!r}"
            )
    os.environ["KERAS_BACKEND"] = backend
    cores = spec.cpu_cores if training else None
    if cores and hasattr(os, "sched_setaffinity") and "jax" not in sys.modules:
        # Threads inherit the affinity of the thread that starts them, so this
        # must happen before the backend starts its thread pools.
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    # Compiled XLA programs are kept between runs: compiling the training step
    # costs about a second, a large share of a 10-epoch MLP run.
    from fmnist.data import cache_dir

    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_dir() / "jax"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    # TensorFlow's C++ start-up chatter is noise for users; real errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if backend == "jax" and "tensorflow" not in sys.modules:
        # Keras imports TensorFlow whenever it is installed, even on JAX, only to
        # test whether objects are TensorFlow types (in saving, seeding and data
        # adapters). fmnist never passes TensorFlow objects on JAX, so telling
        # Keras's lazy loader that TensorFlow is absent saves ~2 s per process.
        from keras.src.utils import module_utils

        module_utils.tensorflow._available = False
    return backend
