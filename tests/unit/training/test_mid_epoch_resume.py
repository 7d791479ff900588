"""Exact mid-epoch checkpoints and resume (``Trainer.fit(checkpoint_every=...)``), for every schedule."""

from __future__ import annotations

import itertools
import math
import os
import runpy
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

import mtlkit
from mtlkit import Task, Trainer
from mtlkit.data import MultiTaskDataset
from mtlkit.data.dataset import TensorBatchLoader
from mtlkit.errors import CheckpointError
from mtlkit.registries import MODELS
from mtlkit.training import Alternating, Mixed, Sampling
from mtlkit.training.checkpoint import load_checkpoint, save_checkpoint
from mtlkit.training.epoch import EpochStats
from mtlkit.training.source import as_source

TASKS = (Task(name="a", kind="regression"), Task(name="b", kind="binary"))
REPO = Path(__file__).resolve().parents[3]


def dataset(n: int, seed: int, *, missing_b: int = 0) -> MultiTaskDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    ya = x[:, 0] - 0.5 * x[:, 1] + 0.1 * torch.randn(n, generator=g)
    yb = (x[:, 2] + 0.3 * torch.randn(n, generator=g) > 0).float()
    yb[:missing_b] = float("nan")
    return MultiTaskDataset(x, {"a": ya, "b": yb})


def per_task_data() -> dict[str, MultiTaskDataset]:
    a, b = dataset(70, 1), dataset(110, 2)
    return {
        "a": MultiTaskDataset(a.inputs, {"a": a.targets["a"]}),
        "b": MultiTaskDataset(b.inputs, {"b": b.targets["b"]}),
    }


# name: (schedule factory, weighting factory, aggregator factory, per-task optimizers, data factory)
CASES: dict[str, tuple[Callable[[], Any], Callable[[], Any], Callable[[], Any], bool, Callable[[], Any]]] = {
    "joint_uncertainty": (
        lambda: "joint",
        lambda: mtlkit.weighting.UncertaintyWeighting(TASKS),
        lambda: None,
        False,
        lambda: dataset(150, 0, missing_b=40),
    ),
    "joint_pcgrad": (
        lambda: "joint",
        lambda: None,
        lambda: mtlkit.aggregation.PCGrad(),
        False,
        lambda: dataset(150, 0, missing_b=40),
    ),
    "mixed_dwa": (lambda: Mixed(), lambda: mtlkit.weighting.DWA(TASKS), lambda: None, False, per_task_data),
    "alternating_random_uncertainty": (
        lambda: Alternating("random"),
        lambda: mtlkit.weighting.UncertaintyWeighting(TASKS),
        lambda: None,
        False,
        per_task_data,
    ),
    "sampling_per_task_optimizers": (
        lambda: Sampling("temperature", temperature=2.0, steps_per_epoch=11),
        lambda: mtlkit.weighting.UncertaintyWeighting(TASKS),
        lambda: None,
        True,
        per_task_data,
    ),
}


class Interrupted(Exception):  # noqa: N818 - a simulated stop, not an error
    pass


class StopAt:
    """A logger that interrupts training after global step ``step`` (1-based count of steps)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def watch(self, data: Any) -> None: ...

    def log_step(self, step: int, result: Any) -> None:
        if step == self.step:
            raise Interrupted(step)

    def log_epoch(self, record: Mapping[str, Any], model: Any) -> None: ...

    def flush(self) -> None: ...


def build(case: str, init_seed: int, logger: Any = None) -> Trainer:
    make_schedule, make_weighting, make_aggregator, per_task_opt, _ = CASES[case]
    torch.manual_seed(init_seed)
    model = MODELS.build("mmoe", input_dim=3, tasks=TASKS, num_experts=2, expert_dims=(8,), dropout=0.1)
    return Trainer(
        model,
        TASKS,
        weighting=make_weighting(),
        aggregator=make_aggregator(),
        schedule=make_schedule(),
        per_task_optimizers=per_task_opt,
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.9),
        scheduler_interval="step",
        progress=False,
        device="cpu",
        seed=7,
        logger=logger,
    )


def without_seconds(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def assert_close(a: Any, b: Any, where: str = "", rtol: float = 1e-6) -> None:
    """Nested dicts/lists equal, floats within ``rtol`` of their scale (NaN equals NaN)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_close(a[k], b[k], f"{where}.{k}", rtol)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{where}[{i}]", rtol)
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= rtol * max(1.0, abs(a)), (where, a, b)
    else:
        assert a == b, (where, a, b)


