"""Training schedules: step accounting, sampling frequencies, per-task optimizers, refusals, resume."""

from __future__ import annotations

import copy
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

import mtlkit
from mtlkit import Task, Trainer
from mtlkit.config import apply_overrides, load_preset, resolve
from mtlkit.data import MultiTaskDataset
from mtlkit.errors import CheckpointError, ConfigError, DataError, IncompatibleComponentsError
from mtlkit.registries import AGGREGATORS, MODELS, SCHEDULES, WEIGHTINGS
from mtlkit.training import Alternating, Joint, Mixed, Sampling, mixed_dataset
from mtlkit.training.source import as_source

TASKS = (Task(name="a", kind="regression"), Task(name="b", kind="binary"))


def dataset(ids: range, task: Task, *, missing: int = 0, dim: int = 3, seed: int = 0) -> MultiTaskDataset:
    """Rows whose feature 0 is the row id; the first ``missing`` rows have no label."""
    g = torch.Generator().manual_seed(seed)
    n = len(ids)
    x = torch.cat(
        [torch.tensor(list(ids), dtype=torch.float32)[:, None], torch.randn(n, dim - 1, generator=g)], 1
    )
    y = (torch.rand(n, generator=g) > 0.5).float() if task.kind == "binary" else torch.randn(n, generator=g)
    y[:missing] = float("nan")
    return MultiTaskDataset(x, {task.target_key: y})


def ids_of(batch) -> list[int]:
    return batch.inputs[:, 0].long().tolist()


@pytest.fixture
def per_task() -> dict[str, MultiTaskDataset]:
    # a: 70 rows, the first 10 unlabelled (ids 0..9); b: 130 rows (ids 1000..1129)
    return {"a": dataset(range(70), TASKS[0], missing=10), "b": dataset(range(1000, 1130), TASKS[1], seed=1)}


# ---------------------------------------------------------------------------------------------- accounting
def test_round_robin_step_accounting_and_order_are_exact(per_task) -> None:
    plan = Alternating("round_robin").bind(as_source(per_task), TASKS, batch_size=16, seed=0)
    # a: 60 labelled rows -> ceil(60/16) = 4 batches; b: ceil(130/16) = 9 batches
    assert plan.steps_per_epoch == 13 and plan.sizes == {"a": 60, "b": 130}
    for epoch in (0, 1):
        steps = list(plan.epoch(epoch))
        assert [s.tasks for s in steps] == [("a",), ("b",)] * 4 + [("b",)] * 5
        seen = {"a": [], "b": []}
        for s in steps:
            (task,) = s.tasks
            assert set(s.batch.targets) == {task}  # a step's batch carries only its task's labels
            seen[task] += ids_of(s.batch)
        assert sorted(seen["a"]) == list(range(10, 70))  # each labelled sample once, unlabelled never
        assert sorted(seen["b"]) == list(range(1000, 1130))
        assert [len(s.batch) for s in steps if s.tasks == ("a",)] == [16, 16, 16, 12]
    first, second = ([ids_of(s.batch) for s in plan.epoch(e)] for e in (0, 1))
    assert first != second  # reshuffled every epoch


def test_random_alternating_is_a_seeded_permutation_of_the_same_steps(per_task) -> None:
    sched = Alternating("random")
    plan = sched.bind(as_source(per_task), TASKS, batch_size=16, seed=3)
    orders = [[s.tasks[0] for s in plan.epoch(e)] for e in range(3)]
    for order in orders:
        assert Counter(order) == {"a": 4, "b": 9}
    assert orders[0] != orders[1] and ["a", "b"] * 4 + ["b"] * 5 not in orders
    again = Alternating("random").bind(as_source(per_task), TASKS, batch_size=16, seed=3)
    assert [s.tasks[0] for s in again.epoch(1)] == orders[1]  # a function of (seed, epoch) only
    other = Alternating("random").bind(as_source(per_task), TASKS, batch_size=16, seed=4)
    assert [s.tasks[0] for s in other.epoch(1)] != orders[1]


