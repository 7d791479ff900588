"""Metrics: masking, direction, and values against brute-force references."""

from __future__ import annotations

import math

import pytest
import torch

from mtlkit import Task
from mtlkit.metrics import MultiTaskMetrics, delta_m

NAN = float("nan")


def brute_auc(scores: list[float], labels: list[int]) -> float:
    """Probability that a random positive outranks a random negative (ties count 1/2)."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_binary_metrics_skip_missing_and_match_references() -> None:
    task = Task(name="ctr", kind="binary")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, generator=g)
    y = (torch.rand(40, generator=g) > 0.5).float()
    y_missing = y.clone()
    y_missing[::3] = NAN
    keep = ~torch.isnan(y_missing)
    m = MultiTaskMetrics([task])
    m.update({"ctr": logits[:20]}, {"ctr": y_missing[:20]})
    m.update({"ctr": logits[20:]}, {"ctr": y_missing[20:]})
    out = m.compute()["ctr"]
    p, t = torch.sigmoid(logits[keep]), y[keep]
    assert out["auc"] == pytest.approx(brute_auc(p.tolist(), t.long().tolist()), abs=1e-6)
    assert out["accuracy"] == pytest.approx(((p > 0.5).float() == t).float().mean().item(), abs=1e-6)
    ref_ll = -(t * p.log() + (1 - t) * (1 - p).log()).mean().item()
    assert out["logloss"] == pytest.approx(ref_ll, rel=1e-5)
    assert out["loss"] == pytest.approx(ref_ll, rel=1e-5)
    assert m.counts()["ctr"] == int(keep.sum())


def test_auc_is_nan_with_one_class_and_task_without_labels_is_nan() -> None:
    tasks = [Task(name="a", kind="binary"), Task(name="b", kind="regression")]
    m = MultiTaskMetrics(tasks)
    m.update({"a": torch.randn(4), "b": torch.randn(4)}, {"a": torch.ones(4), "b": torch.full((4,), NAN)})
    out = m.compute()
    assert math.isnan(out["a"]["auc"])
    assert all(math.isnan(v) for v in out["b"].values())


def test_multiclass_and_regression_metrics() -> None:
    tasks = [Task(name="c", kind="multiclass", num_classes=3), Task(name="r", kind="regression")]
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0]])
    m = MultiTaskMetrics(tasks)
    m.update(
        {"c": logits, "r": torch.tensor([1.0, 2.0, 3.0, 4.0])},
        {"c": torch.tensor([0, 2, 2, -1]), "r": torch.tensor([1.0, 0.0, NAN, 4.0])},
    )
    out = m.compute()
    assert out["c"]["accuracy"] == pytest.approx(2 / 3)
    # macro F1 over classes present: class0 F1=1, class1 F1=0 (fp), class2 precision 1 recall 1/2 -> 2/3
    assert out["c"]["f1_macro"] == pytest.approx((1 + 0 + 2 / 3) / 3, abs=1e-6)
    assert out["r"]["mse"] == pytest.approx((0 + 4 + 0) / 3)
    assert out["r"]["mae"] == pytest.approx((0 + 2 + 0) / 3)


def test_multilabel_metrics_ignore_missing_entries() -> None:
    task = Task(name="tags", kind="multilabel", num_classes=2)
    m = MultiTaskMetrics([task])
    logits = torch.tensor([[5.0, -5.0], [5.0, 5.0], [-5.0, 5.0]])
    target = torch.tensor([[1.0, 0.0], [NAN, 1.0], [0.0, NAN]])
    m.update({"tags": logits}, {"tags": target})
    out = m.compute()["tags"]
    assert out["f1_micro"] == pytest.approx(1.0)
    assert out["map"] == pytest.approx(1.0)


def test_directions() -> None:
    d = MultiTaskMetrics([Task(name="a", kind="binary"), Task(name="r", kind="regression")]).directions()
    assert d["a"] == {"loss": False, "auc": True, "accuracy": True, "logloss": False}
    assert d["r"] == {"loss": False, "mse": False, "mae": False}


def test_delta_m_hand_worked() -> None:
    # task a: accuracy 0.9 vs 0.8 -> +12.5%; task b: mse 0.5 vs 1.0 -> +50%; mean 31.25%
    out = delta_m({"a": 0.9, "b": 0.5}, {"a": 0.8, "b": 1.0}, {"a": True, "b": False})
    assert out == pytest.approx(31.25)
