"""Every registered model: builds, forward pass contract, one step learns, save/load round trip."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from fmnist import ConfigError, FmnistError, config, models, train

RNG = np.random.default_rng(0)


@pytest.fixture(params=sorted(models.MODELS))
def spec(request: pytest.FixtureRequest) -> models.ModelSpec:
    return models.MODELS[request.param]


def test_mlp_is_exactly_the_seed_architecture() -> None:
    model = models.build_mlp()
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [128, 64, 10]
    assert [layer.activation.__name__ for layer in dense] == ["relu", "relu", "softmax"]
    assert models.count_parameters(model) == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    # Scaling to [0, 1] happens inside the model, so it takes raw uint8 pixels.
    image = RNG.integers(0, 256, (1, 28, 28), dtype=np.uint8)
    scaled = keras.Sequential(model.layers[:2])(image)
    np.testing.assert_allclose(np.asarray(scaled), image.reshape(1, -1) / 255.0, rtol=1e-6)


def test_forward_on_random_uint8_gives_probabilities(spec: models.ModelSpec) -> None:
    model = spec.build()
    images = RNG.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    probabilities = models.compile_predict(model, batch_size=4)(images)  # a padded last batch
    assert probabilities.shape == (7, 10)
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probabilities, np.asarray(model(images)), atol=1e-6)
    assert models.compile_predict(model)(images[:0]).shape == (0, 10)


def test_one_training_step_lowers_the_loss(spec: models.ModelSpec) -> None:
    keras.utils.set_random_seed(1)
    model = spec.build()
    images = RNG.integers(0, 256, (32, 28, 28), dtype=np.uint8)
    labels = RNG.integers(0, 10, 32).astype(np.uint8)
    settings = config.TrainConfig(model=spec.name, epochs=2, batch_size=32)  # one step per epoch
    history = train.fit(settings, model, images, labels, images, labels)
    # Each epoch's loss is measured in training mode during its one step, so the
    # second is the loss after the first step's update, on the same batch.
    assert history[1]["loss"] < history[0]["loss"]


def test_save_and_load_give_identical_predictions(spec: models.ModelSpec, tmp_path: Path) -> None:
    model = spec.build()
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    images = RNG.integers(0, 256, (16, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(models.compile_predict(model)(images), models.compile_predict(loaded)(images))


def test_unknown_model_names_are_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown model 'vgg'; known models: cnn, mlp, resnet"):
        models.get("vgg")


def test_chunks_cover_every_image_once_including_a_partial_batch() -> None:
    images = np.arange(70 * 2 * 2).reshape(70, 2, 2)
    labels = np.arange(70)
    rates = np.arange(3, dtype=np.float32)  # one per step: 2 full batches and a partial one
    chunks = list(train._chunks(images, labels, rates, batch_size=32))
    assert [chunk_labels.shape for _, chunk_labels, _ in chunks] == [(2, 32), (1, 6)]
    np.testing.assert_array_equal(np.concatenate([c.ravel() for _, c, _ in chunks]), labels)
    # Each step gets its own learning rate, in order.
    assert [chunk_rates.tolist() for _, _, chunk_rates in chunks] == [[0.0, 1.0], [2.0]]


CROSS_BACKEND = """
import sys, numpy as np
from fmnist import models
models.select_backend(sys.argv[1], "tensorflow", training=False)
import keras
keras.utils.set_random_seed(3)
model = models.get(sys.argv[1]).build()
model.save(sys.argv[2])
images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
np.save(sys.argv[3], models.compile_predict(model)(images))
"""


def test_a_model_saved_on_tensorflow_loads_on_jax_with_the_same_classes(spec, tmp_path: Path) -> None:
    import subprocess
    import sys

    path, probabilities = tmp_path / "model.keras", tmp_path / "tf.npy"
    subprocess.run(
        [sys.executable, "-c", CROSS_BACKEND, spec.name, str(path), str(probabilities)],
        check=True, capture_output=True, timeout=300,
    )
    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    import fmnist.layers  # noqa: F401  (fmnist's own layers, as runs.load_model imports them)

    on_jax = models.compile_predict(keras.saving.load_model(path, safe_mode=True))(images)
    on_tensorflow = np.load(probabilities)
    np.testing.assert_array_equal(on_jax.argmax(axis=1), on_tensorflow.argmax(axis=1))
    np.testing.assert_allclose(on_jax, on_tensorflow, atol=1e-5)


def test_a_recipe_with_every_option_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Schedule, AdamW, label smoothing and augmentation: an interrupted fit resumes to the same history."""
    settings = config.TrainConfig(
        epochs=3, batch_size=16, optimizer="adamw", weight_decay=0.01, schedule="cosine", warmup_epochs=0.5,
        label_smoothing=0.1, shift_pixels=2, flip=True, erase=0.3,
    )
    images = RNG.integers(0, 256, (96, 28, 28), dtype=np.uint8)
    labels = RNG.integers(0, 10, 96).astype(np.uint8)

    def run(checkpoint: Path | None) -> list[dict]:
        keras.utils.set_random_seed(5)
        return train.fit(settings, models.build_mlp(), images, labels, images[:32], labels[:32], checkpoint)

    uninterrupted = run(None)
    checkpoint = tmp_path / "checkpoint.npz"
    real_save = train._save

    def save_then_stop(*args) -> None:
        real_save(*args)
        raise KeyboardInterrupt  # as if killed right after the first checkpoint

    monkeypatch.setattr(train, "_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint)
    monkeypatch.setattr(train, "_save", real_save)
    resumed = run(checkpoint)
    strip = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]  # noqa: E731
    assert strip(resumed) == strip(uninterrupted)