def test_a_jointly_labelled_dataset_is_split_into_per_task_views() -> None:
    x = torch.arange(50, dtype=torch.float32)[:, None].repeat(1, 3)
    ya = torch.randn(50)
    ya[::5] = float("nan")  # 10 rows without a label for a
    yb = (torch.rand(50) > 0.5).float()
    yb[:20] = float("nan")  # 20 rows without a label for b
    data = MultiTaskDataset(x, {"a": ya, "b": yb})
    plan = Alternating().bind(as_source(data), TASKS, batch_size=8, seed=0)
    assert plan.sizes == {"a": 40, "b": 30} and plan.steps_per_epoch == 5 + 4
    seen = {"a": [], "b": []}
    for s in plan.epoch(0):
        seen[s.tasks[0]] += ids_of(s.batch)
        assert set(s.batch.targets) == set(s.tasks)
    assert sorted(seen["a"]) == [i for i in range(50) if i % 5] and sorted(seen["b"]) == list(range(20, 50))


def test_mixed_batches_flag_each_sample_with_its_task(per_task) -> None:
    pool = mixed_dataset(per_task, TASKS)
    assert len(pool) == 60 + 130 and pool.info["mixed_from"] == {"a": 60, "b": 130}
    ids = pool.inputs[:, 0].long()
    from_a = ids < 1000
    # the label mask is the per-sample task flag: a sample is labelled for its own task only
    assert torch.equal(pool.masks["a"], from_a) and torch.equal(pool.masks["b"], ~from_a)
    torch.testing.assert_close(pool.targets["a"][from_a], per_task["a"].targets["a"][10:])
    torch.testing.assert_close(pool.targets["b"][~from_a], per_task["b"].targets["b"])
    plan = Mixed().bind(as_source(per_task), TASKS, batch_size=32, seed=0)
    steps = list(plan.epoch(0))
    assert plan.steps_per_epoch == len(steps) == math.ceil(190 / 32)
    assert all(s.tasks is None for s in steps)  # every step trains every task
    seen = sorted(i for s in steps for i in ids_of(s.batch))
    assert seen == list(range(10, 70)) + list(range(1000, 1130))  # one pass, unlabelled rows left out
    # a task's loss in a mixed batch averages over its own samples only
    b = steps[0].batch
    pred = {"a": torch.zeros(len(b)), "b": torch.zeros(len(b))}
    tl = mtlkit.task_losses(TASKS, pred, b.targets, b.masks)
    mine = b.masks["a"]
    torch.testing.assert_close(tl.losses[0], (b.targets["a"][mine] ** 2).mean())
    assert tl.counts.tolist() == [mine.sum().item(), (~mine).sum().item()]


def test_mixed_pools_any_label_kind() -> None:
    tasks = (
        Task(name="digit", kind="multiclass", num_classes=10),
        Task(name="item", kind="multiclass", num_classes=10),
        Task(name="flag", kind="binary"),
    )
    x = torch.randn(12, 3)
    data = {
        "digit": MultiTaskDataset(
            x[:4], {"digit": torch.tensor([0.0, 3.0, 9.0, -1.0])}
        ),  # float class indices
        "item": MultiTaskDataset(x[4:8], {"item": torch.tensor([1, 2, -1, 4])}),
        "flag": MultiTaskDataset(x[8:], {"flag": torch.tensor([1, 0, 1, 1])}),  # integer 0/1 labels
    }
    pool = mixed_dataset(data, tasks)
    assert pool.info["mixed_from"] == {"digit": 3, "item": 3, "flag": 4}  # unlabelled rows left out
    assert pool.targets["digit"].tolist() == [0.0, 3.0, 9.0] + [-1.0] * 7
    assert pool.targets["item"].tolist() == [-1] * 3 + [1, 2, 4] + [-1] * 4
    assert pool.masks["flag"].tolist() == [False] * 6 + [True] * 4
    torch.testing.assert_close(pool.inputs, torch.cat([x[:3], x[4:6], x[7:8], x[8:]]))