def assert_same_parameters(p: Trainer, q: Trainer) -> None:
    for (name, x), y in zip(p.model.named_parameters(), q.model.parameters()):
        scale = x.abs().max().clamp_min(1e-12)
        assert ((x - y).abs().max() / scale).item() <= 1e-6, name
    for x, y in zip(p.weighting.parameters(), q.weighting.parameters()):
        assert torch.allclose(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", list(CASES))
def test_an_epoch_interrupted_mid_way_resumes_to_the_uninterrupted_run(
    case: str, tmp_path: Path, one_thread
) -> None:
    data = CASES[case][4]()
    full = build(case, 0)
    full.fit(data, data, epochs=3, batch_size=16)
    steps = full.step // 3  # steps per epoch
    assert steps >= 6
    stop = steps + steps // 2 + 1  # in the middle of epoch 2, one step after a checkpoint
    every = 2 if (steps + steps // 2) % 2 == 0 else 1

    ck = tmp_path / "ck.pt"
    with pytest.raises(Interrupted):
        build(case, 0, logger=StopAt(stop)).fit(
            data, data, epochs=3, batch_size=16, checkpoint=ck, checkpoint_every=every
        )
    saved = load_checkpoint(ck)
    assert saved["version"] == 2 and saved["epoch"] == 1 and saved["step"] == stop - 1
    assert saved["position"]["epoch"] == 1 and saved["position"]["steps"] == stop - 1 - steps
    assert len(saved["history"]) == 1

    resumed = build(case, 123)  # a fresh process: other initial weights, fresh schedule and optimizers
    resumed.fit(data, data, epochs=3, batch_size=16, resume=ck, checkpoint=ck, checkpoint_every=every)
    assert resumed.step == full.step and resumed.epoch == 3
    assert_close(without_seconds(resumed.history), without_seconds(full.history), "history")
    assert_same_parameters(resumed, full)
    assert_close(resumed.schedule.state_dict().get("cursors"), full.schedule.state_dict().get("cursors"))
    last = load_checkpoint(ck)  # written at the end of the last epoch: no position
    assert last["position"] is None and last["version"] == 1 and last["step"] == full.step


def test_resume_through_load_state_dict_then_fit_continues_mid_epoch(tmp_path: Path, one_thread) -> None:
    """The experiment runner loads the state first and then calls fit (no ``resume=``)."""
    data = dataset(96, 3)
    full = build("joint_uncertainty", 0)
    full.fit(data, epochs=2, batch_size=16)
    with pytest.raises(Interrupted):
        build("joint_uncertainty", 0, logger=StopAt(9)).fit(
            data, epochs=2, batch_size=16, checkpoint=tmp_path / "ck.pt", checkpoint_every=4
        )
    resumed = build("joint_uncertainty", 5)
    resumed.load_checkpoint(tmp_path / "ck.pt")
    assert resumed.position() is None and resumed.step == 8 and resumed.epoch == 1
    resumed.fit(data, epochs=2, batch_size=16)
    assert_close(without_seconds(resumed.history), without_seconds(full.history))
    assert_same_parameters(resumed, full)


def test_checkpoints_between_epochs_and_older_checkpoints_still_resume(tmp_path: Path) -> None:
    data = dataset(64, 4)
    full = build("joint_uncertainty", 0)
    full.fit(data, epochs=2, batch_size=16)
    first = build("joint_uncertainty", 0)
    first.fit(data, epochs=1, batch_size=16, checkpoint=tmp_path / "ck.pt", checkpoint_every=4)
    saved = load_checkpoint(tmp_path / "ck.pt")
    assert saved["position"] is None and saved["version"] == 1  # end of epoch: readable by older mtlkit
    old = {k: v for k, v in saved.items() if k not in ("position", "format", "version")}
    save_checkpoint(old, tmp_path / "old.pt")  # as written before mid-epoch checkpoints existed
    resumed = build("joint_uncertainty", 9)
    resumed.fit(data, epochs=2, batch_size=16, resume=tmp_path / "old.pt")
    assert_close(without_seconds(resumed.history), without_seconds(full.history))
    assert_same_parameters(resumed, full)


def test_checkpoint_every_is_checked(tmp_path: Path) -> None:
    data = dataset(32, 0)
    t = build("joint_uncertainty", 0)
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="checkpoint_every must be an int >= 1"):
            t.fit(data, epochs=1, checkpoint=tmp_path / "ck.pt", checkpoint_every=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="checkpoint_every needs checkpoint="):
        t.fit(data, epochs=1, checkpoint_every=2)
    assert t.step == 0


def test_a_damaged_position_is_refused(tmp_path: Path) -> None:
    data = dataset(64, 0)
    with pytest.raises(Interrupted):
        build("joint_uncertainty", 0, logger=StopAt(3)).fit(
            data, epochs=1, batch_size=16, checkpoint=tmp_path / "ck.pt", checkpoint_every=2
        )
    saved = load_checkpoint(tmp_path / "ck.pt")
    del saved["position"]["stats"]
    with pytest.raises(CheckpointError, match="position inside an epoch that is incomplete"):
        build("joint_uncertainty", 0).load_state_dict(saved)


def test_a_diverged_loss_is_never_checkpointed_mid_epoch(tmp_path: Path) -> None:
    batches = list(TensorBatchLoader(dataset(128, 0), 16))
    batches[4].inputs[0, 0] = float("inf")  # step 5 gives a non-finite loss
    t = build("joint_uncertainty", 0)
    with pytest.raises(mtlkit.training.TrainingDivergedError, match="at step 5 .*from before that step"):
        t.fit(batches, epochs=1, checkpoint=tmp_path / "ck.pt", checkpoint_every=2)
    saved = load_checkpoint(tmp_path / "ck.pt")
    assert saved["step"] == 4 and saved["position"]["steps"] == 4  # the last good one


# ---------------------------------------------------------------------------------------------- parts
@pytest.mark.parametrize(
    "schedule",
    [lambda: "joint", lambda: Mixed(), lambda: Alternating("random"), lambda: Sampling("proportional")],
    ids=["joint", "mixed", "alternating_random", "sampling"],
)
def test_epoch_from_start_yields_the_rest_of_the_full_epoch(schedule: Callable[[], Any]) -> None:
    from mtlkit.training.schedules import resolve_schedule

    data = per_task_data() if not isinstance(schedule(), str) else dataset(100, 0)
    for start in (0, 1, 4):
        full_s, part_s = resolve_schedule(schedule()), resolve_schedule(schedule())
        full = full_s.bind(as_source(data), TASKS, batch_size=16, seed=3)
        part = part_s.bind(as_source(data), TASKS, batch_size=16, seed=3)
        for epoch in (0, 1):
            want = list(full.epoch(epoch))[start:]
            got = list(part.epoch(epoch, start))
            assert [s.tasks for s in got] == [s.tasks for s in want]
            for g, w in zip(got, want):
                assert torch.equal(g.batch.inputs, w.batch.inputs)
            # sampling: the cursors end the epoch where the full epoch leaves them
            assert str(part_s.state_dict()) == str(full_s.state_dict())


def test_tensor_batch_loader_set_start_skips_without_gathering(monkeypatch) -> None:
    data = dataset(100, 0)
    loader = TensorBatchLoader(data, 16, shuffle=True, seed=1)
    loader.set_epoch(2)
    want = [b.inputs for b in loader][3:]
    taken: list[int] = []
    original = MultiTaskDataset.take
    monkeypatch.setattr(
        MultiTaskDataset, "take", lambda self, idx: taken.append(len(idx)) or original(self, idx)
    )
    loader.set_start(3)
    got = [b.inputs for b in loader]
    assert len(taken) == len(want) == 4 and all(torch.equal(g, w) for g, w in zip(got, want))
    assert len(list(loader)) == 7  # set_start applies to one iteration only
    with pytest.raises(ValueError, match="set_start takes a batch index >= 0"):
        loader.set_start(-1)


def test_tensor_batch_loader_set_start_keeps_augmentation_in_step() -> None:
    data = dataset(100, 0)
    data.augment = lambda x, g: x + torch.randn(x.shape, generator=g)  # type: ignore[attr-defined]
    loader = TensorBatchLoader(data, 16, shuffle=True, seed=1)
    want = [b.inputs for b in loader][2:]
    loader.set_start(2)
    got = [b.inputs for b in loader]
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_a_plain_iterable_is_replayed_and_discarded() -> None:
    data = dataset(64, 0)
    batches = list(TensorBatchLoader(data, 16))
    plan = mtlkit.training.Joint().bind(as_source(batches), TASKS, batch_size=16)
    got = list(plan.epoch(0, 3))
    assert len(got) == 1 and torch.equal(got[0].batch.inputs, batches[3].inputs)


def test_epoch_stats_state_round_trip() -> None:
    t = build("joint_uncertainty", 0)
    data = dataset(64, 0)
    steps = [t.train_step(b) for b in itertools.islice(TensorBatchLoader(data, 16), 4)]
    a = EpochStats(t.task_names, torch.device("cpu"), epoch=1, first_step=10)
    for s in steps[:2]:
        a.add(s, None)
    b = EpochStats(t.task_names, torch.device("cpu"), epoch=0, first_step=0)
    b.load_state_dict(a.state_dict())
    for s in steps[2:]:
        a.add(s, None)
        b.add(s, None)
    assert b.steps == 4 and b.first_step == 10 and b.epoch == 1
    assert b.means() == a.means() and b.summary(b.means(), steps_per_task=True) == a.summary(
        a.means(), steps_per_task=True
    )


# ---------------------------------------------------------------------------------------------- kill -9
SCRIPT = """
import os, signal, sys
import torch
import mtlkit
from mtlkit import Task, Trainer
from mtlkit.data import MultiTaskDataset
from mtlkit.registries import MODELS

TASKS = (Task(name="a", kind="regression"), Task(name="b", kind="binary"))
g = torch.Generator().manual_seed(0)
x = torch.randn(160, 3, generator=g)
data = MultiTaskDataset(x, {"a": x[:, 0] - x[:, 1], "b": (x[:, 2] > 0).float()})

class Kill:
    def watch(self, data): pass
    def log_step(self, step, result):
        if step == 15:  # epoch 2 (10 steps per epoch), after the checkpoint of step 14
            os.kill(os.getpid(), signal.SIGKILL)
    def log_epoch(self, record, model): pass
    def flush(self): pass

def trainer(logger=None):
    torch.manual_seed(0)
    m = MODELS.build("mmoe", input_dim=3, tasks=TASKS, num_experts=2, expert_dims=(8,), dropout=0.1)
    return Trainer(m, TASKS, weighting=mtlkit.weighting.UncertaintyWeighting(TASKS), progress=False,
                   device="cpu", seed=1, logger=logger)

if __name__ == "__main__":
    torch.set_num_threads(1)
    trainer(Kill()).fit(data, epochs=3, batch_size=16, checkpoint=sys.argv[1], checkpoint_every=7)
"""


def test_kill_9_mid_epoch_then_resume_gives_the_uninterrupted_parameters(tmp_path: Path, one_thread) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    ck = tmp_path / "ck.pt"
    killed = subprocess.run([sys.executable, str(script), str(ck)], env=env, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    saved = load_checkpoint(ck)
    assert saved["step"] == 14 and (saved["position"]["epoch"], saved["position"]["steps"]) == (1, 4)

    made = runpy.run_path(str(script), run_name="kill9")  # the same data and trainer, here
    full = made["trainer"]()
    full.fit(made["data"], epochs=3, batch_size=16)
    resumed = made["trainer"]()
    resumed.fit(made["data"], epochs=3, batch_size=16, resume=ck)
    assert resumed.step == full.step == 30
    assert_same_parameters(resumed, full)
    assert_close(without_seconds(resumed.history), without_seconds(full.history))
