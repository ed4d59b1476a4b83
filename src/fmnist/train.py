"""Fitting a model: the epoch loop, shuffling, validation, checkpoints and resume.

The loop is the same on every backend. Only the inner kernel differs: a
compiled function that runs a whole chunk of optimizer steps per call
(`jax.lax.scan` under `jax.jit` on JAX, a `tf.function` loop on TensorFlow),
because at batch 32 the per-step overhead of `model.fit` costs more than the
arithmetic. The kernel uses Keras's own model, loss and optimizer, so the math
is Keras's: categorical cross-entropy on one-hot labels (optionally smoothed),
Adam or AdamW, a constant or cosine learning rate. Augmentation happens on the
whole epoch's uint8 images before chunking (`augment.py`).

The order of images in each epoch is drawn from `(seed, epoch)` alone, so a
run resumed from its checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from fmnist import FmnistError
from fmnist.augment import augment
from fmnist.config import TrainConfig
from fmnist.models import NUM_CLASSES, compile_predict

CHUNK_STEPS = 250  # optimizer steps per compiled call: long enough to hide dispatch, short for the progress bar


def fit(
    config: TrainConfig,
    model: keras.Model,
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    checkpoint: Path | None = None,
) -> list[dict[str, float]]:
    """Train `model` in place and return the history, one dict per epoch.

    `x_*` are uint8 images (n, 28, 28), `y_*` uint8 labels (n,). If
    `checkpoint` exists, training resumes from it; after every epoch the
    checkpoint is rewritten atomically. With `config.time_limit`, the run
    trains as many epochs as fit in it (at most `config.epochs`), judged
    after every epoch (`planned_epochs`, which counts the epochs of a resumed
    run), and the learning-rate schedule is fitted to them, so it ends with
    the run on any machine. At least one epoch runs.
    """
    steps_per_epoch = -(-len(x_fit) // config.batch_size)
    optimizer = make_optimizer(config)
    loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    optimizer.build(model.trainable_variables)
    history: list[dict[str, float]] = []
    if checkpoint is not None and checkpoint.exists():
        history = _restore(checkpoint, model, optimizer)
    epochs = planned_epochs(config, history)
    kernel = _make_kernel(model, optimizer, loss_fn)
    predict = compile_predict(model)
    y_val_onehot = np.eye(NUM_CLASSES, dtype=np.float32)[y_val]
    validation_loss = keras.losses.CategoricalCrossentropy()  # plain cross-entropy, comparable across recipes
    on_terminal = sys.stderr.isatty()

    while len(history) < epochs:
        epoch = len(history)
        started = time.perf_counter()
        rng = np.random.default_rng([config.seed, epoch])
        order = rng.permutation(len(x_fit))
        epoch_images = augment(x_fit[order], rng, config.shift_pixels, config.flip, config.erase)
        # The schedule is computed here, step by step, for the epochs planned now: a
        # new plan needs no new compiled kernel.
        rates = learning_rates(config, steps_per_epoch, epochs, epoch * steps_per_epoch, steps_per_epoch)
        bar = _progress(epoch, epochs, steps_per_epoch, on_terminal)
        loss_sum, correct = 0.0, 0
        for images, labels, chunk_rates in _chunks(epoch_images, y_fit[order], rates, config.batch_size):
            chunk_loss, chunk_correct = kernel.train(images, labels, chunk_rates)
            loss_sum, correct = loss_sum + chunk_loss, correct + chunk_correct
            bar.update(len(images))
        kernel.sync()
        row = {"epoch": epoch + 1, "loss": loss_sum / len(x_fit), "accuracy": correct / len(x_fit)}
        if len(x_val):  # a run trained on every image (validation_split = 0) has no validation
            probabilities = predict(x_val)
            row["val_loss"] = float(validation_loss(y_val_onehot, probabilities))
            row["val_accuracy"] = float(np.mean(probabilities.argmax(axis=1) == y_val))
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        if checkpoint is not None:  # before the epoch is reported: a reported epoch is never lost
            _save(checkpoint, model, optimizer, history)
        summary = "  ".join(f"{key} {row[key]:.4f}" for key in row if key not in ("epoch", "seconds"))
        if on_terminal:
            short = {"loss": "loss", "accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc"}
            bar.set_postfix_str(
                " ".join(f"{name} {row[key]:.3f}" for key, name in short.items() if key in row), refresh=False
            )
            bar.close()
        else:
            print(f"epoch {epoch + 1}/{epochs}  {summary}  {row['seconds']:.1f}s", flush=True)
        planned = planned_epochs(config, history)
        if planned == len(history) < epochs:
            print(f"stopping after epoch {planned}/{epochs}: the next would end past the time limit", flush=True)
        elif planned != epochs:  # the schedule of the next epochs is fitted to the new plan
            print(f"{planned} epochs fit in the time limit of {config.time_limit:g} minutes", flush=True)
        epochs = planned
    return history


SAFETY_MARGIN = 1.03  # an epoch is planned 3% longer than the pace, for a machine's noise


def planned_epochs(config: TrainConfig, history: list[dict[str, float]]) -> int:
    """How many epochs the run trains: `config.epochs`, or with a time limit, as many as fit in it.

    Judged after every epoch from the time spent so far and the pace: the
    median epoch after the first, which also compiled the training step (so
    one slow epoch, a busy moment, barely moves it). Until a second epoch is
    timed, the first one's time only decides whether a second fits at all. It
    depends on the history alone, so a resumed run makes the same plan as the
    uninterrupted one.
    """
    if not config.time_limit or not history:  # no limit (None or 0), or nothing timed yet
        return config.epochs
    seconds = [row["seconds"] for row in history]
    left = 60 * config.time_limit - sum(seconds)
    if len(seconds) == 1:
        return config.epochs if left >= seconds[0] else 1
    pace = SAFETY_MARGIN * float(np.median(seconds[1:]))
    return min(config.epochs, len(seconds) + int(max(0.0, left) // pace))


def learning_rates(config: TrainConfig, steps_per_epoch: int, epochs: int, start: int, count: int) -> np.ndarray:
    """The learning rate of optimizer steps `start` to `start + count` of a run of `epochs`: float32 (count,).

    "constant": the recipe's rate. "cosine": Keras's `CosineDecay` with a
    warm-up, as a formula: a linear rise from 0 over `warmup_epochs`, then a
    half cosine that reaches 0 at the end of the run.
    """
    if config.schedule != "cosine":
        return np.full(count, config.learning_rate, np.float32)
    total = epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)  # at least one decay step
    step = np.arange(start, start + count, dtype=np.float64)
    rising = config.learning_rate * step / max(warmup, 1)
    progress = np.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
    falling = config.learning_rate * 0.5 * (1.0 + np.cos(np.pi * progress))
    return np.where(step < warmup, rising, falling).astype(np.float32)


def make_optimizer(config: TrainConfig) -> Any:
    """The recipe's optimizer. Its learning rate is a variable that the training kernel sets at every step."""
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=config.learning_rate, weight_decay=config.weight_decay)
    return keras.optimizers.Adam(learning_rate=config.learning_rate)


