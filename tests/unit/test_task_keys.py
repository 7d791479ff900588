"""Keys that no task reads are refused (issue 11 §3): model outputs, targets and masks that belong
to no task, and trained tasks that get no label over an epoch of training."""

from __future__ import annotations

import math
import time
import warnings

import pytest
import torch
from torch import Tensor, nn

import mtlkit
from mtlkit import Task, task_losses
from mtlkit.data import MultiTaskDataset
from mtlkit.errors import DataError, ShapeError
from mtlkit.losses import UnlabelledTaskWarning, check_epoch_labels, check_keys, check_outputs
from mtlkit.training.schedules import Sampling

TASKS = (Task(name="ctr", kind="binary"), Task(name="value", kind="regression"))


def outputs(n: int = 4) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"ctr": torch.randn(n, 1, generator=g), "value": torch.randn(n, 1, generator=g)}


def targets(n: int = 4) -> dict[str, Tensor]:
    return {"ctr": torch.tensor([1.0, 0.0, 1.0, 0.0])[:n], "value": torch.arange(float(n))}


# ---------------------------------------------------------------------------------------------- one batch
def test_a_model_output_of_no_task_is_refused_with_the_close_match() -> None:
    out = {**outputs(), "valeu": torch.zeros(4, 1)}
    with pytest.raises(ShapeError) as err:
        check_outputs(TASKS, out)  # a model that does not declare its tasks: every output must be one
    msg = str(err.value)
    assert "output(s) 'valeu' that belong to no task" in msg
    assert "Did you mean 'value' for 'valeu'?" in msg
    assert "Task outputs: 'ctr', 'value'" in msg and "train=False" in msg and "auxiliary losses apart" in msg


class Declared(nn.Module):
    """A model that declares its tasks (as MultiTaskModel does)."""

    def __init__(self, task_names: tuple[str, ...]) -> None:
        super().__init__()
        self.task_names = task_names


def test_outputs_a_model_declares_as_its_tasks_must_be_tasks_and_others_may_be_extra() -> None:
    out = {**outputs(), "cvr": torch.rand(4)}  # e.g. an ESMM-shaped model's pCVR, not a task
    check_outputs(TASKS, out, Declared(("ctr", "value")))
    with pytest.raises(ShapeError, match=r"output\(s\) 'cvr' that belong to no task"):
        check_outputs(TASKS, out, Declared(("ctr", "value", "cvr")))  # built for a third task
    with pytest.raises(ShapeError, match=r"output\(s\) 'cvr'"):
        check_outputs(TASKS, out)


def test_auxiliary_losses_in_the_output_dict_are_refused_and_evaluation_only_outputs_allowed() -> None:
    # auxiliary losses travel apart (forward_parts(x).aux), never as outputs: an 'aux/' output of a
    # plain module is refused before any loss is computed, and check_outputs treats it as a stray key
    class Plain(nn.Module):
        def forward(self, x: Tensor) -> dict[str, Tensor]:
            return {**outputs(), "aux/balance": torch.tensor(0.5)}

    with pytest.raises(ShapeError, match="auxiliary losses are not read"):
        mtlkit.models.forward_parts(Plain(), torch.zeros(4, 1))
    with pytest.raises(ShapeError, match=r"output\(s\) 'aux/balance'"):
        check_outputs(TASKS, {**outputs(), "aux/balance": torch.tensor(0.5)})
    tasks = (*TASKS, Task(name="cvr", kind="regression", train=False))  # an evaluated-only output
    out = {**outputs(), "cvr": torch.zeros(4, 1)}
    check_outputs(tasks, out)
    assert task_losses(tasks, out, targets()).counts.tolist() == [4.0, 4.0, 0.0]


def test_targets_of_no_task_are_refused_when_a_trained_task_has_none() -> None:
    bad = {"ctr": targets()["ctr"], "valeu": targets()["value"]}
    with pytest.raises(DataError) as err:
        task_losses(TASKS, outputs(), bad)
    msg = str(err.value)
    assert "Targets 'valeu' belong to no task" in msg
    assert "trained task(s) 'value' have no targets" in msg
    assert "Did you mean 'value' for 'valeu'?" in msg and "Task target keys: 'ctr', 'value'" in msg
    # the check reads Task(target=...), not the name
    renamed = (TASKS[0], Task(name="value", kind="regression", target="valeu"))
    assert task_losses(renamed, outputs(), bad).counts.tolist() == [4.0, 4.0]


def test_extra_target_columns_are_ignored_when_every_trained_task_has_its_targets() -> None:
    # e.g. the ground truth that synthetic CTR/CVR data keeps next to the labels
    extra = {**targets(), "pctr_true": torch.rand(4)}
    torch.testing.assert_close(
        task_losses(TASKS, outputs(), extra).losses, task_losses(TASKS, outputs(), targets()).losses
    )
    # a batch of one task's data (another task absent) with no unknown key stays legitimate
    assert task_losses(TASKS, outputs(), {"ctr": targets()["ctr"]}).counts.tolist() == [4.0, 0.0]
    # an evaluation-only task needs no targets
    tasks = (TASKS[0], Task(name="value", kind="regression", train=False))
    check_keys(tasks, {"ctr": targets()["ctr"], "other": torch.zeros(4)})