def test_mixed_needs_the_same_inputs(per_task) -> None:
    other = {"a": per_task["a"], "b": dataset(range(5), TASKS[1], dim=4)}
    with pytest.raises(DataError, match="need the same inputs.*Use schedule 'alternating' or 'sampling'"):
        Mixed().bind(as_source(other), TASKS, batch_size=8)


# ---------------------------------------------------------------------------------------------- sampling
def test_sampling_probabilities_follow_their_definitions() -> None:
    sizes = [100, 10_000]
    assert Sampling("uniform").probabilities(sizes) == [0.5, 0.5]
    assert Sampling("proportional").probabilities(sizes) == pytest.approx([100 / 10_100, 10_000 / 10_100])
    # T = 2: p ∝ sqrt(n) = 10, 100
    assert Sampling("temperature", temperature=2.0).probabilities(sizes) == pytest.approx(
        [10 / 110, 100 / 110]
    )
    assert Sampling("temperature", temperature=1.0).probabilities(sizes) == pytest.approx(
        Sampling("proportional").probabilities(sizes)
    )
    assert Sampling("temperature", temperature=1e6).probabilities(sizes) == pytest.approx(
        [0.5, 0.5], abs=1e-5
    )


@pytest.mark.parametrize(
    ("strategy", "temperature"), [("uniform", None), ("proportional", None), ("temperature", 3.0)]
)
def test_sampling_frequencies_match_the_probabilities(strategy: str, temperature: float | None) -> None:
    tasks = (*TASKS, Task(name="c", kind="regression"))
    sizes = {"a": 100, "b": 1_000, "c": 10_000}
    data = {t.name: dataset(range(sizes[t.name]), t, dim=2, seed=i) for i, t in enumerate(tasks)}
    steps = 6000
    sched = Sampling(strategy, temperature=temperature, steps_per_epoch=steps)
    plan = sched.bind(as_source(data), tasks, batch_size=4, seed=0)
    counts = Counter(s.tasks[0] for s in plan.epoch(0))
    assert sum(counts.values()) == steps == plan.steps_per_epoch
    p = dict(zip(sizes, sched.probabilities(list(sizes.values()))))
    # each count is Binomial(steps, p_k): within 5 standard deviations
    for name, pk in p.items():
        assert abs(counts[name] - steps * pk) < 5 * math.sqrt(steps * pk * (1 - pk)), (name, counts, p)
    # and jointly: Pearson's chi-square with 2 degrees of freedom below its 1e-6 quantile (27.63)
    chi2 = sum((counts[n] - steps * pk) ** 2 / (steps * pk) for n, pk in p.items())
    assert chi2 < 27.63
    if strategy == "uniform":  # regardless of dataset size (seed 004)
        assert max(counts.values()) - min(counts.values()) < 0.1 * steps / 3


def test_sampling_streams_repeat_small_data_in_full_passes_across_epochs() -> None:
    small, large = dataset(range(20), TASKS[0]), dataset(range(1000, 1400), TASKS[1], seed=1)
    sched = Sampling("uniform", steps_per_epoch=15)
    plan = sched.bind(as_source({"a": small, "b": large}), TASKS, batch_size=8, seed=0)
    a_ids = [ids_of(s.batch) for e in range(4) for s in plan.epoch(e) if s.tasks == ("a",)]
    flat = [i for chunk in a_ids for i in chunk]
    assert len(a_ids) > 6  # several passes over the 20 samples (3 batches each: 8, 8, 4)
    for start in range(0, len(flat) - 19, 20):
        assert sorted(flat[start : start + 20]) == list(range(20))  # every pass is a permutation
    assert [len(c) for c in a_ids[:6]] == [8, 8, 4, 8, 8, 4]
    state = sched.state_dict()
    assert state["name"] == "sampling" and set(state["cursors"]) == {"a", "b"}


