"""Streams under the schedules: one stream trains with 'joint' and 'mixed' (the same plan); per-task
streams ``{task: TabularStream}`` train with 'alternating' and 'sampling', each task's batches its
own stream's, pass by pass, and an interrupted epoch resumes exactly, each stream started at its
batch (``set_start``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

import mtlkit
from mtlkit.data.impressions import impression_log
from mtlkit.data.stream_loader import StreamLoader
from mtlkit.data.streaming import TabularStream, tabular_stream
from mtlkit.distributed import mix_seed
from mtlkit.errors import DataError
from mtlkit.models import EmbeddingFrontEnd, mmoe
from mtlkit.training import Alternating, Mixed, Sampling
from mtlkit.training.source import PerTaskSources, as_source

CAT = ["user_id", "item_id", "position"]
NUM = ["price", "user_activity"]
TASKS = {
    "ctr": {"column": "click", "kind": "binary"},
    "watch": {"column": "watch_time", "kind": "regression"},
}
B = 32


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("per_task")
    impression_log(root / "a", 330, shard_rows=200, row_group_rows=70, seed=1)  # ctr's data
    impression_log(root / "b", 150, shard_rows=100, row_group_rows=40, seed=2)  # watch's data
    return root


def _streams(logs: Path, workers: int = 0) -> tuple[Any, dict[str, TabularStream]]:
    """The 'ctr' stream (its own files, fitting the preprocessor) and a 'watch' stream sharing it."""
    splits = tabular_stream(
        train=logs / "a", tasks=TASKS, categorical=CAT, numeric=NUM, shuffle_buffer=90, num_workers=workers
    )
    a = splits.train
    b = TabularStream(
        logs / "b",
        tasks=a.tasks,
        labels=a.encoder.labels,
        preprocessor=a.preprocessor,
        shuffle_buffer=50,
        num_workers=workers,
        unknown_fraction=0.01,
    )
    return splits, {"ctr": a, "watch": b}


def _trainer(splits: Any, schedule: Any, logger: Any = None) -> mtlkit.Trainer:
    torch.manual_seed(0)
    model = mmoe(
        None,
        splits.tasks,
        num_experts=2,
        expert_dims=(8,),
        tower_dims=(4,),
        dropout=0.1,
        input_layer=lambda: EmbeddingFrontEnd(splits.input_spec, 3),
    )
    return mtlkit.Trainer(
        model,
        splits.tasks,
        weighting=mtlkit.weighting.UncertaintyWeighting(splits.tasks),
        schedule=schedule,
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
        progress=False,
        device="cpu",
        seed=2,
        logger=logger,
    )


def _same_parameters(p: mtlkit.Trainer, q: mtlkit.Trainer, rtol: float = 1e-6) -> None:
    for (name, x), y in zip(p.model.named_parameters(), q.model.parameters()):
        scale = x.abs().max().clamp_min(1e-12)
        assert ((x - y).abs().max() / scale).item() <= rtol, name
    for x, y in zip(p.weighting.parameters(), q.weighting.parameters()):
        torch.testing.assert_close(y, x, rtol=rtol, atol=1e-7)


def _same_history(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for part in ("train", "weights", "steps"):
            if part in y:
                for task, v in y[part].items():
                    w = x[part][task]
                    assert (math.isnan(v) and math.isnan(w)) or w == pytest.approx(v, rel=1e-6), (part, task)


# ---------------------------------------------------------------------------------------------- one stream
def test_mixed_on_one_stream_trains_as_joint(logs: Path, one_thread) -> None:
    splits, _ = _streams(logs)
    joint = _trainer(splits, "joint")
    joint.fit(splits.train, epochs=2, batch_size=B)
    mixed = _trainer(splits, Mixed())
    mixed.fit(splits.train, epochs=2, batch_size=B)
    assert mixed.step == joint.step == 2 * math.ceil(330 / B)
    _same_parameters(mixed, joint, rtol=0.0)
    _same_history(mixed.history, joint.history)


def test_one_stream_refuses_the_per_task_schedules_saying_what_works(logs: Path) -> None:
    splits, _ = _streams(logs)
    for schedule in (Alternating(), Sampling()):
        with pytest.raises(
            DataError, match=r"one stream use schedule 'joint' or 'mixed'.*\{task: TabularStream\}"
        ):
            _trainer(splits, schedule).fit(splits.train, epochs=1, batch_size=B)


# ---------------------------------------------------------------------------------------------- per-task streams
def test_alternating_takes_each_task_stream_pass_by_pass(logs: Path) -> None:
    splits, streams = _streams(logs)
    tasks = list(splits.tasks)
    plan = Alternating().bind(as_source(streams), tasks, batch_size=B, seed=5)
    steps = {"ctr": math.ceil(330 / B), "watch": math.ceil(150 / B)}
    assert plan.steps_per_epoch == sum(steps.values()) and plan.sizes == {"ctr": 330, "watch": 150}
    for epoch in (0, 1):
        got = list(plan.epoch(epoch))
        names = [s.tasks[0] for s in got]
        rounds = max(steps.values())
        assert names == [t for r in range(rounds) for t in ("ctr", "watch") if r < steps[t]]  # round robin
        for i, task in enumerate(tasks):  # independently: the task's own loader at this epoch
            loader = streams[task.name].loader([task], B, seed=mix_seed(5, i))
            loader.set_epoch(epoch)
            want = list(loader)
            mine = [s.batch for s in got if s.tasks == (task.name,)]
            assert len(mine) == len(want) == steps[task.name]
            assert sum(len(b) for b in mine) == streams[task.name].num_rows  # every row of its stream once
            for g, w in zip(mine, want):
                assert torch.equal(g.inputs["numeric"], w.inputs["numeric"])
                assert set(g.targets) == {task.name}  # only its own labels
                torch.testing.assert_close(
                    g.targets[task.name], w.targets[task.name], rtol=0, atol=0, equal_nan=True
                )


class Interrupted(Exception):  # noqa: N818 - a simulated stop
    pass


class StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def watch(self, data: Any) -> None: ...

    def log_step(self, step: int, result: Any) -> None:
        if step == self.step:
            raise Interrupted(step)

    def log_epoch(self, record: Mapping[str, Any], model: Any) -> None: ...

    def flush(self) -> None: ...


@pytest.mark.parametrize(
    "make",
    [lambda: Alternating("random"), lambda: Sampling("proportional", steps_per_epoch=13)],
    ids=["alternating_random", "sampling"],
)
def test_per_task_streams_resume_mid_epoch_exactly(
    logs: Path, tmp_path: Path, make: Any, monkeypatch: pytest.MonkeyPatch, one_thread
) -> None:
    splits, streams = _streams(logs)
    full = _trainer(splits, make())
    full.fit(streams, epochs=3, batch_size=B)
    per_epoch = full.step // 3
    assert full.history[0]["steps"]["ctr"] > 0 and full.history[0]["steps"]["watch"] > 0
    stop = 2 * per_epoch + per_epoch // 2 + 1  # inside epoch 3, one step after a checkpoint
    ck = tmp_path / "ck.pt"
    with pytest.raises(Interrupted):
        _trainer(splits, make(), StopAt(stop)).fit(
            streams, epochs=3, batch_size=B, checkpoint=ck, checkpoint_every=1
        )
    starts: list[int] = []
    set_start = StreamLoader.set_start
    monkeypatch.setattr(StreamLoader, "set_start", lambda self, i: starts.append(i) or set_start(self, i))
    resumed = _trainer(splits, make())
    resumed.fit(streams, epochs=3, batch_size=B, resume=ck)
    assert resumed.step == full.step
    assert any(i > 0 for i in starts[:2])  # a task's stream started inside its pass, without re-reading
    _same_parameters(resumed, full)
    _same_history(resumed.history, full.history)


def test_per_task_streams_refuse_joint_and_mixed_and_unknown_tasks(logs: Path) -> None:
    splits, streams = _streams(logs)
    for schedule in ("joint", Mixed()):
        with pytest.raises(DataError, match=r"a source per task.*'alternating' or 'sampling'"):
            _trainer(splits, schedule).fit(streams, epochs=1, batch_size=B)
    source = as_source({"ctr": streams["ctr"], "wtch": streams["watch"]})
    assert isinstance(source, PerTaskSources)
    with pytest.raises(DataError, match=r"unknown task 'wtch'.*watch"):
        Alternating().bind(source, list(splits.tasks), batch_size=B)
    with pytest.raises(DataError, match=r"none for \['watch'\]"):
        Alternating().bind(as_source({"ctr": streams["ctr"]}), list(splits.tasks), batch_size=B)