def test_a_mask_of_no_task_is_refused() -> None:
    with pytest.raises(
        DataError, match=r"'ctrr' is no task\. Did you mean 'ctr' for 'ctrr'\? Tasks: 'ctr', 'value'"
    ):
        task_losses(TASKS, outputs(), targets(), {"ctrr": torch.ones(4, dtype=torch.bool)})


def test_the_key_check_costs_little_next_to_the_losses() -> None:
    """The check runs on every call; it must stay a small fraction of task_losses itself."""
    out, tgt = outputs(64), {"ctr": torch.ones(64), "value": torch.zeros(64)}

    def best(fn, reps: int = 30) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            times.append(time.perf_counter() - start)
        return min(times) / reps

    check = best(lambda: (check_outputs(TASKS, out), check_keys(TASKS, tgt)))
    full = best(lambda: task_losses(TASKS, out, tgt))
    assert check < 0.25 * full, (check, full)


# ---------------------------------------------------------------------------------------------- training
def dataset(n: int = 64, *, value: Tensor | None = None, key: str = "value") -> MultiTaskDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] > 0).float()
    return MultiTaskDataset(x, {"ctr": y, key: x[:, 1] if value is None else value})


class TwoHeads(nn.Module):
    def __init__(self, extra: str | None = None) -> None:
        super().__init__()
        self.body = nn.Linear(5, 4)
        self.heads = nn.ModuleDict(
            {k: nn.Linear(4, 1) for k in ("ctr", "value", *([extra] if extra else []))}
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = torch.relu(self.body(x))
        return {k: head(h) for k, head in self.heads.items()}


def trainer(model: nn.Module, tasks=TASKS, **kw) -> mtlkit.Trainer:
    return mtlkit.Trainer(model, tasks, device="cpu", progress=False, **kw)


def test_training_refuses_misspelt_targets_before_the_first_update() -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(
        DataError, match=r"Targets 'valeu' belong to no task.*Did you mean 'value' for 'valeu'\?"
    ):
        trainer(model).fit(dataset(key="valeu"), epochs=1, batch_size=16)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_training_refuses_a_model_output_of_no_task() -> None:
    torch.manual_seed(0)
    with pytest.raises(ShapeError, match=r"output\(s\) 'buy' that belong to no task"):
        trainer(TwoHeads(extra="buy")).fit(dataset(), epochs=1, batch_size=16)
    declared = TwoHeads(extra="side")
    declared.task_names = ("ctr", "value")  # "side" is an output the model says is not a task
    history = trainer(declared).fit(dataset(), epochs=1, batch_size=16)
    assert all(math.isfinite(v) for v in history[0]["train"].values())


def test_a_trained_task_without_any_label_is_an_error_not_a_nan_loss() -> None:
    torch.manual_seed(0)
    data = dataset(value=torch.full((64,), math.nan))  # the column exists, every label is missing
    with pytest.raises(DataError, match=r"Task 'value' received no label in epoch 1 of training"):
        trainer(TwoHeads()).fit(data, epochs=2, batch_size=16)
    only_ctr = MultiTaskDataset(data.inputs, {"ctr": data.targets["ctr"]})  # the column is absent
    with pytest.raises(DataError, match=r"its targets \(key 'value'\) were absent from every batch"):
        trainer(TwoHeads()).fit(only_ctr, epochs=1, batch_size=16)


def test_an_evaluation_only_task_without_labels_trains_quietly() -> None:
    torch.manual_seed(0)
    tasks = (TASKS[0], Task(name="value", kind="regression", train=False))
    data = MultiTaskDataset(dataset().inputs, {"ctr": dataset().targets["ctr"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = trainer(TwoHeads(), tasks).fit(data, epochs=1, batch_size=16)
    assert math.isfinite(history[0]["train"]["ctr"])


def test_a_task_the_sampling_schedule_never_draws_in_an_epoch_is_reported() -> None:
    torch.manual_seed(0)
    t = trainer(TwoHeads(), schedule=Sampling("uniform", steps_per_epoch=1), seed=0)
    with pytest.warns(UnlabelledTaskWarning, match=r"was not drawn for any step of epoch 1") as rec:
        history = t.fit(dataset(), epochs=1, batch_size=16)
    (missed,) = [name for name, n in history[0]["steps"].items() if n == 0]
    assert f"Task {missed!r}" in str(rec[0].message)
    assert math.isnan(history[0]["train"][missed])  # the NaN in the history is the one reported


def test_check_epoch_labels_directly() -> None:
    check_epoch_labels(TASKS, [3.0, 1.0], epoch=0)
    with pytest.raises(DataError, match="Task 'ctr' received no label in epoch 3"):
        check_epoch_labels(TASKS, [0.0, 1.0], epoch=2)
    with pytest.raises(DataError, match="Task 'ctr'"):  # drawn, yet no label: the data has none
        check_epoch_labels(TASKS, [0.0, 1.0], epoch=0, steps={"ctr": 2, "value": 1})
    with pytest.warns(UnlabelledTaskWarning, match="Task 'ctr' was not drawn"):
        check_epoch_labels(TASKS, [0.0, 1.0], epoch=0, steps={"ctr": 0, "value": 1})
