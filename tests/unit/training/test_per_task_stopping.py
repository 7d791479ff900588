"""Early stopping per task for independent task networks (the single-task baseline)."""

from __future__ import annotations

import math

import torch

from mtlkit import EarlyStopping, Task, Trainer
from mtlkit.data import MultiTaskDataset
from mtlkit.models import shared_bottom, single_task
from mtlkit.training.per_task_stopping import PerTaskEarlyStopper, task_monitored

TASKS = (Task(name="y1", kind="regression"), Task(name="y2", kind="regression"))


def _data() -> tuple[MultiTaskDataset, MultiTaskDataset]:
    """y1: the same linear rule in training and validation (keeps improving); y2: the validation
    labels are the negated training rule, so training y2 makes its validation loss worse after
    the first epoch. The two tasks' best epochs differ by construction."""
    g = torch.Generator().manual_seed(0)
    x, xv = torch.randn(512, 6, generator=g), torch.randn(256, 6, generator=g)
    w1, w2 = torch.randn(6, generator=g), torch.randn(6, generator=g)
    train = MultiTaskDataset(x, {"y1": x @ w1, "y2": x @ w2}, tasks=TASKS)
    val = MultiTaskDataset(xv, {"y1": xv @ w1, "y2": -(xv @ w2)}, tasks=TASKS)
    return train, val


def _trainer(model: torch.nn.Module) -> Trainer:
    return Trainer(
        model, TASKS, optimizer=lambda p: torch.optim.SGD(p, lr=0.02), progress=False, seed=0, device="cpu"
    )


def _fit(epochs: int, early: EarlyStopping | None) -> tuple[torch.nn.Module, Trainer]:
    train, val = _data()
    torch.manual_seed(0)
    model = single_task(6, TASKS, hidden_dims=[8])
    trainer = _trainer(model)
    trainer.fit(train, val, epochs=epochs, batch_size=64, early_stopping=early)
    return model, trainer


def test_single_task_networks_stop_and_restore_at_their_own_best_epochs() -> None:
    model, trainer = _fit(12, EarlyStopping(monitor="mean/loss", patience=3))
    assert isinstance(trainer.stopper, PerTaskEarlyStopper)
    best = trainer.stopper.best_epochs
    history = trainer.history
    # each task's best epoch is the minimum of its own validation loss over the epochs it was tracked
    for task in ("y1", "y2"):
        tracked = [h for h in history if h["epoch"] <= best[task] + 3]
        losses = [h["val"][task]["loss"] for h in tracked]
        assert best[task] == tracked[losses.index(min(losses))]["epoch"]
    assert best["y2"] < best["y1"], best  # the hand-built case: y2 overfits early, y1 keeps improving
    # one stopping epoch for all tasks would have been the latest; y2 stopped long before it
    assert len(history) == min(12, best["y1"] + 3)
    # the restored networks reach each task's own best validation loss
    _, val = _data()
    restored = trainer.evaluate(val)
    for task in ("y1", "y2"):
        own_best = history[best[task] - 1]["val"][task]["loss"]
        assert math.isclose(
            restored[task]["loss"], own_best, rel_tol=1e-5, abs_tol=1e-7 * (1 + abs(own_best))
        )
    # and each network's weights are those of an independent run stopped at that task's best epoch
    for task in ("y1", "y2"):
        ref, _ = _fit(best[task], None)
        for k in model.task_state_keys(task):
            a, b = model.state_dict()[k], ref.state_dict()[k]
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max() + 1)), k


def test_checkpoint_weights_are_each_tasks_best(tmp_path) -> None:
    """`mtlkit evaluate`/`predict`/`export` read a run's weights from its checkpoint: for per-task
    stopping, each task's network at its own best epoch, the weights that fit restored."""
    from mtlkit.training.checkpoint import load_checkpoint, model_weights

    train, val = _data()
    torch.manual_seed(0)
    model = single_task(6, TASKS, hidden_dims=[8])
    trainer = _trainer(model)
    path = tmp_path / "checkpoint.pt"
    trainer.fit(train, val, epochs=10, batch_size=64, early_stopping=EarlyStopping(patience=2), checkpoint=path)
    best = trainer.stopper.best_epochs
    assert best["y1"] != best["y2"]
    weights = model_weights(load_checkpoint(path))
    restored = model.state_dict()
    assert set(weights) == set(restored)
    for k, v in restored.items():
        assert torch.equal(weights[k], v.cpu()), k


