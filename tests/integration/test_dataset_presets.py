"""Every dataset preset trains from the CLI: on tiny fake copies of the files (always) and on the
real files with small overrides (``-m slow``, when the shared data is present)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _datasets import shared_data, write_fake_census, write_fake_cifar, write_fake_mnist
from mtlkit.cli.main import main
from mtlkit.experiment import evaluate_run_dir

QUICK = ["--no-progress", "trainer.epochs=1"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTLKIT_CACHE", str(tmp_path / "cache"))


def _run(preset: str, data: Path, out: Path, *overrides: str) -> Path:
    assert main(["run", "--preset", preset, "--data", str(data), "--out", str(out), *QUICK, *overrides]) == 0
    (run_dir,) = out.iterdir()
    return run_dir


def test_census_preset_saves_and_reuses_the_preprocessor(tmp_path: Path) -> None:
    data = write_fake_census(tmp_path / "data" / "census-income", n_train=400, n_test=200).parent
    run_dir = _run("census-mmoe", data, tmp_path / "runs", "data.verify=false", "trainer.batch_size=128")
    comparison = json.loads((run_dir / "comparison.json").read_text())
    assert set(comparison["labels"]) == {"single_task", "shared_bottom", "mmoe"}
    for label in comparison["labels"]:
        saved = json.loads((run_dir / label / "seed0" / "preprocessor.json").read_text())
        assert saved["type"] == "tabular" and "education" in saved["categorical"]
    before = {
        label: json.loads((run_dir / label / "seed0" / "metrics.json").read_text())["metrics"]
        for label in comparison["labels"]
    }
    # new training rows would fit another preprocessor; evaluation must reuse the saved one
    write_fake_census(data / "census-income", n_train=400, n_test=200, seed=0)
    (data / "census-income" / "census-income.data").write_text(
        (data / "census-income" / "census-income.data")
        .read_text()
        .replace("class_worker-1", "class_worker-9")
    )
    after = evaluate_run_dir(run_dir, split="test")
    for label, metrics in before.items():
        for task, values in metrics.items():
            assert after[f"{label}/seed0"][task]["loss"] == pytest.approx(values["loss"], rel=1e-6)


def test_mnist_fashion_preset_runs_on_a_fake_copy(tmp_path: Path) -> None:
    data = write_fake_mnist(tmp_path / "data", n_train=60, n_test=30)
    run_dir = _run(
        "mnist-fashion", data, tmp_path / "runs", "data.verify=false", "data.n_val=10", "data.n_test=null"
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"mnist", "fashion"} and metrics["data"]["mode"] == "separate"
    assert metrics["data"]["rows"]["test"] == {"mnist": 30, "fashion": 30}


def test_loader_mixed_mode_equals_the_mixed_schedule_on_separate_datasets(tmp_path: Path) -> None:
    # the loader's pooled dataset (-1 labels) and the trainer's mixed schedule (label masks) are
    # the same seed-000 scheme: same batches, same losses, same trained model
    data = write_fake_mnist(tmp_path / "data", n_train=40, n_test=20)
    common = ["data.verify=false", "data.n_val=10", "trainer.epochs=2"]
    a = _run("mnist-fashion", data, tmp_path / "a", *common)
    b = _run("mnist-fashion", data, tmp_path / "b", *common, "data.mode=mixed", "schedule.name=joint")
    ha, hb = (json.loads((r / "history.json").read_text()) for r in (a, b))
    for ea, eb in zip(ha, hb, strict=True):
        assert ea["train"] == pytest.approx(eb["train"], rel=1e-5)
    ma, mb = (json.loads((r / "metrics.json").read_text())["metrics"] for r in (a, b))
    assert ma["mnist"]["accuracy"] == mb["mnist"]["accuracy"]
    assert ma["fashion"]["loss"] == pytest.approx(mb["fashion"]["loss"], rel=1e-5)


@pytest.mark.parametrize("schedule", ["alternating", "sampling"])
def test_mnist_fashion_trains_one_task_per_step_from_separate_datasets(tmp_path: Path, schedule: str) -> None:
    data = write_fake_mnist(tmp_path / "data", n_train=40, n_test=20)
    run_dir = _run(
        "mnist-fashion",
        data,
        tmp_path / "runs",
        "data.verify=false",
        "data.n_val=10",
        f"schedule.name={schedule}",
    )
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == 1 and set(json.loads((run_dir / "metrics.json").read_text())["metrics"]) == {
        "mnist",
        "fashion",
    }


def test_cifar_preset_runs_on_a_fake_copy(tmp_path: Path) -> None:
    data = write_fake_cifar(tmp_path / "data" / "cifar-10", n=40).parent
    run_dir = _run(
        "cifar-catdog", data, tmp_path / "runs", "data.verify=false", "data.n_val=10", "data.n_test=null"
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"is_cat", "is_dog"} and metrics["data"]["rows"]["train"] == 70


def test_missing_data_directory_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MTLKIT_DATA", raising=False)
    code = main(["run", "--preset", "census-mmoe", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "No data directory given" in err and "MTLKIT_DATA" in err and "data.path" in err


def test_multilabel_preset_runs_on_the_real_files(tmp_path: Path) -> None:
    root = shared_data("yeast")
    run_dir = _run("multilabel-yeast", root, tmp_path / "runs")
    comparison = json.loads((run_dir / "comparison.json").read_text())
    assert set(comparison["labels"]) == {"single_task", "shared_bottom", "mmoe"}
    assert len(comparison["labels"]["mmoe"]["metrics"]) == 14


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "folders", "overrides"),
    [
        ("census-mmoe", ["census-income"], ["data.n_train=5000"]),
        ("census-group2", ["census-income"], ["data.n_train=5000"]),
        ("mnist-fashion", ["mnist", "fashion-mnist"], ["data.n_train=500", "data.n_test=500"]),
        ("cifar-catdog", ["cifar-10"], ["data.n_train=256", "data.n_test=256"]),
    ],
)
def test_presets_run_on_the_real_files(
    tmp_path: Path, preset: str, folders: list[str], overrides: list[str]
) -> None:
    root = shared_data(*folders)
    run_dir = _run(preset, root, tmp_path / "runs", *overrides)
    assert (run_dir / "comparison.json").is_file()
