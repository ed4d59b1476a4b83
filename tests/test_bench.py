"""`fmnist bench accuracy`: real `fmnist train` processes, tabulated and plotted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmnist import FmnistError, bench, runs


def test_bench_accuracy_trains_each_seed_and_writes_the_table_and_plot(tmp_path: Path, real_data_dir: Path) -> None:
    markdown = tmp_path / "docs" / "BENCHMARKS.md"
    # A budget far below one epoch: each run stops after its first epoch (a few seconds).
    summary = bench.accuracy(["mlp"], seeds=2, budget_minutes=1e-4, runs_root=tmp_path / "runs", markdown=markdown)

    (result,) = summary["results"]
    assert [run["seed"] for run in result["runs"]] == [0, 1]
    assert [run["epochs_trained"] for run in result["runs"]] == [1, 1]
    for run in result["runs"]:
        metadata = runs.read_metadata(Path(summary["runs_folder"]) / run["run"])
        assert metadata["seed"] == run["seed"] and metadata["model"] == "mlp"
        assert run["test_accuracy"] == metadata["metrics"]["test"]["accuracy"]
        assert run["machine"] == metadata["machine"]["cpu"]
        assert 0.5 < run["test_accuracy"] < 1 and run["minutes"] > run["fit_minutes"] > 0
    assert result["runs"][0]["test_accuracy"] != result["runs"][1]["test_accuracy"]  # seeds differ
    assert result["test_accuracy_std"] > 0 and result["inference_images_per_second"] > 1000
    assert "ended training before its learning-rate schedule" in result["selection"]

    text = markdown.read_text()
    assert "fmnist bench accuracy --models mlp --seeds 2 --budget-minutes 0.0001" in text
    assert "| mlp | 109,386 | jax | 1 |" in text
    assert "as many of up to 10 epochs as fit in 0.0001 minutes of training" in text
    assert json.loads(markdown.with_suffix(".json").read_text())["results"][0]["runs"] == result["runs"]
    assert (markdown.parent / "accuracy_vs_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # An interrupted benchmark continues from its ledger, with its own settings.
    root = Path(summary["runs_folder"])
    ledger = json.loads((root / "bench.json").read_text())
    ledger["runs"].pop()  # as if killed after seed 1 finished but before it was recorded
    del ledger["runs"][0]["machine"]  # as a ledger written before runs recorded their CPU
    (root / "bench.json").write_text(json.dumps(ledger))
    (root / "mlp-seed1.partial").mkdir()
    with pytest.raises(FmnistError, match="was run with --models mlp --seeds 2 --budget-minutes 0.0001"):
        bench.accuracy(["mlp"], seeds=3, budget_minutes=1e-4, markdown=markdown, resume=root)
    resumed = bench.accuracy(None, seeds=2, budget_minutes=1e-4, markdown=markdown, resume=root)
    runs_after = resumed["results"][0]["runs"]
    assert [run["seed"] for run in runs_after] == [0, 1]
    assert runs_after[0] == result["runs"][0]  # kept, not retrained
    assert runs_after[1]["minutes"] != result["runs"][1]["minutes"]  # unrecorded: trained again
    assert not (root / "mlp-seed1.partial").exists() and (root / "mlp-seed1" / "model.keras").is_file()


def test_a_folder_without_a_ledger_is_not_resumed(tmp_path: Path) -> None:
    with pytest.raises(FmnistError, match="is not a benchmark folder to resume"):
        bench.accuracy(["mlp"], resume=tmp_path, markdown=None)


def test_a_resumed_benchmark_keeps_its_settings_and_may_add_models(tmp_path: Path) -> None:
    recorded = {"models": ["resnet"], "seeds": 3, "budget_minutes": None}
    assert bench._resumed_settings(tmp_path, recorded, None, 3, None) == recorded
    added = bench._resumed_settings(tmp_path, recorded, ["mlp", "cnn", "resnet"], 3, None)
    assert added == {"models": ["resnet", "mlp", "cnn"], "seeds": 3, "budget_minutes": None}
    for seeds, budget in ((2, None), (3, 5.0)):
        with pytest.raises(FmnistError, match="was run with --models resnet --seeds 3; resume it"):
            bench._resumed_settings(tmp_path, recorded, ["resnet"], seeds, budget)


def _summary(cpus: list[str]) -> dict:
    from fmnist import config

    runs_ = [
        {"seed": seed, "minutes": 1.0, "epochs_trained": 10, "test_accuracy": 0.88, "validation_accuracy": 0.89,
         "peak_mb": 500.0, "machine": cpu}
        for seed, cpu in enumerate(cpus)
    ]
    result = {
        "model": "mlp", "description": "the reference MLP", "parameters": 109_386, "backend": "jax",
        "recipe": config.TrainConfig().to_dict(), "selection": "the model after the last epoch", "runs": runs_,
        "test_accuracy_mean": 0.88, "test_accuracy_std": 0.0, "validation_accuracy_mean": 0.89,
        "validation_images": 12_000, "minutes_mean": 1.0, "inference_images_per_second": 1e5,
    }
    return {
        "machine": {"cpu": "CPU A", "cores": 2, "platform": "Linux"}, "versions": {"fmnist": "0"},
        "command": "fmnist bench accuracy --models mlp --seeds 2", "budget_minutes": None,
        "references": [], "results": [result],
    }


def test_the_report_names_each_runs_cpu_when_they_differ() -> None:
    same = bench._accuracy_markdown(_summary(["CPU A", "CPU A"]), "plot.png")
    assert "Machine: CPU A, 2 cores, Linux." in same and "| CPU |" not in same
    mixed = bench._accuracy_markdown(_summary(["CPU A", "CPU B"]), "plot.png")
    assert "| mlp | 0 | 1.00 | 10 | 88.00% | 89.00% | 500 | CPU A |" in mixed
    assert "| mlp | 1 | 1.00 | 10 | 88.00% | 89.00% | 500 | CPU B |" in mixed
    assert "The runs ran on: CPU A; CPU B. This report was written on CPU A" in mixed
    elsewhere = bench._accuracy_markdown(_summary(["CPU B"]), "plot.png")  # a finished bench reported elsewhere
    assert "The runs ran on: CPU B. This report was written on CPU A" in elsewhere


def test_a_model_trained_on_every_image_shows_no_validation_accuracy() -> None:
    summary = _summary(["CPU A"])
    (result,) = summary["results"]
    result["runs"][0]["validation_accuracy"] = result["validation_accuracy_mean"] = None
    result["validation_images"] = 0
    result["recipe"].update(validation_split=0, flip=True, flip_average=True, shift_average=1)
    text = bench._accuracy_markdown(summary, "plot.png")
    assert "10 epochs on every training image (no validation split); batch 32" in text
    assert "prediction averaged with the mirror image and copies shifted 1 px up, down, left and right" in text
    assert "| 88.00% ± 0.00 (n=1) | — | 100,000 |" in text
    assert "| mlp | 0 | 1.00 | 10 | 88.00% | — | 500 |" in text
    assert "validation_split = 0, has none" in text
    assert bench._mean([0.9, None, 0.8]) == pytest.approx(0.85) and bench._mean([None]) is None