def test_data_parallel_ranks_share_the_task_order_and_split_the_data(per_task) -> None:
    for sched in (Alternating("random"), Sampling("proportional")):
        plans = [
            type(sched)(*([sched.order] if isinstance(sched, Alternating) else [sched.strategy])).bind(
                as_source(per_task), TASKS, batch_size=8, seed=5, num_replicas=2, rank=r
            )
            for r in (0, 1)
        ]
        runs = [list(p.epoch(2)) for p in plans]
        assert [s.tasks for s in runs[0]] == [s.tasks for s in runs[1]]  # same task every step
        if isinstance(sched, Alternating):
            for task, labelled in (("a", range(10, 70)), ("b", range(1000, 1130))):
                shards = [{i for s in run if s.tasks == (task,) for i in ids_of(s.batch)} for run in runs]
                assert not shards[0] & shards[1] and shards[0] | shards[1] == set(labelled)


def test_bad_data_for_a_schedule_is_refused(per_task) -> None:
    with pytest.raises(DataError, match="Schedule 'joint' trains on one dataset.*Use schedule 'mixed'"):
        Joint().bind(as_source(per_task), TASKS, batch_size=8)
    batches = [(torch.zeros(4, 3), {"a": torch.zeros(4)})]
    with pytest.raises(DataError, match="needs a MultiTaskDataset or a dict.*Use schedule 'joint'"):
        Alternating().bind(as_source(batches), TASKS, batch_size=8)
    with pytest.raises(DataError, match="unknown task 'aa'. Did you mean 'a'"):
        Sampling().bind(as_source({"aa": per_task["a"], "b": per_task["b"]}), TASKS, batch_size=8)
    with pytest.raises(DataError, match=r"Every task needs a dataset.*none for \['b'\]"):
        Alternating().bind(as_source({"a": per_task["a"]}), TASKS, batch_size=8)
    with pytest.raises(DataError, match="dataset given for task 'b' has no targets for it"):
        Alternating().bind(as_source({"a": per_task["a"], "b": per_task["a"]}), TASKS, batch_size=8)
    with pytest.raises(DataError, match="Task 'a' has no labelled sample"):
        Alternating().bind(
            as_source({"a": dataset(range(5), TASKS[0], missing=5), "b": per_task["b"]}), TASKS, batch_size=8
        )
    with pytest.raises(ValueError, match="needs temperature=T > 0"):
        Sampling("temperature")
    with pytest.raises(ValueError, match="temperature only applies to strategy 'temperature'"):
        Sampling("uniform", temperature=2.0)


