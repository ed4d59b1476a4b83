"""Settings: the seed's defaults, TOML layering, and one-line errors with exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmnist import ConfigError, cli, config, train


def test_defaults_are_the_seed_scripts_hyperparameters() -> None:
    settings = config.resolve()
    assert (settings.model, settings.epochs, settings.batch_size) == ("mlp", 10, 32)
    assert settings.learning_rate == 0.001  # Adam's Keras default
    assert settings.validation_split == 0.2


def test_layers_override_in_order(tmp_path: Path) -> None:
    user = tmp_path / "mine.toml"
    user.write_text("epochs = 3\nbatch_size = 64\n")
    settings = config.resolve(user, batch_size=128, seed=None)
    assert settings.epochs == 3  # from the user's file
    assert settings.batch_size == 128  # the command line wins
    assert settings.seed == config.TrainConfig.seed  # None means "not given"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("epochs = -1\n", "epochs must be at least 1"),
        ("epochs = 'ten'\n", "epochs must be an integer"),
        ("validation_split = 1.5\n", "validation_split must be a fraction"),
        ("learning_rate = 0\n", "learning_rate must be a number"),
        ("optimiser = 'sgd'\n", "unknown setting(s) optimiser"),
        ("epochs = \n", "is not valid TOML"),
        ("model = 'resnet9000'\n", "unknown model 'resnet9000'"),
        ("seed = -1\n", "seed must be within 0 to 2**32 - 1"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert cli.main(["train", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert expected in error
    assert error.count("\n") == 1 and "Traceback" not in error


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--epochs", "-3"], "expected a positive integer"),
        (["train", "--model", "nope"], "unknown model 'nope'; known models: cnn, mlp, resnet"),
        (["train", "--backend", "torch"], "unsupported backend 'torch'"),
        (["train", "--config", "/no/such/file.toml"], "config file not found"),
        (["train", "--no-such-flag"], "unrecognized arguments"),
        (["train", "--time-limit", "-1"], "expected a number >= 0"),
        (["bench", "accuracy", "--budget-minutes", "0"], "expected a positive number"),
        (["bench", "accuracy", "--models", "mlp,vgg"], "unknown model 'vgg'"),
        (["bench", "accuracy", "--models", ","], "expected comma-separated names"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_command_lines_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture, argv: list[str], expected: str
) -> None:
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert expected in error
    assert error.count("\n") == 1 and "Traceback" not in error


def test_an_unreadable_config_file(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory.toml"
    directory.mkdir()
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.resolve(directory)


@pytest.mark.parametrize("model", sorted(__import__("fmnist.models").models.MODELS))
def test_every_model_has_a_valid_recipe(model: str) -> None:
    settings = config.resolve(model=model)
    assert settings.model == model
    assert config.model_recipe(model), f"fmnist/configs/{model}.toml is missing"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("optimizer = 'sgd'\n", "optimizer must be one of adam, adamw"),
        ("schedule = 'step'\n", "schedule must be one of constant, cosine"),
        ("label_smoothing = 1.0\n", "label_smoothing must be below 1"),
        ("shift_pixels = 20\n", "shift_pixels must be within 0-8"),
        ("flip = 'yes'\n", "flip must be true or false"),
        ("schedule = 'cosine'\nwarmup_epochs = 20\n", "warmup_epochs must be shorter"),
        ("weight_decay = -1\n", "weight_decay must be a number >= 0"),
        ("weight_decay = 0.1\n", "weight_decay applies to optimizer = 'adamw' only"),
        ("warmup_epochs = 1\n", "warmup_epochs applies to schedule = 'cosine' only"),
        ("precision = 'float16'\n", "precision must be one of float32, bfloat16"),
        ("flip_average = 1\n", "flip_average must be true or false"),
        ("shift_average = 5\n", "shift_average must be within 0-4"),
        ("shift_average = 1.5\n", "shift_average must be an integer"),
        ("time_limit = -1\n", "time_limit must be a number of minutes >= 0"),
        ("time_limit = '5 min'\n", "time_limit must be a number of minutes >= 0"),
    ],
)
def test_bad_recipe_values_are_clear_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        config.resolve(path)


def test_the_packaged_recipe_matches_the_defaults() -> None:
    recipe = config.model_recipe("mlp")
    defaults = config.TrainConfig()
    assert {key: getattr(defaults, key) for key in recipe} == recipe


def test_the_seed_command_trains_like_fmnist_train(tmp_path: Path, real_data_dir: Path) -> None:
    import json
    import subprocess
    import sys

    from conftest import ROOT, SMALL

    out = tmp_path / "seed-run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "fashion_mnist_classifier.py"), "--epochs", "1", "--out", str(out), *SMALL],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" in result.stdout
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["model"] == "mlp" and metadata["config"]["batch_size"] == 32


def test_the_time_limit_flag_overrides_the_recipe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert config.resolve(model="resnet").time_limit == 57  # the best model's recipe fills the hour
    from fmnist import experiment

    trained = []
    monkeypatch.setattr(experiment, "train_run", lambda settings, **_: trained.append(settings) or tmp_path)
    assert cli.main(["train", "--time-limit", "2.5", "--epochs", "30"]) == 0
    assert (trained[0].time_limit, trained[0].epochs) == (2.5, 30)
    assert cli.main(["train", "--model", "mlp", "--time-limit", "0"]) == 0  # 0: no limit
    assert train.planned_epochs(trained[1], [{"seconds": 1e9}] * 2) == trained[1].epochs


def test_models_lists_each_models_size_backend_and_training_length(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["model", "parameters", "trains", "on"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"mlp", "cnn", "resnet"}
    assert "109,386  jax" in rows["mlp"] and "10 epochs " in rows["mlp"]
    assert "1,943,722  tensorflow" in rows["resnet"] and "<= 100 epochs, 57 min" in rows["resnet"]
