"""Every training schedule trains every registered model end to end, and runs from configs and the CLI."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

import _architectures as arch  # how to build and feed each registered model
import mtlkit
from _helpers import assert_loss_decreased
from mtlkit.cli.main import main
from mtlkit.config import apply_overrides, load_preset, resolve
from mtlkit.data import DataSplits, MultiTaskDataset, synthetic_correlation
from mtlkit.experiment import evaluate_run_dir, run_experiment
from mtlkit.registries import DATASETS, MODELS
from mtlkit.training import Alternating, Sampling

SCHEMES: dict[str, tuple[Any, bool, str]] = {
    # name: (schedule, per-task optimizers, data layout)
    "joint": ("joint", False, "joint"),
    "mixed": ("mixed", False, "per_task"),
    "alternating": (lambda: Alternating("round_robin"), False, "per_task"),
    "alternating_random_views": (lambda: Alternating("random"), False, "joint"),
    "sampling_temperature": (lambda: Sampling("temperature", temperature=2.0), False, "per_task"),
    "sampling_per_task_optimizers": (lambda: Sampling("uniform"), True, "per_task"),
}


def _data(case: Any, n: int, seed: int) -> tuple[MultiTaskDataset, dict[str, MultiTaskDataset]]:
    """A jointly labelled dataset (a third of the labels missing), and per-task datasets of
    different sizes cut from it (task k gets a slice proportional to k + 1)."""
    gen = torch.Generator().manual_seed(seed)
    joint = MultiTaskDataset(case.inputs(n, gen), case.targets(case.tasks, n, gen))
    weights = [k + 1 for k in range(len(case.tasks))]
    bounds = [0]
    for w in weights:
        bounds.append(bounds[-1] + n * w // sum(weights))
    per_task = {}
    for t, lo, hi in zip(case.tasks, bounds, bounds[1:]):
        part = joint.subset(torch.arange(lo, hi))
        per_task[t.name] = MultiTaskDataset(part.inputs, {t.target_key: part.targets[t.target_key]})
    return joint, per_task


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("name", MODELS.names())
def test_every_scheme_trains_every_model(name: str, scheme: str) -> None:
    schedule, per_task_opt, layout = SCHEMES[scheme]
    model, case = arch.build(name)
    joint, per_task = _data(case, 60, seed=1)
    train = joint if layout == "joint" else per_task
    trainer = mtlkit.Trainer(
        model,
        case.tasks,
        weighting=mtlkit.weighting.UncertaintyWeighting(case.tasks),
        schedule=schedule() if callable(schedule) else schedule,
        per_task_optimizers=per_task_opt,
        progress=False,
        device="cpu",
    )
    before = [p.detach().clone() for p in model.parameters()]
    (record,) = trainer.fit(train, per_task, epochs=1, batch_size=16)
    trained = {t.name for t in case.tasks if t.train}  # evaluation-only tasks never train
    steps = record.get("steps") or {k: int(k in trained) for k in record["train"]}
    assert all(steps[k] == 0 for k in record["train"] if k not in trained), steps
    # a task has a finite mean loss exactly when it was trained (sampling may skip one in an epoch)
    assert all(math.isfinite(v) == (steps[k] > 0) for k, v in record["train"].items()), (record, steps)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), f"{name}: nothing trained"
    assert set(record["val"]) == {t.name for t in case.tasks}
    if isinstance(trainer.schedule, Alternating):
        assert all(steps[t] > 0 for t in trained)


def test_alternating_step_counts_in_training_history() -> None:
    model, case = arch.build("shared_bottom")
    _, per_task = _data(case, 90, seed=2)
    trainer = mtlkit.Trainer(model, case.tasks, schedule="alternating", progress=False, device="cpu")
    hist = trainer.fit(per_task, epochs=2, batch_size=8)
    sizes = {t.name: len(mtlkit.training.task_data.labelled_rows(per_task[t.name], t)) for t in case.tasks}
    expected = {k: math.ceil(n / 8) for k, n in sizes.items()}
    assert [h["steps"] for h in hist] == [expected, expected]
    assert trainer.step == 2 * sum(expected.values())


# ---------------------------------------------------------------------------------------------- configs
SMALL = [
    "seeds=[0]",
    "data.n_train=256",
    "data.n_val=64",
    "data.n_test=64",
    "data.dim=10",
    "trainer.epochs=3",
    "trainer.batch_size=64",
    "optimizer.lr=0.03",  # a few steps that lower the training loss clearly
]


def _raw(*overrides: str) -> dict[str, Any]:
    raw = load_preset("default")
    raw.pop("compare")
    raw.pop("baseline")
    return apply_overrides(raw, [*SMALL, *overrides])


@pytest.mark.parametrize(
    "overrides",
    [
        ["schedule.name=alternating", "schedule.order=random", "weighting.name=uncertainty"],
        ["schedule.name=sampling", "schedule.strategy=proportional", "trainer.per_task_optimizers=true"],
    ],
    ids=["alternating", "sampling-per-task-optimizers"],
)
def test_cli_runs_and_evaluates_a_scheme(overrides: list[str], tmp_path: Path) -> None:
    exp = resolve(_raw(*overrides))
    result = run_experiment(exp, output_dir=tmp_path, console=Console(file=io.StringIO()), progress=False)
    (run,) = result.runs
    assert all(math.isfinite(v) for ms in run.metrics.values() for v in ms.values())
    history = json.loads((run.run_dir / "history.json").read_text())
    assert sum(history[0]["steps"].values()) == 2 * math.ceil(256 / 64)  # both tasks label every row
    assert_loss_decreased(history, 0.8, str(overrides))
    again = evaluate_run_dir(run.run_dir, console=Console(file=io.StringIO()))
    assert next(iter(again.values())) == run.metrics


def test_cli_reports_a_refused_combination(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate", "schedule.name=alternating", "aggregator.name=mgda"])
    assert code == 2
    err = capsys.readouterr().err
    assert "schedule: Gradient aggregator MGDA combines the gradients of all tasks within one step" in err


@pytest.fixture
def two_sources() -> Iterator[str]:
    """A dataset builder returning per-task splits (like MNIST + Fashion-MNIST): y1 and y2 come
    from different samples and have datasets of different sizes."""

    def build(*, n1: int = 120, n2: int = 360, dim: int = 10) -> DataSplits:
        full = synthetic_correlation(2 * (n1 + n2), 0.5, dim=dim, seed=0)
        rows = torch.arange(len(full))

        def part(lo: int, n: int, key: str) -> MultiTaskDataset:
            sub = full.subset(rows[lo : lo + n])
            return MultiTaskDataset(sub.inputs, {key: sub.targets[key]})

        train = {"y1": part(0, n1, "y1"), "y2": part(n1, n2, "y2")}
        test = {"y1": part(n1 + n2, n1, "y1"), "y2": part(2 * n1 + n2, n2, "y2")}
        assert full.tasks is not None
        return DataSplits(train=train, val=test, test=test, tasks=full.tasks, input_spec=dim, info={})

    DATASETS.register("two_sources_test")(build)
    try:
        yield "two_sources_test"
    finally:
        DATASETS.unregister("two_sources_test")


@pytest.mark.parametrize("schedule", ["mixed", "alternating", "sampling"])
def test_per_task_splits_run_from_a_config(schedule: str, two_sources: str, tmp_path: Path) -> None:
    raw = _raw(f"schedule.name={schedule}")
    raw["data"] = {"name": two_sources}
    result = run_experiment(resolve(raw), output_dir=tmp_path, console=Console(file=io.StringIO()), progress=False)
    (run,) = result.runs
    assert set(run.metrics) == {"y1", "y2"} and run.split == "test"
    assert all(math.isfinite(v) for ms in run.metrics.values() for v in ms.values())
    history = json.loads((run.run_dir / "history.json").read_text())
    if schedule == "alternating":  # ceil(120/64) + ceil(360/64) steps, every epoch
        assert history[0]["steps"] == {"y1": 2, "y2": 6}
    assert_loss_decreased(history, 0.8, schedule)


def test_joint_schedule_on_per_task_splits_says_what_to_use(two_sources: str, tmp_path: Path) -> None:
    raw = _raw()
    raw["data"] = {"name": two_sources}
    with pytest.raises(mtlkit.errors.DataError, match="Use schedule 'mixed'"):
        run_experiment(resolve(raw), output_dir=tmp_path, console=Console(file=io.StringIO()), progress=False)


# ---------------------------------------------------------------------------------------------- docs
DOC = Path(__file__).resolve().parents[2] / "docs" / "training.md"


def test_docs_example_and_config_run(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    import yaml

    text = DOC.read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    ns: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), ns)
    steps = ns["history"][-1]["steps"]
    assert sum(steps.values()) == math.ceil(100 / 32) + math.ceil(1000 / 32)
    assert abs(steps["y1"] - steps["y2"]) < 12  # uniform over tasks despite 100 vs 1000 samples
    assert math.isfinite(ns["trainer"].evaluate(ns["per_task"])["y1"]["mse"])
    yaml_block = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)[0]
    exp = resolve({**_raw(), **yaml.safe_load(yaml_block)})
    assert exp.config.schedule["temperature"] == 2.0 and exp.config.trainer.per_task_optimizers
