"""Trainer: determinism, exact resume, early stopping, checkpoints, errors, predict, logging."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import mtlkit
from mtlkit import EarlyStopping, Task, Trainer
from mtlkit.data import MultiTaskDataset, TensorBatchLoader, synthetic_correlation
from mtlkit.errors import CheckpointError, DataError
from mtlkit.registries import MODELS
from mtlkit.training import TrainingDivergedError
from mtlkit.weighting import UncertaintyWeighting


@pytest.fixture(scope="module")
def data() -> tuple[MultiTaskDataset, MultiTaskDataset]:
    full = synthetic_correlation(900, 0.5, dim=12, seed=0)
    train, val = full.split([700, 200])
    return train, val


def make_trainer(seed: int, tasks, dropout: float = 0.1, **kw) -> Trainer:
    torch.manual_seed(seed)
    model = MODELS.build(
        "mmoe", input_dim=12, tasks=tasks, num_experts=3, expert_dims=(8,), tower_dims=(4,), dropout=dropout
    )
    options = {
        "weighting": UncertaintyWeighting(tasks),
        "seed": seed,
        "progress": False,
        "device": "cpu",
        "optimizer": lambda p: torch.optim.Adam(p, lr=3e-3),
        "scheduler": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.9),
    }
    return Trainer(model, tasks, **(options | kw))


def test_same_seed_same_metrics_different_seed_different(data) -> None:
    train, val = data
    runs = []
    for seed in (0, 0, 1):
        t = make_trainer(seed, train.tasks)
        t.fit(train, val, epochs=2, batch_size=64)
        runs.append(t.evaluate(val))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_resume_reproduces_an_uninterrupted_run(data, tmp_path: Path) -> None:
    train, val = data
    full = make_trainer(0, train.tasks)
    full.fit(train, val, epochs=4, batch_size=64)
    first = make_trainer(0, train.tasks)
    first.fit(train, val, epochs=2, batch_size=64, checkpoint=tmp_path / "ck.pt")
    # a fresh process would rebuild everything: different init RNG on purpose
    resumed = make_trainer(123, train.tasks)
    resumed.fit(train, val, epochs=4, batch_size=64, resume=tmp_path / "ck.pt")
    assert resumed.step == full.step and resumed.epoch == 4
    assert [h["train"] for h in resumed.history] == [h["train"] for h in full.history]
    assert resumed.evaluate(val) == full.evaluate(val)
    torch.testing.assert_close(resumed.weighting.log_vars, full.weighting.log_vars, rtol=0, atol=0)
    assert resumed.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]


def test_uncertainty_parameters_are_trained_in_their_own_group(data) -> None:
    train, _ = data
    t = make_trainer(
        0,
        train.tasks,
        optimizer=torch.optim.SGD(
            MODELS.build("shared_bottom", input_dim=12, tasks=train.tasks).parameters(), lr=0.1
        ),
    )
    # the optimizer above was built for another model: the weighting group is still added
    assert any(p is t.weighting.log_vars for g in t.optimizer.param_groups for p in g["params"])
    t2 = make_trainer(0, train.tasks)
    before = t2.weighting.log_vars.detach().clone()
    t2.fit(train, epochs=1, batch_size=64)
    assert not torch.equal(before, t2.weighting.log_vars.detach())
    assert t2.optimizer.param_groups[-1]["weight_decay"] == 0.0


def test_early_stopping_restores_best_epoch(data) -> None:
    train, val = data
    t = make_trainer(0, train.tasks, dropout=0.0, scheduler=None)
    # a huge lr makes validation worse after the first epochs, so training stops early
    t.optimizer.param_groups[0]["lr"] = 0.3
    es = EarlyStopping(monitor="y1/mse", patience=1)
    history = t.fit(train, val, epochs=30, batch_size=64, early_stopping=es)
    values = [h["val"]["y1"]["mse"] for h in history]
    best = min(range(len(values)), key=values.__getitem__)
    assert len(history) < 30
    assert len(history) == best + 1 + es.patience  # stops after `patience` epochs without improvement
    assert t.evaluate(val)["y1"]["mse"] == pytest.approx(values[best], rel=1e-6)


def test_unknown_monitor_is_reported_before_training(data) -> None:
    train, val = data
    t = make_trainer(0, train.tasks)
    with pytest.raises(ValueError, match="Unknown monitor 'y1/mae2'. Did you mean 'y1/mae'"):
        t.fit(train, val, epochs=1, early_stopping=EarlyStopping(monitor="y1/mae2"))
    with pytest.raises(ValueError, match="only training losses can be monitored"):
        t.fit(train, epochs=1, early_stopping=EarlyStopping(monitor="y1/mse"))


def test_corrupt_or_mismatched_checkpoint(data, tmp_path: Path) -> None:
    train, _ = data
    t = make_trainer(0, train.tasks)
    t.fit(train, epochs=1, batch_size=128, checkpoint=tmp_path / "ok.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes((tmp_path / "ok.pt").read_bytes()[:500])
    with pytest.raises(CheckpointError, match="corrupt, truncated or not an mtlkit checkpoint"):
        t.load_checkpoint(bad)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="is not an mtlkit checkpoint"):
        t.load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        t.load_checkpoint(tmp_path / "missing.pt")
    torch.manual_seed(0)
    other = Trainer(
        MODELS.build("shared_bottom", input_dim=12, tasks=train.tasks), train.tasks, progress=False
    )
    with pytest.raises(CheckpointError, match="does not fit this model"):
        other.load_checkpoint(tmp_path / "ok.pt")


def test_divergence_is_reported(data) -> None:
    train, _ = data
    x = train.inputs.clone()
    x[5, 0] = float("nan")
    bad = MultiTaskDataset(x, train.targets, tasks=train.tasks)
    t = make_trainer(0, train.tasks)
    with pytest.raises(TrainingDivergedError, match="became nan in epoch 1.*check the inputs for NaN"):
        t.fit(bad, epochs=1, batch_size=64)


def test_missing_labels_and_per_task_batches(data) -> None:
    train, val = data
    y2 = train.targets["y2"].clone()
    y2[: len(y2) // 2] = float("nan")
    partial = MultiTaskDataset(train.inputs, {"y1": train.targets["y1"], "y2": y2}, tasks=train.tasks)
    t = make_trainer(0, train.tasks)
    hist = t.fit(partial, val, epochs=1, batch_size=64)
    assert all(math.isfinite(v) for v in hist[0]["train"].values())
    # a batch iterable whose batches carry only one task at a time (alternating per-task data)
    only = [
        (
            train.inputs[i : i + 50],
            {"y1" if i % 100 == 0 else "y2": train.targets["y1" if i % 100 == 0 else "y2"][i : i + 50]},
        )
        for i in range(0, 400, 50)
    ]
    t2 = make_trainer(0, train.tasks)
    hist = t2.fit(only, epochs=1)
    assert all(math.isfinite(v) for v in hist[0]["train"].values())


def test_bad_batches_from_user_iterables_are_validated(data) -> None:
    train, _ = data
    t = make_trainer(0, train.tasks)
    bad = [(train.inputs[:8], {"y1": torch.full((8,), float("inf")), "y2": train.targets["y2"][:8]})]
    with pytest.raises(DataError, match="infinite labels"):
        t.fit(bad, epochs=1)


def test_predict_and_evaluate_agree(data) -> None:
    train, val = data
    t = make_trainer(0, train.tasks)
    t.fit(train, epochs=1, batch_size=64)
    pred = t.predict(val.inputs, batch_size=37)
    assert pred["y1"].shape == (len(val),)
    mse = ((pred["y1"] - val.targets["y1"]) ** 2).mean().item()
    assert t.evaluate(val)["y1"]["mse"] == pytest.approx(mse, rel=1e-5)
    assert torch.allclose(t.predict(val)["y2"], pred["y2"])


def test_trainer_rejects_mismatched_parts(data) -> None:
    train, _ = data
    model = MODELS.build("mmoe", input_dim=12, tasks=train.tasks)
    with pytest.raises(ValueError, match="weighting was built for tasks"):
        Trainer(model, train.tasks, weighting=UncertaintyWeighting(["a", "b"]), progress=False)
    with pytest.raises(KeyError, match="Unknown model output 'zz'"):
        Trainer(model, [Task(name="zz", kind="binary")], progress=False)


def test_tensorboard_and_progress(data, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    train, val = data
    t = make_trainer(0, train.tasks, log_dir=tmp_path / "tb", progress=True, log_epochs=True)
    t.fit(TensorBatchLoader(train, 64, shuffle=True), val, epochs=1)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_hand_written_loop_with_public_api(data) -> None:
    """The README's custom-loop recipe: task_losses + backward, no Trainer."""
    train, _ = data
    torch.manual_seed(0)
    model = MODELS.build("shared_bottom", input_dim=12, tasks=train.tasks)
    weighting = UncertaintyWeighting(train.tasks)
    opt = torch.optim.Adam([*model.parameters(), *weighting.parameters()], lr=1e-2)
    first = None
    for epoch in range(3):
        loader = TensorBatchLoader(train, 64, shuffle=True, seed=0)
        loader.set_epoch(epoch)
        for b in loader:
            tl = mtlkit.task_losses(train.tasks, model(b.inputs), b.targets)
            opt.zero_grad()
            res = mtlkit.backward(tl.losses, weighting=weighting, present=tl.present)
            opt.step()
            first = res.losses.sum().item() if first is None else first
    assert res.losses.sum().item() < first