@pytest.mark.parametrize("epochs, steps_per_epoch, warmup_epochs", [(5, 7, 1), (3, 10, 0.5), (4, 6, 0.0), (1, 1, 0.0)])
def test_the_cosine_schedule_is_kerass(epochs: int, steps_per_epoch: int, warmup_epochs: float) -> None:
    settings = config.TrainConfig(
        epochs=epochs, learning_rate=0.003, schedule="cosine", warmup_epochs=warmup_epochs
    )
    total = epochs * steps_per_epoch
    warmup = int(round(warmup_epochs * steps_per_epoch))
    keras_schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else 0.003, decay_steps=max(total - warmup, 1),
        warmup_target=0.003 if warmup else None, warmup_steps=warmup,
    )
    expected = [float(keras_schedule(step)) for step in range(total)]
    rates = train.learning_rates(settings, steps_per_epoch, epochs, 0, total)
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-9)
    # Any stretch of steps is the same slice of the run's schedule.
    np.testing.assert_array_equal(train.learning_rates(settings, steps_per_epoch, epochs, 1, total - 1), rates[1:])


def test_a_warm_up_as_long_as_the_run_still_leaves_a_decay_step() -> None:
    settings = config.TrainConfig(epochs=1, schedule="cosine", warmup_epochs=0.9)
    rates = train.learning_rates(settings, steps_per_epoch=3, epochs=1, start=0, count=3)  # warm-up rounds to 3
    np.testing.assert_allclose(rates, [0.0, 0.0005, 0.001])  # 2 warm-up steps, then the peak


def test_a_time_limit_ends_the_run_with_the_epochs_that_fit(tmp_path: Path) -> None:
    images = RNG.integers(0, 256, (64, 28, 28), dtype=np.uint8)
    labels = RNG.integers(0, 10, 64).astype(np.uint8)
    fit = lambda minutes, checkpoint=None: train.fit(  # noqa: E731
        config.TrainConfig(epochs=4, batch_size=16, time_limit=minutes), models.build_mlp(),
        images, labels, images[:16], labels[:16], checkpoint,
    )
    assert len(fit(1e-9)) == 1  # at least one epoch
    assert len(fit(60.0)) == 4  # a limit that is never reached changes nothing
    # Time spent before a resume counts: a checkpoint whose epochs used up the limit ends the run.
    checkpoint = tmp_path / "checkpoint.npz"
    first = fit(None, checkpoint)
    with np.load(checkpoint) as saved:
        arrays = dict(saved)
    arrays["history"] = np.frombuffer(json.dumps(first[:2]).encode(), np.uint8)
    np.savez(checkpoint, **arrays)
    assert len(fit((sum(row["seconds"] for row in first[:2]) + 1e-6) / 60, checkpoint)) == 2


def _timed_history(*seconds: float) -> list[dict[str, float]]:
    return [{"epoch": i + 1, "seconds": s} for i, s in enumerate(seconds)]


def test_the_plan_fits_the_epochs_into_the_time_limit() -> None:
    settings = config.TrainConfig(epochs=100, time_limit=10.0)  # 600 s
    assert train.planned_epochs(settings, []) == 100  # nothing timed yet
    assert train.planned_epochs(settings, _timed_history(80)) == 100  # the first epoch also compiles...
    assert train.planned_epochs(settings, _timed_history(700)) == 1  # ...but says whether a second fits
    # 80 + 50 s spent, then 470 s at 1.03 * 50 s per epoch: 9 more.
    assert train.planned_epochs(settings, _timed_history(80, 50)) == 11
    # Judged again after every epoch at the median pace: one slow epoch (a recompilation,
    # a busy moment) costs its own extra time, not its pace...
    assert train.planned_epochs(settings, _timed_history(80, 50, 50, 70)) == 10
    # ...a machine that stays slower shortens the plan, a faster one lengthens it...
    assert train.planned_epochs(settings, _timed_history(80, 50, 100, 100)) == 6
    assert train.planned_epochs(settings, _timed_history(80, 50, 20, 20)) == 24
    # ...and it never goes below the epochs already run.
    assert train.planned_epochs(settings, _timed_history(80, 50, 500, 500)) == 4
    # The recipe's epochs stay the most it trains, and without a limit they are the plan.
    assert train.planned_epochs(config.TrainConfig(epochs=5, time_limit=10.0), _timed_history(1, 1)) == 5
    assert train.planned_epochs(config.TrainConfig(epochs=5), _timed_history(500, 500)) == 5


