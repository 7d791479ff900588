"""Weighted metrics against brute-force weighted computations, and equal to torchmetrics without weights."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, MulticlassF1Score
from torchmetrics.regression import MeanSquaredError as TorchmetricsMSE

from mtlkit import Task
from mtlkit.errors import DataError
from mtlkit.metrics import MultiTaskMetrics
from mtlkit.metrics.weighted import weighted_auc


def _pair_auc(p: list[float], y: list[int], w: list[float]) -> float:
    """Weighted share of (positive, negative) pairs ordered correctly, ties half: a double loop."""
    num = den = 0.0
    for i, j in itertools.product(range(len(p)), repeat=2):
        if y[i] == 1 and y[j] == 0:
            pair = w[i] * w[j]
            den += pair
            num += pair * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
    return num / den


def test_weighted_auc_equals_the_weighted_pair_count_with_ties() -> None:
    g = torch.Generator().manual_seed(1)
    p = torch.randint(0, 6, (40,), generator=g).double() / 5  # many ties
    y = torch.randint(0, 2, (40,), generator=g)
    w = torch.rand(40, generator=g, dtype=torch.float64) * 3
    want = _pair_auc(p.tolist(), y.tolist(), w.tolist())
    assert math.isclose(float(weighted_auc(p, y, w)), want, rel_tol=1e-9)
    # integer weights = repeated rows
    k = torch.tensor([1, 2, 3, 1] * 10)
    rep = weighted_auc(p.repeat_interleave(k), y.repeat_interleave(k), torch.ones(int(k.sum())))
    assert math.isclose(float(weighted_auc(p, y, k.double())), float(rep), rel_tol=1e-9)
    assert math.isnan(float(weighted_auc(p, torch.ones(40), w)))


def test_collection_with_weights_matches_hand_computations() -> None:
    tasks = [Task(name="c", kind="binary"), Task(name="r", kind="regression")]
    m = MultiTaskMetrics(tasks)
    logits = torch.tensor([[2.0], [-1.0], [0.3], [-0.2], [1.0], [0.0]])
    yc = torch.tensor([1.0, 0.0, math.nan, 1.0, 0.0, 1.0])
    yr = torch.tensor([1.0, 2.0, 3.0, math.nan, 5.0, 6.0])
    out = {"c": logits, "r": torch.tensor([[1.5], [2.0], [2.0], [0.0], [4.0], [6.5]])}
    w = torch.tensor([1.0, 2.0, 9.0, 0.5, 3.0, 1.5])
    half = 3
    for s in (slice(0, half), slice(half, 6)):  # two batches
        m.update({k: v[s] for k, v in out.items()}, {"c": yc[s], "r": yr[s]}, None, {"c": w[s], "r": w[s]})
    res = m.compute()
    lab = [0, 1, 3, 4, 5]
    p = torch.sigmoid(logits.reshape(-1))
    ww = w[lab]
    acc = sum(float(w[i]) * float((p[i] > 0.5) == (yc[i] == 1)) for i in lab) / float(ww.sum())
    assert math.isclose(res["c"]["accuracy"], acc, rel_tol=1e-6)
    auc = _pair_auc([float(p[i]) for i in lab], [int(yc[i]) for i in lab], [float(w[i]) for i in lab])
    assert math.isclose(res["c"]["auc"], auc, rel_tol=1e-6)
    ll = -sum(float(w[i]) * (math.log(p[i]) if yc[i] == 1 else math.log(1 - p[i])) for i in lab) / float(
        ww.sum()
    )
    assert math.isclose(res["c"]["logloss"], ll, rel_tol=1e-6)
    assert math.isclose(res["c"]["loss"], ll, rel_tol=1e-5)  # the loss is weighted too
    lr = [0, 1, 2, 4, 5]
    pr = out["r"].reshape(-1)
    mse = sum(float(w[i]) * float(pr[i] - yr[i]) ** 2 for i in lr) / sum(float(w[i]) for i in lr)
    mae = sum(float(w[i]) * abs(float(pr[i] - yr[i])) for i in lr) / sum(float(w[i]) for i in lr)
    assert math.isclose(res["r"]["mse"], mse, rel_tol=1e-6)
    assert math.isclose(res["r"]["mae"], mae, rel_tol=1e-6)


def test_weighted_macro_f1_counts_weighted_hits() -> None:
    tasks = [Task(name="m", kind="multiclass", num_classes=3)]
    m = MultiTaskMetrics(tasks)
    logits = torch.eye(3)[[0, 1, 1, 2, 0]] * 5
    y = torch.tensor([0, 1, 2, 2, 1])
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    m.update({"m": logits}, {"m": y}, None, {"m": w})
    # class 0: tp 1, fp 5 (row 4), fn 0; class 1: tp 2, fp 3, fn 5; class 2: tp 4, fp 0, fn 3
    f1 = [2 * 1 / (2 + 5), 2 * 2 / (4 + 3 + 5), 2 * 4 / (8 + 3)]
    res = m.compute()["m"]
    assert math.isclose(res["f1_macro"], sum(f1) / 3, rel_tol=1e-6)
    assert math.isclose(res["accuracy"], (1 + 2 + 4) / 15, rel_tol=1e-6)


def test_without_weights_the_defaults_equal_torchmetrics() -> None:
    g = torch.Generator().manual_seed(0)
    tasks = [
        Task(name="c", kind="binary"),
        Task(name="m", kind="multiclass", num_classes=4),
        Task(name="r", kind="regression"),
    ]
    mt = MultiTaskMetrics(tasks)
    out = {
        "c": torch.randn(50, 1, generator=g),
        "m": torch.randn(50, 4, generator=g),
        "r": torch.randn(50, 1, generator=g),
    }
    tg = {
        "c": torch.randint(0, 2, (50,), generator=g).float(),
        "m": torch.tensor([0, 1, 2] * 16 + [0, 1]),  # class 3 never occurs
        "r": torch.randn(50, generator=g),
    }
    mt.update(out, tg)
    res = mt.compute()
    p = torch.sigmoid(out["c"].reshape(-1))
    assert math.isclose(res["c"]["auc"], float(BinaryAUROC()(p, tg["c"].long())), rel_tol=1e-5)
    assert math.isclose(res["c"]["accuracy"], float(BinaryAccuracy()(p, tg["c"].long())), rel_tol=1e-6)
    f1 = MulticlassF1Score(num_classes=4, average="macro")(torch.softmax(out["m"], 1), tg["m"])
    assert math.isclose(res["m"]["f1_macro"], float(f1), rel_tol=1e-5)
    assert math.isclose(res["r"]["mse"], float(TorchmetricsMSE()(out["r"].reshape(-1), tg["r"])), rel_tol=1e-5)


def test_a_metric_without_weight_support_is_refused_for_a_weighted_task() -> None:
    m = MultiTaskMetrics([Task(name="ml", kind="multilabel", num_classes=2)])
    with pytest.raises(DataError, match=r"'ml' has sample weights, but its metric\(s\) \['f1_micro'"):
        m.update({"ml": torch.randn(3, 2)}, {"ml": torch.ones(3, 2)}, None, {"ml": torch.ones(3)})