# ---------------------------------------------------------------------------------------------- refusals
def model(seed: int = 0, name: str = "shared_bottom", **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MODELS.build(name, input_dim=3, tasks=TASKS, **kw)


@pytest.mark.parametrize("schedule", ["alternating", "sampling"])
@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_aggregators_are_refused_with_one_task_per_step(name: str, schedule: str) -> None:
    agg = AGGREGATORS.build(name, tasks=TASKS)
    with pytest.raises(
        IncompatibleComponentsError,
        match=rf"combines the gradients of all tasks within one step, but schedule '{schedule}' trains one "
        r"task per step.*Use schedule 'joint' or 'mixed'",
    ):
        Trainer(model(), TASKS, aggregator=agg, schedule=schedule, progress=False)
    for ok in ("joint", "mixed"):
        Trainer(model(), TASKS, aggregator=agg, schedule=ok, progress=False)


REFUSED = {
    "gradnorm": "compares every task's gradient",
    "famo": "its weight is always 1",
    "rlw": "always 1",
    "gls": "always 1",
}


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_every_weighting_is_either_refused_or_trains_with_one_task_per_step(name: str, per_task) -> None:
    kw = {"weights": {"a": 1.0, "b": 0.5}} if name == "static" else {}
    w = WEIGHTINGS.build(name, tasks=TASKS, **kw)
    if name in REFUSED:
        with pytest.raises(
            IncompatibleComponentsError,
            match=rf"weighs the tasks against each other.*{REFUSED[name]}.*Use schedule",
        ):
            Trainer(model(), TASKS, weighting=w, schedule="alternating", progress=False)
        return
    t = Trainer(model(), TASKS, weighting=w, schedule=Sampling("uniform"), progress=False, device="cpu")
    hist = t.fit(per_task, epochs=2, batch_size=32)
    assert all(math.isfinite(v) for h in hist for v in h["train"].values())
    assert sum(hist[-1]["steps"].values()) == math.ceil(60 / 32) + math.ceil(130 / 32)


def test_per_task_optimizers_need_one_task_per_step_and_factories() -> None:
    with pytest.raises(IncompatibleComponentsError, match="schedule 'joint' trains every task in every step"):
        Trainer(model(), TASKS, per_task_optimizers=True, progress=False)
    m = model()
    with pytest.raises(TypeError, match="must be factories"):
        Trainer(
            m,
            TASKS,
            optimizer=torch.optim.SGD(m.parameters(), lr=0.1),
            schedule="alternating",
            per_task_optimizers=True,
        )
    t = Trainer(model(), TASKS, schedule="alternating", per_task_optimizers=True, progress=False)
    with pytest.raises(ValueError, match="every step trains one task"):
        t.train_step(per_task_batch(), tasks=None)


# ---------------------------------------------------------------------------------------------- steps
def per_task_batch():
    g = torch.Generator().manual_seed(7)
    return mtlkit.data.Batch(
        torch.randn(16, 3, generator=g),
        {"a": torch.randn(16, generator=g), "b": (torch.rand(16, generator=g) > 0.5).float()},
    )


def snapshot(m) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def changed(before, m) -> set[str]:
    return {
        k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("towers") else "")
        for k, v in m.state_dict().items()
        if not torch.equal(v, before[k])
    }


@pytest.mark.parametrize("opt", ["adam", "adamw", "sgd_momentum"])
def test_a_step_of_one_task_changes_only_shared_and_its_own_parameters(opt: str) -> None:
    factory = {
        "adam": lambda p: torch.optim.Adam(p, lr=0.01),
        "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
        "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=0.01),
    }[opt]
    t = Trainer(model(), TASKS, optimizer=factory, progress=False, device="cpu")
    batch = per_task_batch()
    t.train_step(batch)  # both tasks: every head gets optimizer state (momentum)
    before = snapshot(t.model)
    t.train_step(batch, tasks=["a"])
    assert changed(before, t.model) == {"bottom", "towers.a"}
    before = snapshot(t.model)
    t.train_step(batch, tasks=["b"])
    assert changed(before, t.model) == {"bottom", "towers.b"}