def test_shared_models_keep_one_stopping_epoch() -> None:
    train, val = _data()
    torch.manual_seed(0)
    model = shared_bottom(6, TASKS, bottom_dims=[8], tower_dims=[4])
    trainer = _trainer(model)
    trainer.fit(
        train, val, epochs=6, batch_size=64, early_stopping=EarlyStopping(monitor="mean/loss", patience=2)
    )
    assert not isinstance(trainer.stopper, PerTaskEarlyStopper)
    assert "tasks" not in trainer.history[-1]["monitor"]


def test_task_monitored_reads_each_tasks_own_metric() -> None:
    record = {
        "epoch": 1,
        "train": {"y1": 1.0, "y2": 1.0},
        "val": {
            "y1": {"loss": 0.2, "mse": 0.2, "mae": 0.3},
            "y2": {"loss": 0.6, "mse": float("nan"), "mae": 0.5},
        },
    }
    out = task_monitored(record, TASKS, EarlyStopping(monitor="mean/mse"))
    assert out["y1"] == (0.2, False)
    assert out["y2"] == (0.2, False)  # no finite value of its own: follows the mean over the tasks
    same = task_monitored(record, TASKS, EarlyStopping(monitor="y2/mae"))
    assert same == {"y1": (0.5, False), "y2": (0.5, False)}  # a one-task monitor is shared


def test_per_task_stopper_state_round_trips() -> None:
    def snap(task: str, with_model: bool) -> dict[str, object]:
        return {"state": {f"{task}.w": torch.tensor(float(len(calls)))}, "weighting": {}}

    calls: list[int] = []
    s = PerTaskEarlyStopper(snap, ["a", "b"])
    s.start(EarlyStopping(monitor="mean/loss", patience=1))
    for epoch, (a, b) in enumerate([(1.0, 1.0), (0.5, 2.0), (0.4, 3.0)], start=1):
        calls.append(epoch)
        stop = s.update_tasks({"a": (a, False), "b": (b, False)}, epoch=epoch)
    assert s.best_epochs == {"a": 3, "b": 1} and s.best_epoch == 3 and not stop
    assert s.tasks["b"].stopped and not s.tasks["a"].stopped
    t = PerTaskEarlyStopper(snap, ["a", "b"])
    t.start(EarlyStopping(monitor="mean/loss", patience=1))
    t.load_state_dict(s.state_dict())
    assert t.best_epochs == s.best_epochs
    best = t.best_state()
    assert best is not None and float(best["state"]["a.w"]) == 3.0 and float(best["state"]["b.w"]) == 1.0


def test_the_relative_default_monitor_is_each_tasks_primary_metric() -> None:
    """``mean/relative`` (the default monitor) per task is the task's own primary metric, not its
    value relative to itself (which would be 0 every epoch and never improve)."""
    from mtlkit.tasks import Task
    from mtlkit.training.early_stopping import EarlyStopping
    from mtlkit.training.per_task_stopping import task_monitored

    tasks = [Task(name="a", kind="regression"), Task(name="b", kind="binary")]
    record = {"train": {"a": 1.0, "b": 1.0}, "val": {"a": {"loss": 2.0, "mse": 2.0, "mae": 1.1},
              "b": {"loss": 0.6, "auc": 0.7, "accuracy": 0.6, "logloss": 0.6}}}  # fmt: skip
    out = task_monitored(record, tasks, EarlyStopping(monitor="mean/relative"))
    assert out["a"] == (2.0, False)  # mse, lower is better
    assert out["b"] == (0.7, True)  # auc, higher is better
