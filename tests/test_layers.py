"""fmnist's own layers and the inference model: fused BatchNorm, mirroring, bfloat16 training."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest

from fmnist import models
from fmnist.layers import Mirror, Shift

RNG = np.random.default_rng(0)

# Runs on TensorFlow, where BatchNorm takes its fused path, in a process of its own.
FUSED_MATCHES_KERAS = """
import numpy as np
from fmnist import models
models.select_backend("cnn", "tensorflow")
import keras
import tensorflow as tf
from fmnist.layers import BatchNorm

fused = tf.compat.v1.nn.fused_batch_norm
calls = []
tf.compat.v1.nn.fused_batch_norm = lambda *args, **kwargs: calls.append(1) or fused(*args, **kwargs)

x = np.random.default_rng(0).normal(2.0, 3.0, (16, 7, 7, 5)).astype("float32")
ours, theirs = BatchNorm(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
for layer in (ours, theirs):
    layer.build(x.shape)
    layer.gamma.assign(np.linspace(0.5, 2.0, 5)); layer.beta.assign(np.linspace(-1.0, 1.0, 5))
np.testing.assert_allclose(np.asarray(ours(x, training=True)), np.asarray(theirs(x, training=True)), atol=1e-4)
assert calls == [1], "the fused kernel was not used"
np.testing.assert_allclose(ours.moving_mean.numpy(), theirs.moving_mean.numpy(), rtol=1e-5)
np.testing.assert_allclose(ours.moving_variance.numpy(), theirs.moving_variance.numpy(), rtol=1e-5)
inference = [np.asarray(layer(x, training=False)) for layer in (ours, theirs)]
np.testing.assert_allclose(*inference, rtol=1e-5, atol=1e-5)

# The fast model trains in bfloat16 on TensorFlow, and its float32 inference copy agrees with it.
from fmnist import config, train
keras.utils.set_random_seed(1)
model = models.build("cnn", "bfloat16")
assert model.dtype_policy.name == "mixed_bfloat16"
images = np.random.default_rng(1).integers(0, 256, (32, 28, 28), dtype=np.uint8)
labels = np.random.default_rng(2).integers(0, 10, 32).astype(np.uint8)
settings = config.TrainConfig(model="cnn", epochs=2, batch_size=16, precision="bfloat16", optimizer="adamw",
                              schedule="cosine", warmup_epochs=0.5)
optimizers = []
make_optimizer = train.make_optimizer
train.make_optimizer = lambda settings: optimizers.append(make_optimizer(settings)) or optimizers[-1]
history = train.fit(settings, model, images, labels, images, labels)
assert history[1]["loss"] < history[0]["loss"], history
# The TensorFlow kernel sets the learning rate at every step: the last step ran at the schedule's last rate.
(optimizer,) = optimizers
assert int(optimizer.iterations) == 4
assert float(optimizer.learning_rate) == train.learning_rates(settings, 2, 2, 3, 1)[0] > 0, optimizer.learning_rate
final = models.for_inference(model, "cnn")
assert final is not model and {layer.compute_dtype for layer in final.layers[1:]} == {"float32"}
for trained, copied in zip(model.get_weights(), final.get_weights()):
    np.testing.assert_array_equal(trained, copied)
mixed, full = np.asarray(model(images, training=False)), np.asarray(final(images, training=False))
assert np.mean(mixed.argmax(1) == full.argmax(1)) >= 0.9
np.testing.assert_allclose(mixed, full, atol=0.02)
print("ok")
"""


def test_fused_batch_norm_matches_keras_and_bfloat16_training_works_on_tensorflow() -> None:
    result = subprocess.run(
        [sys.executable, "-c", FUSED_MATCHES_KERAS], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_mirror_reverses_columns_only() -> None:
    images = RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Mirror()(images)), images[:, :, ::-1])


@pytest.mark.parametrize("dy, dx", [(1, 0), (-1, 0), (0, 2), (0, -2), (-1, 1)])
def test_shift_translates_and_fills_with_black(dy: int, dx: int) -> None:
    images = RNG.integers(1, 256, (3, 28, 28), dtype=np.uint8)
    expected = np.zeros_like(images)
    expected[:, max(dy, 0) : 28 + min(dy, 0), max(dx, 0) : 28 + min(dx, 0)] = images[
        :, max(-dy, 0) : 28 + min(-dy, 0), max(-dx, 0) : 28 + min(-dx, 0)
    ]
    np.testing.assert_array_equal(np.asarray(Shift(dy, dx)(images)), expected)
    assert (np.asarray(Shift(dy, dx)(images)) == 0).sum() == (expected == 0).sum() > 0


def test_flip_average_predicts_the_mean_over_the_image_and_its_mirror(tmp_path) -> None:
    keras.utils.set_random_seed(2)
    model = models.build("cnn")
    averaged = models.for_inference(model, "cnn", flip_average=True)
    assert models.count_parameters(averaged) == models.count_parameters(model)
    images = RNG.integers(0, 256, (9, 28, 28), dtype=np.uint8)
    expected = (np.asarray(model(images)) + np.asarray(model(images[:, :, ::-1]))) / 2
    predict = models.compile_predict(averaged, batch_size=4)
    np.testing.assert_allclose(predict(images), expected, atol=1e-6)
    # It is saved and loaded as one model, so every user of the file averages the same way.
    averaged.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(models.compile_predict(loaded)(images), expected, atol=1e-6)
    assert models.for_inference(model, "cnn") is model  # float32 without averaging: unchanged


def test_shift_average_predicts_the_mean_over_ten_views_and_survives_saving(tmp_path) -> None:
    keras.utils.set_random_seed(3)
    model = models.build("cnn")
    averaged = models.for_inference(model, "cnn", flip_average=True, shift_average=1)
    images = RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    views = []
    for original in (padded, padded[:, :, ::-1]):
        for dy, dx in [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]:  # the image moved up, down, left, right
            views.append(original[:, 1 - dy : 29 - dy, 1 - dx : 29 - dx])
    expected = np.mean([np.asarray(model(np.ascontiguousarray(view))) for view in views], axis=0)
    np.testing.assert_allclose(models.compile_predict(averaged, batch_size=4)(images), expected, atol=1e-6)
    averaged.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(models.compile_predict(loaded)(images), expected, atol=1e-6)
    # Shifts alone: the image and its four shifted copies.
    shifted = models.for_inference(model, "cnn", shift_average=1)
    unflipped = np.mean([np.asarray(model(np.ascontiguousarray(view))) for view in views[:5]], axis=0)
    np.testing.assert_allclose(models.compile_predict(shifted)(images), unflipped, atol=1e-6)