def test_per_task_optimizers_reproduce_the_seeds_two_optimizer_loop(per_task) -> None:
    """Reference: the seeds' ``Y1_op``/``Y2_op``: one Adam per task over all parameters, each
    minimising its own task's loss on its own batches, stepped in the schedule's order."""
    sched = Alternating("round_robin")
    t = Trainer(
        model(0),
        TASKS,
        schedule=sched,
        per_task_optimizers=True,
        optimizer=lambda p: torch.optim.Adam(p, lr=0.01),
        progress=False,
        device="cpu",
        seed=0,
    )
    ref = copy.deepcopy(t.model)
    t.fit(per_task, epochs=2, batch_size=16)
    opts = {k: torch.optim.Adam(ref.parameters(), lr=0.01) for k in ("a", "b")}
    plan = Alternating("round_robin").bind(as_source(per_task), TASKS, batch_size=16, seed=0)
    by_name = {task.name: task for task in TASKS}
    for epoch in range(2):
        for step in plan.epoch(epoch):
            (name,) = step.tasks
            task = by_name[name]
            out = ref(step.batch.inputs)[name]
            loss, _ = task.compute_loss(out, step.batch.targets[name])
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
    for p, q in zip(t.model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # every optimizer has state for the shared parameters; task a's optimizer none for b's tower
    shared = t.model.shared_parameters()[0]
    tower_b = t.model.task_parameters("b")[0]
    assert all(shared in o.state for o in t.task_optimizers.values())
    assert tower_b not in t.task_optimizers["a"].state and tower_b in t.task_optimizers["b"].state


def test_a_task_step_leaves_the_other_tasks_optimizer_state_untouched() -> None:
    t = Trainer(
        model(), TASKS, schedule="alternating", per_task_optimizers=True, progress=False, device="cpu"
    )
    batch = per_task_batch()
    t.train_step(batch, tasks=["b"])
    t.train_step(batch, tasks=["a"])
    b_state = copy.deepcopy(t.task_optimizers["b"].state_dict())
    a_state = copy.deepcopy(t.task_optimizers["a"].state_dict())
    t.train_step(batch, tasks=["a"])
    after_b, after_a = t.task_optimizers["b"].state_dict(), t.task_optimizers["a"].state_dict()
    for k, v in b_state["state"].items():
        for name, tensor in v.items():
            assert torch.equal(tensor, after_b["state"][k][name])
    assert any(
        not torch.equal(v["exp_avg"], after_a["state"][k]["exp_avg"]) for k, v in a_state["state"].items()
    )


@pytest.mark.parametrize("name", ["uncertainty", "imtl_l"])
def test_only_the_trained_tasks_weighting_parameter_moves(name: str) -> None:
    w = WEIGHTINGS.build(name, tasks=TASKS)
    t = Trainer(model(), TASKS, weighting=w, schedule="alternating", progress=False, device="cpu")
    (param,) = list(w.parameters())
    batch = per_task_batch()
    for task in ["a", "b", "a", "a", "b"]:  # Adam momentum from earlier steps must not move the other row
        before = param.detach().clone()
        t.train_step(batch, tasks=[task])
        moved = (param.detach() != before).tolist()
        assert moved == [task == "a", task == "b"], (task, moved)


def test_dwa_uses_each_tasks_epoch_loss_under_alternating(per_task) -> None:
    t = Trainer(
        model(), TASKS, weighting=WEIGHTINGS.build("dwa", tasks=TASKS), schedule="alternating", progress=False
    )
    hist = t.fit(per_task, epochs=3, batch_size=32)
    (l1, l2) = t.epoch_losses[0], t.epoch_losses[1]
    r = [x / y for x, y in zip(l2, l1)]
    e = [math.exp(v / 2.0) for v in r]
    expected = [2 * v / sum(e) for v in e]  # DWA eq. 7 from the per-task epoch means
    assert [hist[2]["weights"][k] for k in ("a", "b")] == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------- resume
SCHEDULES_UNDER_TEST = {
    "joint": (lambda: "joint", False, "single"),
    "mixed": (lambda: Mixed(), False, "per_task"),
    "alternating": (lambda: Alternating("round_robin"), False, "per_task"),
    "alternating_random_views": (lambda: Alternating("random"), False, "single"),
    "sampling_per_task_optimizers": (lambda: Sampling("uniform", steps_per_epoch=7), True, "per_task"),
    "sampling_temperature": (lambda: Sampling("temperature", temperature=2.0), False, "per_task"),
}


def joint_data() -> MultiTaskDataset:
    a, b = dataset(range(90), TASKS[0], seed=2), dataset(range(90), TASKS[1], seed=3)
    yb = b.targets["b"].clone()
    yb[:30] = float("nan")
    return MultiTaskDataset(a.inputs / 100, {"a": a.targets["a"], "b": yb})


@pytest.mark.parametrize("key", list(SCHEDULES_UNDER_TEST))
def test_resume_reproduces_an_uninterrupted_run(key: str, per_task, tmp_path: Path) -> None:
    make_schedule, per_task_opt, kind = SCHEDULES_UNDER_TEST[key]
    train = (
        joint_data()
        if kind == "single"
        else {k: MultiTaskDataset(v.inputs / 1000, v.targets) for k, v in per_task.items()}
    )

    def trainer(seed: int) -> Trainer:
        torch.manual_seed(seed)
        m = MODELS.build("mmoe", input_dim=3, tasks=TASKS, num_experts=2, expert_dims=(8,), dropout=0.1)
        return Trainer(
            m,
            TASKS,
            weighting=mtlkit.weighting.UncertaintyWeighting(TASKS),
            schedule=make_schedule(),
            per_task_optimizers=per_task_opt,
            optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
            scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.9),
            progress=False,
            device="cpu",
            seed=0,
        )

    full = trainer(0)
    full.fit(train, train, epochs=2, batch_size=16)
    first = trainer(0)
    first.fit(train, train, epochs=1, batch_size=16, checkpoint=tmp_path / "ck.pt")
    resumed = trainer(123)  # a new process: other initial weights, fresh schedule and optimizers
    resumed.fit(train, train, epochs=2, batch_size=16, resume=tmp_path / "ck.pt")
    assert [h["train"] for h in resumed.history] == [h["train"] for h in full.history]
    assert [h.get("steps") for h in resumed.history] == [h.get("steps") for h in full.history]
    assert resumed.evaluate(train) == full.evaluate(train)
    for p, q in zip(resumed.model.parameters(), full.model.parameters()):
        assert torch.equal(p, q)
    assert str(resumed.schedule.state_dict()) == str(full.schedule.state_dict())