def _chunks(images: np.ndarray, labels: np.ndarray, rates: np.ndarray, batch_size: int):
    """Yield (images, labels, rates) shaped (steps, batch, ...), (steps, batch), (steps,): full chunks, then the rest.

    A last partial batch, as Keras's `fit` has, comes as its own chunk of one step.
    At most three shapes occur, so the kernel compiles at most three times.
    """
    full = len(images) // batch_size * batch_size
    chunk = CHUNK_STEPS * batch_size
    for start in range(0, full, chunk):
        stop = min(start + chunk, full)
        yield (
            images[start:stop].reshape(-1, batch_size, *images.shape[1:]),
            labels[start:stop].reshape(-1, batch_size),
            rates[start // batch_size : stop // batch_size],
        )
    if full < len(images):
        yield images[full:][None], labels[full:][None], rates[-1:]


def _progress(epoch: int, epochs: int, steps: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=steps,
        desc=f"epoch {epoch + 1}/{epochs}",
        unit="step",
        disable=not enabled,
        leave=True,
        file=sys.stderr,
        dynamic_ncols=True,
    )


class _Kernel:
    """A backend's compiled training steps over the model's own variables."""

    # (images, labels, learning rates) of a chunk of steps -> (summed loss, correct predictions)
    train: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[float, int]]

    def sync(self) -> None:
        """Write the kernel's state into the Keras variables."""


def _make_kernel(model: keras.Model, optimizer: Any, loss_fn: Any) -> _Kernel:
    backend = keras.backend.backend()
    if backend == "jax":
        return _JaxKernel(model, optimizer, loss_fn)
    if backend == "tensorflow":
        return _TensorFlowKernel(model, optimizer, loss_fn)
    raise ValueError(f"unsupported Keras backend {backend!r}; use jax or tensorflow")


