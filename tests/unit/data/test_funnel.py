"""Funnel tasks from raw label columns (issue 14 §4): the derived labels, the refusals, the
ESMM/AITM models with an extra task beside the funnel, checked against independent computations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlkit import Task
from mtlkit.config.build import model_data
from mtlkit.data.funnel import FunnelLabels, funnel_problems, parse_funnel
from mtlkit.data.tabular import tabular
from mtlkit.errors import ConfigError, DataError
from mtlkit.losses import task_losses
from mtlkit.models import ESMM
from mtlkit.models.aitm import AITM, aitm
from mtlkit.models.esmm import esmm

RAW = (
    Task(name="click", kind="binary"),
    Task(name="purchase", kind="binary"),
    Task(name="watch_time", kind="regression", transform="log1p"),
)
FUNNEL = {"ctr": "click", "cvr": "purchase"}


def _labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Valid funnel labels: click in {0, 1, blank}; purchase in {0, 1, blank} on clicks, {blank, 0}
    on non-clicks, blank where the click is blank."""
    rng = np.random.default_rng(seed)
    click = rng.choice([0.0, 1.0, np.nan], size=n, p=[0.6, 0.3, 0.1]).astype(np.float32)
    purchase = np.full(n, np.nan, dtype=np.float32)
    on = click == 1
    purchase[on] = rng.choice([0.0, 1.0, np.nan], size=int(on.sum()))
    off = click == 0
    purchase[off] = rng.choice([np.nan, 0.0], size=int(off.sum()))
    return click, purchase


def test_derived_labels_equal_a_hand_written_loop() -> None:
    click, purchase = _labels(500, seed=1)
    want_ctcvr, want_cvr = [], []
    for c, p in zip(click.tolist(), purchase.tolist()):
        if math.isnan(c):
            want_ctcvr.append(math.nan)
            want_cvr.append(math.nan)
        elif c == 0:
            want_ctcvr.append(0.0)  # no click: no conversion over the impression
            want_cvr.append(math.nan)  # pCVR is evaluated on clicked rows only
        else:
            want_ctcvr.append(p)  # clicked: converted or not (blank stays blank)
            want_cvr.append(p)
    got = FunnelLabels("esmm", "click", "purchase").derive(click, purchase, str)
    np.testing.assert_array_equal(got["ctcvr"], np.asarray(want_ctcvr, dtype=np.float32))
    np.testing.assert_array_equal(got["purchase"], np.asarray(want_cvr, dtype=np.float32))
    assert np.nansum(got["ctcvr"]) == np.nansum(purchase[click == 1]) > 0
    aitm_labels = FunnelLabels("aitm", "click", "purchase", "buy").derive(click, purchase, str)
    assert set(aitm_labels) == {"buy"}  # AITM has no pCVR output
    np.testing.assert_array_equal(aitm_labels["buy"], got["ctcvr"])


@pytest.mark.parametrize(
    ("click", "purchase", "message"),
    [
        ([1, 0, 0], [1, 1, float("nan")], "row 1: .*'purchase' is 1 where 'click' is 0: a conversion without a click"),
        ([1, float("nan")], [0, 0], "row 1: .*'purchase' is labelled where 'click' is blank"),
    ],
)
def test_impossible_funnel_rows_are_refused_with_the_row(click, purchase, message) -> None:
    f = FunnelLabels("esmm", "click", "purchase")
    with pytest.raises(DataError, match=message):
        f.derive(np.asarray(click, np.float32), np.asarray(purchase, np.float32), lambda i: f"row {i}")