def test_checkpoints_refuse_another_optimizer_layout_or_schedule(per_task, tmp_path: Path) -> None:
    t = Trainer(model(), TASKS, schedule=Sampling(), per_task_optimizers=True, progress=False)
    t.fit(per_task, epochs=1, batch_size=64, checkpoint=tmp_path / "ck.pt")
    single = Trainer(model(), TASKS, schedule=Sampling(), progress=False)
    with pytest.raises(
        CheckpointError, match="written with per-task optimizers, but this trainer has one optimizer"
    ):
        single.load_checkpoint(tmp_path / "ck.pt")
    other = Trainer(model(), TASKS, schedule="alternating", per_task_optimizers=True, progress=False)
    with pytest.raises(
        CheckpointError, match="written with schedule 'sampling'.*resume with schedule='sampling'"
    ):
        other.load_checkpoint(tmp_path / "ck.pt")


# ---------------------------------------------------------------------------------------------- evaluation
def test_each_task_is_evaluated_on_its_own_dataset_only(per_task) -> None:
    t = Trainer(model(), TASKS, schedule="alternating", progress=False, device="cpu")
    t.fit(per_task, epochs=1, batch_size=32)
    # b's dataset also carries (garbage) labels for a: they must not count for a
    polluted = MultiTaskDataset(
        per_task["b"].inputs, {**per_task["b"].targets, "a": torch.full((130,), 99.0)}
    )
    metrics = t.evaluate({"a": per_task["a"], "b": polluted})
    pred = t.predict(per_task["a"].inputs[10:])["a"]
    mse = ((pred - per_task["a"].targets["a"][10:]) ** 2).mean().item()
    assert metrics["a"]["mse"] == pytest.approx(mse, rel=1e-5)
    assert metrics == t.evaluate(per_task)
    assert set(t.evaluate({"b": per_task["b"]})) == {"b"}
    preds = t.predict(per_task)
    assert preds["a"].shape == (70,) and preds["b"].shape == (130,)


def test_fit_with_per_task_validation_data_and_early_stopping(per_task) -> None:
    t = Trainer(model(), TASKS, schedule="sampling", progress=False, device="cpu")
    hist = t.fit(
        per_task, per_task, epochs=2, batch_size=32, early_stopping=mtlkit.EarlyStopping(monitor="a/mse")
    )
    assert set(hist[-1]["val"]) == {"a", "b"} and hist[-1]["monitor"]["name"] == "a/mse"
    assert hist[-1]["monitor"]["value"] == hist[-1]["val"]["a"]["mse"]


# ---------------------------------------------------------------------------------------------- config
def raw_config(*overrides: str) -> dict:
    raw = load_preset("default")
    raw.pop("compare")
    raw.pop("baseline")
    return apply_overrides(raw, list(overrides))