class _JaxKernel(_Kernel):
    """Stateless Keras calls inside `jax.lax.scan`: one XLA program per chunk of steps."""

    def __init__(self, model: keras.Model, optimizer: Any, loss_fn: Any) -> None:
        import jax
        import jax.numpy as jnp

        self.model, self.optimizer = model, optimizer

        def loss_of(trainable, non_trainable, images, labels):
            probabilities, non_trainable = model.stateless_call(
                trainable, non_trainable, images, training=True
            )
            loss = loss_fn(jax.nn.one_hot(labels, NUM_CLASSES), probabilities)
            return loss, (probabilities, non_trainable)

        gradient = jax.value_and_grad(loss_of, has_aux=True)
        # The learning rate is one of the optimizer's variables; each step sets it.
        rate_index = next(i for i, v in enumerate(optimizer.variables) if v is optimizer.learning_rate)

        def step(state, batch):
            trainable, non_trainable, optimizer_state = state
            images, labels, rate = batch  # (batch, 28, 28) uint8, (batch,) uint8, () float32
            (loss, (probabilities, non_trainable)), grads = gradient(
                trainable, non_trainable, images, labels
            )
            optimizer_state = [rate if i == rate_index else v for i, v in enumerate(optimizer_state)]
            trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, grads, trainable)
            correct = jnp.sum(jnp.argmax(probabilities, axis=1) == labels)
            return (trainable, non_trainable, optimizer_state), (loss * images.shape[0], correct)

        def train_chunk(state, images, labels, rates):
            state, (losses, correct) = jax.lax.scan(step, state, (images, labels, rates))
            return state, jnp.sum(losses), jnp.sum(correct)

        self._train_chunk = jax.jit(train_chunk)
        # The state starts from the Keras variables (a resumed run has restored them).
        self.state = (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in optimizer.variables],
        )

    def train(self, images: np.ndarray, labels: np.ndarray, rates: np.ndarray) -> tuple[float, int]:
        self.state, loss_sum, correct = self._train_chunk(self.state, images, labels, rates)
        return float(loss_sum), int(correct)

    def sync(self) -> None:
        trainable, non_trainable, optimizer_state = self.state
        for variables, values in (
            (self.model.trainable_variables, trainable),
            (self.model.non_trainable_variables, non_trainable),
            (self.optimizer.variables, optimizer_state),
        ):
            for variable, value in zip(variables, values):
                variable.assign(value)


class _TensorFlowKernel(_Kernel):
    """A `tf.function` whose loop runs a chunk of steps in one graph call."""

    def __init__(self, model: keras.Model, optimizer: Any, loss_fn: Any) -> None:
        import tensorflow as tf

        def train_chunk(images, labels, rates):
            loss_sum = tf.constant(0.0)
            correct = tf.constant(0, tf.int64)
            for index in tf.range(tf.shape(images)[0]):
                batch_images, batch_labels = images[index], tf.cast(labels[index], tf.int64)
                optimizer.learning_rate.assign(rates[index])  # the learning-rate variable
                with tf.GradientTape() as tape:
                    probabilities = model(batch_images, training=True)
                    loss = loss_fn(tf.one_hot(batch_labels, NUM_CLASSES), probabilities)
                grads = tape.gradient(loss, model.trainable_variables)
                optimizer.apply_gradients(zip(grads, model.trainable_variables))
                loss_sum += loss * tf.cast(tf.shape(batch_images)[0], tf.float32)
                correct += tf.reduce_sum(
                    tf.cast(tf.argmax(probabilities, axis=1) == batch_labels, tf.int64)
                )
            return loss_sum, correct

        # XLA made TensorFlow's CPU training slower here, so the graph runs as is.
        self._train_chunk = tf.function(train_chunk, jit_compile=False, reduce_retracing=True)

    def train(self, images: np.ndarray, labels: np.ndarray, rates: np.ndarray) -> tuple[float, int]:
        loss_sum, correct = self._train_chunk(images, labels, rates)
        return float(loss_sum), int(correct)


def _save(path: Path, model: keras.Model, optimizer: Any, history: list[dict[str, float]]) -> None:
    """Write weights, optimizer state and history to `path`, atomically."""
    arrays = {f"model_{i}": np.asarray(v.value) for i, v in enumerate(model.weights)}
    arrays |= {f"optimizer_{i}": np.asarray(v.value) for i, v in enumerate(optimizer.variables)}
    arrays["history"] = np.frombuffer(json.dumps(history).encode(), np.uint8)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        np.savez(file, **arrays)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _restore(path: Path, model: keras.Model, optimizer: Any) -> list[dict[str, float]]:
    with np.load(path) as arrays:
        variables = [(f"model_{i}", v) for i, v in enumerate(model.weights)]
        variables += [(f"optimizer_{i}", v) for i, v in enumerate(optimizer.variables)]
        saved = {key for key in arrays.files if key != "history"}
        if saved != {key for key, _ in variables} or any(arrays[key].shape != v.shape for key, v in variables):
            raise FmnistError(
                f"{path} does not fit this model {model.name!r} (saved by a different version of it?); "
                "start a new run"
            )
        for key, variable in variables:
            variable.assign(arrays[key])
        return json.loads(arrays["history"].tobytes())