def test_the_run_says_whether_its_schedule_ended_within_the_time_limit() -> None:
    from fmnist import experiment

    settings = config.TrainConfig(epochs=100, time_limit=10.0)
    finished = experiment._selection(settings, _timed_history(80, *[50] * 10))  # the 11 planned epochs
    assert "the model after the last epoch" in finished and "11 of up to 100 epochs fit" in finished
    cut = experiment._selection(settings, _timed_history(700))  # one epoch longer than the limit
    assert "ended training before its learning-rate schedule, planned for 100 epochs, did" in cut
    assert experiment._selection(config.TrainConfig(), _timed_history(1, 1)).endswith("(no early stopping)")


def test_a_timed_run_trains_the_planned_epochs_on_a_schedule_fitted_to_them(monkeypatch) -> None:
    clock = iter(range(0, 10**6, 5))  # every reading of the clock is 5 s after the one before
    monkeypatch.setattr(train.time, "perf_counter", lambda: float(next(clock)))
    trained_rates = []
    real_make_kernel = train._make_kernel

    def recording_kernel(*args):
        kernel = real_make_kernel(*args)
        real_train = kernel.train
        kernel.train = lambda images, labels, rates: trained_rates.append(rates) or real_train(images, labels, rates)
        return kernel

    monkeypatch.setattr(train, "_make_kernel", recording_kernel)
    settings = config.TrainConfig(
        epochs=20, batch_size=16, optimizer="adamw", schedule="cosine", warmup_epochs=1, time_limit=1.0
    )
    images = RNG.integers(0, 256, (32, 28, 28), dtype=np.uint8)  # 2 steps per epoch
    labels = RNG.integers(0, 10, 32).astype(np.uint8)
    history = train.fit(settings, models.build_mlp(), images, labels, images[:16], labels[:16])
    planned = train.planned_epochs(settings, history)
    assert 2 < planned < 20 and len(history) == planned
    assert sum(row["seconds"] for row in history) <= 60
    rates = np.concatenate(trained_rates)
    assert len(rates) == 2 * planned
    # Planned after two epochs: those ran on the recipe's 20-epoch schedule, the rest on the fitted one,
    # whose last step is the last of the run.
    np.testing.assert_array_equal(rates[:4], train.learning_rates(settings, 2, 20, 0, 4))
    np.testing.assert_array_equal(rates[4:], train.learning_rates(settings, 2, planned, 4, 2 * planned - 4))
    assert rates[-1] < 0.05 * settings.learning_rate < rates[4]


def test_a_timed_run_resumed_after_its_plan_changed_ends_as_the_uninterrupted_one(monkeypatch, tmp_path) -> None:
    images = RNG.integers(0, 256, (32, 28, 28), dtype=np.uint8)
    labels = RNG.integers(0, 10, 32).astype(np.uint8)
    settings = config.TrainConfig(
        epochs=20, batch_size=16, optimizer="adamw", schedule="cosine", warmup_epochs=1, time_limit=1.0
    )

    def run(checkpoint: Path | None):
        clock = iter(range(0, 10**6, 5))  # every epoch takes 5 s, in every process
        monkeypatch.setattr(train.time, "perf_counter", lambda: float(next(clock)))
        keras.utils.set_random_seed(3)
        model = models.build_mlp()
        history = train.fit(settings, model, images, labels, images[:16], labels[:16], checkpoint)
        return history, models.compile_predict(model)(images)

    history, uninterrupted = run(None)
    assert 4 < len(history) < 20  # planned after the second epoch
    checkpoint, real_save, saves = tmp_path / "checkpoint.npz", train._save, []

    def save_then_stop(*args) -> None:
        real_save(*args)
        saves.append(1)
        if len(saves) == 4:
            raise KeyboardInterrupt  # killed after the fourth epoch, on the fitted schedule

    monkeypatch.setattr(train, "_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint)
    monkeypatch.setattr(train, "_save", real_save)
    resumed_history, resumed = run(checkpoint)
    assert len(resumed_history) == len(history)
    np.testing.assert_allclose(resumed, uninterrupted, rtol=1e-6)


def test_a_checkpoint_of_another_architecture_is_a_clear_error(tmp_path: Path) -> None:
    settings = config.TrainConfig(epochs=1, batch_size=16)
    images = RNG.integers(0, 256, (16, 28, 28), dtype=np.uint8)
    labels = RNG.integers(0, 10, 16).astype(np.uint8)
    checkpoint = tmp_path / "checkpoint.npz"
    train.fit(settings, models.build_mlp(), images, labels, images, labels, checkpoint)
    with pytest.raises(FmnistError, match="does not fit this model 'cnn'"):
        train.fit(config.TrainConfig(model="cnn", epochs=2, batch_size=16), models.build_cnn(),
                  images, labels, images, labels, checkpoint)