def test_schedule_section_is_validated_from_the_builder_signature() -> None:
    exp = resolve(
        raw_config("schedule.name=sampling", "schedule.strategy=temperature", "schedule.temperature=2")
    )
    assert exp.config.schedule == {
        "name": "sampling",
        "strategy": "temperature",
        "temperature": 2.0,
        "steps_per_epoch": None,
    }
    assert resolve(raw_config()).config.schedule == {"name": "joint"}
    with pytest.raises(
        ConfigError,
        match=r"schedule.ordr: unknown parameter for training schedule 'alternating'. Did you mean 'order'",
    ):
        resolve(raw_config("schedule.name=alternating", "schedule.ordr=random"))
    with pytest.raises(ConfigError, match=r"schedule.order: Input should be 'round_robin' or 'random'"):
        resolve(raw_config("schedule.name=alternating", "schedule.order=sometimes"))
    with pytest.raises(
        ConfigError, match=r"schedule \(sampling\): sampling strategy 'temperature' needs temperature"
    ):
        resolve(raw_config("schedule.name=sampling", "schedule.strategy=temperature"))
    with pytest.raises(
        ConfigError, match=r"schedule: Gradient aggregator PCGrad combines .* schedule 'sampling'"
    ):
        resolve(raw_config("schedule.name=sampling", "aggregator.name=pcgrad"))
    with pytest.raises(ConfigError, match=r"schedule: Per-task optimizers .* schedule 'joint'"):
        resolve(raw_config("trainer.per_task_optimizers=true"))
    assert {"joint", "mixed", "alternating", "sampling"} <= set(SCHEDULES.names())


def test_cli_lists_the_schedules(capsys: pytest.CaptureFixture[str]) -> None:
    from mtlkit.cli.main import main

    assert main(["list", "schedules"]) == 0
    out = capsys.readouterr().out
    for name in ("joint", "mixed", "alternating", "sampling"):
        assert name in out


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random per-sample shift: a transform whose effect and randomness are easy to read back."""
    return x + torch.rand(x.shape[0], 1, generator=g)


def test_per_task_streams_apply_the_datasets_augmentation_reproducibly() -> None:
    from mtlkit.training.task_data import TaskStream

    task = Task(name="y", kind="regression")
    x = torch.zeros(10, 3)
    ds = MultiTaskDataset(x, {"y": torch.arange(10.0)}, augment=_shift)
    a = TaskStream(ds, task, batch_size=4, seed=3).batch(0, 1)
    b = TaskStream(ds, task, batch_size=4, seed=3).batch(0, 1)
    torch.testing.assert_close(a.inputs, b.inputs)  # same (seed, pass, batch): same augmentation
    assert (a.inputs > 0).all() and torch.equal(a.inputs[:, 0], a.inputs[:, 2])  # shifted, per sample
    c = TaskStream(ds, task, batch_size=4, seed=3).batch(1, 1)
    assert not torch.equal(a.inputs, c.inputs)  # another pass, other draws
    plain = TaskStream(ds, task, batch_size=4, shuffle=False).batch(0, 0)
    assert torch.equal(plain.inputs, x[:4])  # evaluation streams are never augmented


def test_mixed_pool_keeps_a_shared_augmentation_and_refuses_different_ones() -> None:
    from mtlkit.training.task_data import mixed_dataset

    tasks = [Task(name="a", kind="regression"), Task(name="b", kind="regression")]
    one = MultiTaskDataset(torch.zeros(4, 2), {"a": torch.ones(4)}, augment=_shift)
    two = MultiTaskDataset(torch.zeros(3, 2), {"b": torch.ones(3)}, augment=_shift)
    assert mixed_dataset({"a": one, "b": two}, tasks).augment is _shift
    other = MultiTaskDataset(torch.zeros(3, 2), {"b": torch.ones(3)}, augment=lambda x, g: x)
    with pytest.raises(DataError, match="different augment transforms"):
        mixed_dataset({"a": one, "b": other}, tasks)
