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
            # float32 even if trained with precision = "bfloat16", as every model's output
            keras.layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="probabilities"),
        ],
        name="mlp",
    )


def _conv_bn_relu(x, filters: int, name: str):
    """3x3 convolution (no bias: BatchNorm shifts), BatchNorm, ReLU."""
    import keras

    from fmnist.layers import BatchNorm

    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = BatchNorm(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _images():
    """The uint8 input and its scaled (28, 28, 1) float view."""
    import keras

    images = keras.Input(shape=(28, 28), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(images)
    return images, keras.layers.Reshape((28, 28, 1), name="channels")(x)


def _probabilities(x):
    """The classifier; in float32 even when the rest computes in bfloat16."""
    import keras

    return keras.layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="probabilities")(x)


def build_cnn() -> keras.Model:
    """The fast model: 3x3 convolutions with BatchNorm, 32-32 | 64-64 | 128, a 3x3x128 map into the classifier.

    151K parameters. Flattening the last map keeps where things are (a collar,
    a heel), which global pooling would average away: measured on the
    validation split, 93.8% against 93.2% for the same net with global pooling.
    """
    import keras

    images, x = _images()  # (28, 28, 1)
    x = _conv_bn_relu(x, 32, "b1a")
    x = _conv_bn_relu(x, 32, "b1b")
    x = keras.layers.MaxPooling2D(name="pool1")(x)  # (14, 14, 32)
    x = _conv_bn_relu(x, 64, "b2a")
    x = _conv_bn_relu(x, 64, "b2b")
    x = keras.layers.MaxPooling2D(name="pool2")(x)  # (7, 7, 64)
    x = _conv_bn_relu(x, 128, "b3")
    x = keras.layers.MaxPooling2D(name="pool3")(x)  # (3, 3, 128)
    x = keras.layers.Flatten(name="flatten")(x)  # (1152,)
    return keras.Model(images, _probabilities(x), name="cnn")


def build_resnet(width: int = 32) -> keras.Model:
    """The best model: a ResNet-9-style net, widths w | 2w + residual | 4w + residual | 8w + residual.

    `width` (w) is the first layer's channels; 32 gives 1.94M parameters.

    Each stage is a convolution, 2x2 max pooling, then (from the second) a
    residual block of two convolutions; global max pooling feeds the classifier.
    """
    import keras

    def residual(x, filters: int, name: str):
        y = _conv_bn_relu(x, filters, f"{name}a")
        y = _conv_bn_relu(y, filters, f"{name}b")
        return keras.layers.Add(name=f"{name}_add")([x, y])

    images, x = _images()  # (28, 28, 1)
    x = _conv_bn_relu(x, width, "prep")
    x = _conv_bn_relu(x, 2 * width, "s1")
    x = keras.layers.MaxPooling2D(name="pool1")(x)  # (14, 14, 2w)
    x = residual(x, 2 * width, "r1")
    x = _conv_bn_relu(x, 4 * width, "s2")
    x = keras.layers.MaxPooling2D(name="pool2")(x)  # (7, 7, 4w)
    x = residual(x, 4 * width, "r2")
    x = _conv_bn_relu(x, 8 * width, "s3")
    x = keras.layers.MaxPooling2D(name="pool3")(x)  # (3, 3, 8w)
    x = residual(x, 8 * width, "r3")
    x = keras.layers.GlobalMaxPooling2D(name="pool4")(x)  # (8w,)
    return keras.Model(images, _probabilities(x), name="resnet")


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
            description="the fast model: a 5-layer CNN with BatchNorm (bfloat16 training, test-time averaging)",
        ),
        ModelSpec(
            "resnet",
            build_resnet,
            backend="tensorflow",
            description="the best model: a ResNet-9-style residual net (bfloat16 training, test-time averaging)",
        ),
    ]
}


def build(name: str, precision: str = "float32") -> keras.Model:
    """A new model `name`, computing in `precision` (its weights are float32 either way)."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        return get(name).build()
    finally:
        keras.config.set_dtype_policy(previous)


def for_inference(model: keras.Model, name: str, flip_average: bool = False, shift_average: int = 0) -> keras.Model:
    """The model to save, score and serve, from a trained `model`.

    Always float32 (a copy with the same weights if it trained in bfloat16).
    With `flip_average`, it averages the probabilities of each image and its
    mirror image; with `shift_average` = s, also of their copies shifted s
    pixels up, down, left and right (test-time augmentation, for models
    trained with flips and shifts). The averaging is part of the model, so
    every user of the saved file gets the same predictions the test set got.
    """
    import keras

    from fmnist.layers import Mirror, Shift

    if model.dtype_policy.name != "float32":
        copy = build(name)
        copy.set_weights(model.get_weights())
        model = copy
    if not flip_average and not shift_average:
        return model
    images = keras.Input(shape=(28, 28), dtype="uint8", name="image")
    originals = {"image": images, "mirror": Mirror(name="mirror")(images)} if flip_average else {"image": images}
    s = shift_average
    shifts = {"up": (-s, 0), "down": (s, 0), "left": (0, -s), "right": (0, s)} if s else {}
    views = []
    for label, original in originals.items():
        views.append(original)
        views += [Shift(dy, dx, name=f"{label}_{where}")(original) for where, (dy, dx) in shifts.items()]
    probabilities = keras.layers.Average(name="view_average")([model(view) for view in views])
    return keras.Model(images, probabilities, name=model.name)


def network_of(model: keras.Model) -> keras.Model:
    """The network inside a model that averages views (`for_inference`), or `model` itself."""
    import keras

    inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return inner[0] if inner else model


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
