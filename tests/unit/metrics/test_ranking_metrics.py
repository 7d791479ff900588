"""GAUC, normalized entropy and calibration against independent computations: a per-group
Mann-Whitney loop (and scikit-learn's roc_auc_score when installed), the formulas on hand-worked
cases, and batch-incremental accumulation equal to one shot over any split."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mtlkit import Task
from mtlkit.errors import DataError
from mtlkit.metrics import MultiTaskMetrics
from mtlkit.metrics.ranking_metrics import Calibration, ExpectedCalibrationError, GroupAUC, NormalizedEntropy

DTYPES = [torch.float32, torch.float64]


def _brute_gauc(p, y, g, w) -> tuple[float, int]:
    """Per-group weighted Mann-Whitney by a double loop over (positive, negative) pairs; groups
    weighted by their weight sum; single-class groups skipped and counted."""
    num = den = 0.0
    skipped = 0
    for gid in dict.fromkeys(g.tolist()):
        idx = [i for i in range(len(g)) if g[i] == gid]
        pos = [i for i in idx if y[i] == 1 and w[i] > 0]
        neg = [i for i in idx if y[i] == 0 and w[i] > 0]
        if not pos or not neg:
            skipped += 1
            continue
        wins = total = 0.0
        for i in pos:
            for j in neg:
                pair = w[i] * w[j]
                total += pair
                wins += pair * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
        size = sum(w[i] for i in idx)
        num += size * wins / total
        den += size
    return (num / den if den else math.nan), skipped


def _data(n: int, seed: int, *, dtype: torch.dtype = torch.float64, weighted: bool = True):
    gen = torch.Generator().manual_seed(seed)
    p = (torch.randint(0, 12, (n,), generator=gen).double() / 11).to(dtype)  # many ties
    y = (torch.rand(n, generator=gen) < 0.3 + 0.4 * p.double()).long()
    g = torch.randint(0, 9, (n,), generator=gen) * 1_000_000_007_000  # large int64 ids
    w = torch.rand(n, generator=gen, dtype=torch.float64) * 3 if weighted else torch.ones(n, dtype=torch.float64)
    if weighted:
        w[::7] = 0.0
    return p, y, g, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_gauc_equals_a_per_group_mann_whitney_loop(dtype: torch.dtype, weighted: bool) -> None:
    p, y, g, w = _data(150, 1, dtype=dtype, weighted=weighted)
    g[:5] = 42  # a single-class group of positives
    y[:5] = 1
    m = GroupAUC("user")
    m.update(p, y, w if weighted else None, groups=g)
    expected, skipped = _brute_gauc(p.double().numpy(), y.numpy(), g.numpy(), w.numpy())
    assert float(m.compute()) == pytest.approx(expected, rel=1e-9)
    assert m.skipped == skipped >= 1


def test_gauc_equals_sklearn_roc_auc_per_group() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    p, y, g, w = _data(300, 2)
    m = GroupAUC("user")
    m.update(p, y, w, groups=g)
    num = den = 0.0
    for gid in np.unique(g.numpy()):
        sel = (g == int(gid)).numpy()
        yy, ww = y.numpy()[sel], w.numpy()[sel]
        if ww[yy == 1].sum() == 0 or ww[yy == 0].sum() == 0:
            continue
        num += ww.sum() * metrics.roc_auc_score(yy, p.numpy()[sel], sample_weight=ww)
        den += ww.sum()
    assert float(m.compute()) == pytest.approx(num / den, rel=1e-9)


def test_normalized_entropy_hand_worked() -> None:
    p = torch.tensor([0.8, 0.4, 0.3, 0.9])
    y = torch.tensor([1, 0, 0, 1])
    w = torch.tensor([1.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    m = NormalizedEntropy()
    m.update(p, y, w)
    loss = -(1 * math.log(0.8) + 2 * math.log(0.6) + 1 * math.log(0.7) + 0.5 * math.log(0.9)) / 4.5
    rate = 1.5 / 4.5
    entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    assert float(m.compute()) == pytest.approx(loss / entropy, rel=1e-6)
    # predicting the background rate everywhere scores exactly 1
    m2 = NormalizedEntropy()
    m2.update(torch.full((4,), rate, dtype=torch.float64), y, w)
    assert float(m2.compute()) == pytest.approx(1.0, rel=1e-9)
    one_class = NormalizedEntropy()
    one_class.update(p, torch.ones(4, dtype=torch.long))
    assert math.isnan(float(one_class.compute()))


def test_calibration_and_ece_hand_worked() -> None:
    p = torch.tensor([0.2, 0.4, 0.5, 1.0])
    y = torch.tensor([0, 1, 1, 1])
    cal, ece = Calibration(), ExpectedCalibrationError(bins=2)
    cal.update(p, y)
    ece.update(p, y)
    assert float(cal.compute()) == pytest.approx(2.1 / 3, rel=1e-6)
    # bin 0 = [0, 0.5): 0.2 + 0.4 - 1 = -0.4; bin 1 = [0.5, 1] (0.5 and 1.0 included): 1.5 - 2 = -0.5
    assert float(ece.compute()) == pytest.approx((0.4 + 0.5) / 4, rel=1e-6)
    w = torch.tensor([1.0, 0.0, 2.0, 1.0], dtype=torch.float64)
    cal, ece = Calibration(), ExpectedCalibrationError(bins=2)
    cal.update(p, y, w)
    ece.update(p, y, w)
    assert float(cal.compute()) == pytest.approx((0.2 + 1.0 + 1.0) / 3.0, rel=1e-6)
    assert float(ece.compute()) == pytest.approx((0.2 + abs(1.0 + 1.0 - 3.0)) / 4.0, rel=1e-6)
    one_bin = ExpectedCalibrationError(bins=1)
    one_bin.update(p, y)
    assert float(one_bin.compute()) == pytest.approx(abs(2.1 - 3) / 4, rel=1e-6)
    with pytest.raises(ValueError, match="bins"):
        ExpectedCalibrationError(bins=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_incremental_equals_one_shot(dtype: torch.dtype, seed: int) -> None:
    p, y, g, w = _data(200, seed, dtype=dtype)
    cuts = sorted(np.random.default_rng(seed).choice(np.arange(1, 200), size=6, replace=False).tolist())
    bounds = [0, *cuts, 200]

    def make():
        return [GroupAUC("u"), NormalizedEntropy(), Calibration(), ExpectedCalibrationError(bins=7)]

    whole, parts = make(), make()
    for m in whole:
        kw = {"groups": g} if isinstance(m, GroupAUC) else {}
        m.update(p, y, w, **kw)
    for a, b in itertools.pairwise(bounds):
        for m in parts:
            kw = {"groups": g[a:b]} if isinstance(m, GroupAUC) else {}
            m.update(p[a:b], y[a:b], w[a:b], **kw)
    for one, inc in zip(whole, parts):
        x, z = float(one.compute()), float(inc.compute())
        assert math.isfinite(x)
        assert z == pytest.approx(x, rel=1e-9, abs=1e-12)


def test_multitask_metrics_carries_groups_and_skips_unlabelled_rows() -> None:
    from mtlkit.metrics.ranking_metrics import GroupAUC as G

    task = Task(name="click", kind="binary", metrics={"gauc": lambda: G("user"), "ne": NormalizedEntropy})
    p, y, g, w = _data(120, 5)
    logits = torch.logit(p.clamp(0.01, 0.99).float())
    mask = torch.rand(120, generator=torch.Generator().manual_seed(0)) > 0.2
    mt = MultiTaskMetrics([task])
    mt.update({"click": logits[:60]}, {"click": y[:60].float()}, {"click": mask[:60]}, {"click": w[:60]},
              {"user": g[:60]})
    mt.update({"click": logits[60:]}, {"click": y[60:].float()}, {"click": mask[60:]}, {"click": w[60:]},
              {"user": g[60:]})
    res = mt.compute()["click"]
    probs = torch.sigmoid(logits).double().numpy()
    keep = mask.numpy()
    expected, skipped = _brute_gauc(probs[keep], y.numpy()[keep], g.numpy()[keep], w.numpy()[keep])
    assert res["gauc"] == pytest.approx(expected, rel=1e-6)
    assert res["gauc_skipped"] == skipped
    assert mt.directions()["click"] == {"loss": False, "gauc": True, "gauc_skipped": False, "ne": False}
    with pytest.raises(DataError, match="'user'"):
        MultiTaskMetrics([task]).update({"click": logits}, {"click": y.float()})


def test_group_ids_are_one_per_value_whatever_the_column_type() -> None:
    import pyarrow as pa

    from mtlkit.data._columns import CodedColumn
    from mtlkit.data.metric_columns import group_ids

    text = group_ids(np.array(["7", "007", " 7", "7.0", "+7", "u7", "u07", "", "12345678901234567"]))
    assert len(set(text[:5].tolist())) == 1 and len(set(text.tolist())) == 5
    ints = group_ids(pa.array([7, None, 12345678901234567], pa.int64()))
    assert ints.tolist() == [text[0], text[7], text[8]]  # every digit kept, null = blank
    floats = group_ids(np.array([7.0, np.nan]))
    assert floats.tolist() == [text[0], text[7]]
    coded = group_ids(CodedColumn(np.array(["007", "u7"]), np.array([1, 0, 0])))
    assert coded.tolist() == [text[5], text[0], text[0]]
    assert group_ids(np.array([], dtype=str)).shape == (0,)
