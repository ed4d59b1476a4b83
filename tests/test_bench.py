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
        assert 0.5 < run["test_accuracy"] < 1 and run["minutes"] > run["fit_minutes"] > 0
    assert result["runs"][0]["test_accuracy"] != result["runs"][1]["test_accuracy"]  # seeds differ
    assert result["test_accuracy_std"] > 0 and result["inference_images_per_second"] > 1000
    assert "training stopped before its schedule ended" in result["selection"]

    text = markdown.read_text()
    assert "fmnist bench accuracy --models mlp --seeds 2 --budget-minutes 0.0001" in text
    assert "| mlp | 109,386 | jax | 1 of 10 |" in text
    assert json.loads(markdown.with_suffix(".json").read_text())["results"][0]["runs"] == result["runs"]
    assert (markdown.parent / "accuracy_vs_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # An interrupted benchmark continues from its ledger, with its own settings.
    root = Path(summary["runs_folder"])
    ledger = json.loads((root / "bench.json").read_text())
    ledger["runs"].pop()  # as if killed after seed 1 finished but before it was recorded
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