def _csv(path: Path, rows: list[tuple]) -> Path:
    lines = ["x,device,click,conversion,watch"] + [",".join("" if v is None else str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _tasks_spec() -> dict:
    return {
        "click": {"column": "click", "kind": "binary"},
        "purchase": {"column": "conversion", "kind": "binary"},
        "watch_time": {"column": "watch", "kind": "regression"},
    }


@pytest.mark.parametrize("streaming", [False, True])
def test_a_conversion_without_a_click_names_the_file_and_data_row(tmp_path: Path, streaming: bool) -> None:
    rows = [(i * 0.1, "a" if i % 2 else "b", i % 2, (i % 4 == 1) if i % 2 else None, 3.0 if i % 2 else None)
            for i in range(30)]  # fmt: skip
    rows[17] = (1.7, "a", 0, 1, None)  # data row 18: bought without a click
    path = _csv(tmp_path / "log.csv", [tuple(int(v) if isinstance(v, bool) else v for v in r) for r in rows])
    spec = {"train": str(path), "tasks": _tasks_spec(), "numeric": ["x"], "categorical": ["device"]}
    if streaming:
        spec.update(streaming=True, val=str(path), num_workers=0)
    splits = tabular(**spec)
    model = {"name": "esmm", "funnel": FUNNEL}
    if not streaming:  # the in-memory labels are derived at once
        with pytest.raises(ConfigError, match=r"log.csv: data row 18: the funnel's cvr task 'purchase' is 1 where"):
            model_data(model, splits)
        return
    data = model_data(model, splits)  # a stream derives them batch by batch, as it reads
    with pytest.raises(DataError, match=r"log.csv: data row 18: the funnel's cvr task 'purchase' is 1 where"):
        list(data.val.eval_loader(data.tasks, 8))


def test_funnel_problems_are_reported_together() -> None:
    tasks = (*RAW, Task(name="ctcvr", kind="binary"), Task(name="genre", kind="multiclass", num_classes=3))
    problems = funnel_problems(FunnelLabels("esmm", "clik", "genre"), tasks)
    assert len(problems) == 3, problems
    assert "model.funnel.ctr: 'clik' is not a task of the data" in problems[0] and "Did you mean 'click'" in problems[0]
    assert problems[1].startswith("model.funnel.cvr: task 'genre' is multiclass; a funnel step is a binary label")
    assert problems[2].startswith("model.funnel.ctcvr: 'ctcvr' is already a task of the data")
    assert "watch_time' is regression" in funnel_problems(FunnelLabels("esmm", "watch_time", "purchase"), RAW)[0]
    weighted = (RAW[0], Task(name="purchase", kind="binary", pos_weight=3.0))
    assert "sets pos_weight, but under esmm pCVR is evaluated only" in funnel_problems(
        FunnelLabels("esmm", "click", "purchase"), weighted
    )[0]
    assert funnel_problems(FunnelLabels("aitm", "click", "purchase"), weighted) == []  # AITM trains it
    _, bad = parse_funnel("esmm", {"ctr": "click", "cvr": "click", "extra": 1})
    assert bad == [
        "model.funnel.extra: unknown key. Allowed: ctr, cvr, ctcvr.",
    ]
    _, same = parse_funnel("esmm", {"ctr": "click", "cvr": "click"})
    assert same and "three different names" in same[0]


def test_the_model_tasks_get_their_kinds_and_flags_automatically() -> None:
    tasks = {t.name: t for t in FunnelLabels("esmm", "click", "purchase").tasks(RAW)}
    assert list(tasks) == ["click", "ctcvr", "purchase", "watch_time"]
    assert tasks["click"].logits and tasks["click"].train
    assert not tasks["ctcvr"].logits and tasks["ctcvr"].train  # pCTCVR: a probability, trained
    assert not tasks["purchase"].logits and not tasks["purchase"].train  # pCVR: evaluated only
    assert tasks["watch_time"] is RAW[2]
    steps = {t.name: t for t in FunnelLabels("aitm", "click", "purchase").tasks(RAW)}
    assert list(steps) == ["click", "ctcvr", "watch_time"]
    assert steps["ctcvr"].logits and steps["ctcvr"].train


def _esmm(base: str = "shared_bottom") -> ESMM:
    tasks = FunnelLabels("esmm", "click", "purchase").tasks(RAW)
    torch.manual_seed(0)
    params = {"num_experts": 2, "expert_dims": [8], "tower_dims": [4]} if base == "mmoe" else {}
    return esmm(6, tasks, base={"name": base, **params}, funnel=FUNNEL)


@pytest.mark.parametrize("base", ["shared_bottom", "mmoe"])
def test_esmm_passes_the_extra_task_through_and_keeps_the_funnel_identities(base: str) -> None:
    model = _esmm(base)
    x = torch.randn(7, 6)
    out = model(x)
    inner = model.base(x)
    assert set(out) == {"click", "purchase", "ctcvr", "watch_time"}
    torch.testing.assert_close(out["watch_time"], inner["watch_time"])  # unchanged
    torch.testing.assert_close(out["click"], inner["click"])  # the CTR logit
    torch.testing.assert_close(out["purchase"], torch.sigmoid(inner["purchase"]))  # pCVR
    torch.testing.assert_close(out["ctcvr"], torch.sigmoid(inner["click"]) * torch.sigmoid(inner["purchase"]))
    assert bool(((out["ctcvr"] <= torch.sigmoid(out["click"])) & (out["ctcvr"] <= out["purchase"])).all())
    parts = model.forward_parts(x, representation=True)  # the representation path gives the same outputs
    for k, v in out.items():
        torch.testing.assert_close(parts.outputs[k], v)


def test_ownership_of_the_extra_task_and_the_funnel_towers() -> None:
    model = _esmm("shared_bottom")
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    watch = ids(model.task_parameters("watch_time"))
    assert watch and watch == ids(model.base.towers["watch_time"].parameters())
    assert watch.isdisjoint(ids(model.shared_parameters()))
    # the CVR tower feeds only pCTCVR among the trained outputs: ctcvr's; the CTR tower feeds
    # click and ctcvr: shared; pCVR (evaluated only) owns nothing
    assert ids(model.task_parameters("ctcvr")) == ids(model.base.towers["purchase"].parameters())
    assert model.task_parameters("click") == [] and model.task_parameters("purchase") == []
    assert ids(model.base.towers["click"].parameters()) <= ids(model.shared_parameters())
    # every parameter is shared or owned by exactly one task
    owned = [p for t in model.task_names for p in model.task_parameters(t)]
    assert len(owned) + len(model.shared_parameters()) == len(list(model.parameters()))


def test_aitm_extra_task_sits_beside_the_funnel() -> None:
    tasks = FunnelLabels("aitm", "click", "purchase").tasks(RAW)
    torch.manual_seed(0)
    model = aitm(6, tasks, tower_dims=[8, 4], funnel=FUNNEL)
    assert isinstance(model, AITM) and model.funnel == ("click", "ctcvr")
    assert model.task_names == ("click", "ctcvr", "watch_time")
    x = torch.randn(5, 6)
    parts = model.forward_parts(x)
    assert parts.outputs["watch_time"].shape == (5, 1)
    p = torch.sigmoid(torch.cat([parts.outputs["click"], parts.outputs["ctcvr"]], dim=1))
    want = 0.6 * torch.relu(p[:, 1] - p[:, 0]).mean()  # the calibrator: the funnel's steps only
    torch.testing.assert_close(parts.aux["calibrator"], want)
    rep = model.forward_parts(x, representation=True)
    for k, v in parts.outputs.items():
        torch.testing.assert_close(rep.outputs[k], v)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(model.task_parameters("watch_time")) == ids(model.extra["watch_time"].parameters())
    assert ids(model.task_parameters("watch_time")).isdisjoint(ids(model.shared_parameters()))


def test_the_funnel_loss_on_a_hand_worked_batch() -> None:
    """click = [1, 0, 1, blank], purchase = [1, blank, 0, blank]: ctcvr = [1, 0, 0, blank] and the
    CVR label only on the clicked rows; the trained losses are BCE(click) on 3 rows and BCE(pCTCVR)
    on 3 rows, pCVR adds nothing."""
    model = _esmm()
    tasks = FunnelLabels("esmm", "click", "purchase").tasks(RAW)
    nan = float("nan")
    click = np.asarray([1, 0, 1, nan], np.float32)
    purchase = np.asarray([1, nan, 0, nan], np.float32)
    derived = FunnelLabels("esmm", "click", "purchase").derive(click, purchase, str)
    watch = torch.tensor([3.0, nan, 1.0, nan])
    targets = {"click": torch.from_numpy(click), "watch_time": watch,
               **{k: torch.from_numpy(v) for k, v in derived.items()}}  # fmt: skip
    out = model(torch.randn(4, 6))
    losses = task_losses(tasks, out, targets)
    by = dict(zip([t.name for t in tasks], losses.losses.tolist()))
    a = out["click"].reshape(-1).detach().double()
    q = out["ctcvr"].reshape(-1).detach().double()
    y = [1.0, 0.0, 1.0]
    bce_click = -sum(yi * math.log(1 / (1 + math.exp(-ai))) + (1 - yi) * math.log(1 - 1 / (1 + math.exp(-ai)))
                     for yi, ai in zip(y, a[:3].tolist())) / 3  # fmt: skip
    z = [1.0, 0.0, 0.0]
    bce_ctcvr = -sum(zi * math.log(qi) + (1 - zi) * math.log(1 - qi) for zi, qi in zip(z, q[:3].tolist())) / 3
    assert by["click"] == pytest.approx(bce_click, rel=1e-5)
    assert by["ctcvr"] == pytest.approx(bce_ctcvr, rel=1e-5)
    assert by["purchase"] == 0.0  # evaluation only
    w = out["watch_time"].reshape(-1).detach().double()  # log1p-transformed squared error
    mse = ((w[0] - math.log1p(3.0)) ** 2 + (w[2] - math.log1p(1.0)) ** 2) / 2
    assert by["watch_time"] == pytest.approx(float(mse), rel=1e-5)
