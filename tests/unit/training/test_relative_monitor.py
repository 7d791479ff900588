"""The default early-stopping monitor ``mean/relative`` is scale-free: a task whose labels are a
million times larger does not drown the improvement of the other."""

from __future__ import annotations

import math

import pytest
import torch

from mtlkit import EarlyStopping, Task, Trainer
from mtlkit.config.schema import EarlyStoppingConfig
from mtlkit.data import MultiTaskDataset
from mtlkit.registries import MODELS
from mtlkit.training.early_stopping import RELATIVE, EarlyStopper, monitored

TASKS = (Task(name="small", kind="regression"), Task(name="big", kind="regression"))


def _record(epoch: int, small: float, big: float) -> dict:
    val = {"small": {"loss": small, "mse": small, "mae": 0.0}, "big": {"loss": big, "mse": big, "mae": 0.0}}
    return {"epoch": epoch, "train": {"small": small, "big": big}, "val": val}


def test_the_default_is_relative_in_python_and_yaml() -> None:
    assert EarlyStopping().monitor == RELATIVE == EarlyStoppingConfig().monitor


def test_relative_monitor_follows_the_small_task_where_mean_loss_follows_the_big_one() -> None:
    first = _record(1, 1.0, 1e6)
    # epoch 2: the small task halves its error, the big one gets 0.1 % worse
    second = _record(2, 0.5, 1.001e6)
    name, value, higher = monitored(second, TASKS, EarlyStopping(), first)
    assert (name, higher) == (RELATIVE, False)
    assert value == pytest.approx(((0.5 - 1.0) / 1.0 + (1.001e6 - 1e6) / 1e6) / 2, rel=1e-12)
    assert monitored(first, TASKS, EarlyStopping(), first)[1] == 0.0
    stopper = EarlyStopper(lambda _: {})
    stopper.start(EarlyStopping(patience=1))
    for rec in (first, second):
        stop = stopper.update(monitored(rec, TASKS, stopper.rule, first)[1], higher=False, epoch=rec["epoch"])
    assert not stop and stopper.best_epoch == 2  # the relative monitor saw the improvement
    # mean/loss, still available explicitly, is dominated by the big task and sees a regression
    loss_rule = EarlyStopping(monitor="mean/loss", patience=1)
    old = EarlyStopper(lambda _: {})
    old.start(loss_rule)
    for rec in (first, second):
        stop = old.update(monitored(rec, TASKS, loss_rule, first)[1], higher=False, epoch=rec["epoch"])
    assert stop and old.best_epoch == 1


def test_higher_is_better_metrics_are_flipped_and_zero_references_skipped() -> None:
    tasks = (Task(name="c", kind="binary"), Task(name="r", kind="regression"))
    first = {"epoch": 1, "train": {}, "val": {"c": {"loss": 0.7, "auc": 0.6}, "r": {"loss": 0.0, "mse": 0.0}}}
    later = {"epoch": 2, "train": {}, "val": {"c": {"loss": 0.6, "auc": 0.66}, "r": {"loss": 1.0, "mse": 1.0}}}
    _, value, _ = monitored(later, tasks, EarlyStopping(), first)
    assert value == pytest.approx(-0.1)  # auc +10 %; r has a zero first-epoch mse: left out
    nothing = {"epoch": 2, "train": {}, "val": {"c": {"loss": math.nan, "auc": math.nan}, "r": {"mse": 1.0}}}
    assert math.isnan(monitored(nothing, tasks, EarlyStopping(), first)[1])


def test_trainer_stops_on_the_small_task_with_a_big_task_beside_it(one_thread: None) -> None:
    """Two regression tasks of scales 1 and 1e6 (labels noise for the big one, which cannot
    improve): the default monitor records the small task's improvement as the best epoch."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 4, generator=g)
    targets = {"small": x[:, 0] * 2 - x[:, 1], "big": torch.randn(400, generator=g) * 1e6}
    data = MultiTaskDataset(x, targets, tasks=TASKS)
    train, val = data.split([300, 100])
    torch.manual_seed(0)
    model = MODELS.build("shared_bottom", input_dim=4, tasks=TASKS, bottom_dims=(16,), tower_dims=(8,))
    trainer = Trainer(
        model,
        TASKS,
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-2),
        progress=False,
        device="cpu",
        seed=0,
    )
    history = trainer.fit(train, val, epochs=4, batch_size=64, early_stopping=EarlyStopping(patience=4))
    small = [h["val"]["small"]["mse"] for h in history]
    assert small[-1] < 0.5 * small[0]  # the small task learnt
    assert [h["monitor"]["name"] for h in history] == [RELATIVE] * 4
    monitor = [h["monitor"]["value"] for h in history]
    assert monitor[0] == 0.0 and min(monitor) < -0.2
    assert trainer.stopper.best_epoch == 1 + min(range(4), key=monitor.__getitem__)


def test_auxiliary_tasks_are_left_out_of_the_relative_monitor() -> None:
    tasks = (Task(name="small", kind="regression"), Task(name="big", kind="regression", auxiliary=True))
    first = _record(1, 1.0, 1.0)
    second = _record(2, 0.8, 3.0)  # the auxiliary task got 3x worse: it does not count
    assert monitored(second, tasks, EarlyStopping(), first)[1] == pytest.approx(-0.2)
