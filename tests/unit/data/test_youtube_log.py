"""The logged-slates generator: position bias as configured, labels only on clicks, truth apart."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlkit.cli.main import main
from mtlkit.data.youtube import DEVICES, TRUTH, propensity, write_csv, youtube_log, youtube_log_splits
from mtlkit.errors import DataError


@pytest.mark.parametrize(("eta", "scale"), [(1.0, (1.0, 1.5, 0.7)), (0.5, (1.0, 1.0, 1.0))])
def test_logged_ctr_by_position_follows_the_configured_propensity(
    eta: float, scale: tuple[float, ...]
) -> None:
    log = youtube_log(3000, slate_size=8, eta=eta, device_scale=scale, seed=3)
    c = log.columns
    pos, dev, click, rel = c["position"], c["device"], c["click"], c["relevance"]
    # independent of the generator's own propensity column: the formula of the docs
    e = 1.0 / (1.0 + pos) ** (eta * np.asarray(scale)[dev])
    np.testing.assert_allclose(c["propensity"], e, rtol=1e-12)
    for d in range(len(DEVICES)):
        for p in range(8):
            m = (pos == p) & (dev == d)
            prob = rel[m] * e[m]  # P(click) of each impression at (position, device)
            expected, sd = prob.sum(), math.sqrt((prob * (1 - prob)).sum())
            assert abs(click[m].sum() - expected) <= 4 * sd, (d, p, click[m].sum(), expected, sd)
    # the bias is visible: the top position is clicked far more than the last, beyond relevance
    top, last = pos == 0, pos == 7
    assert click[top].mean() / rel[top].mean() > 3 * click[last].mean() / rel[last].mean()


def test_labels_truth_and_determinism() -> None:
    a, b = youtube_log(200, seed=7), youtube_log(200, seed=7)
    for k, v in a.columns.items():
        np.testing.assert_array_equal(v, b.columns[k], err_msg=k)
    assert not np.array_equal(youtube_log(200, seed=8).columns["click"], a.columns["click"])
    c = a.columns
    clicked = c["click"] == 1
    assert np.isnan(c["watch_time"][~clicked]).all() and np.isnan(c["like"][~clicked]).all()
    assert np.isfinite(c["watch_time"][clicked]).all() and set(np.unique(c["like"][clicked])) <= {0.0, 1.0}
    # each slate shows distinct items at positions 0..K-1
    for s in range(5):
        m = c["slate"] == s
        assert sorted(c["position"][m].tolist()) == list(range(10))
        assert len(set(c["item_id"][m].tolist())) == 10
    np.testing.assert_allclose(
        c["utility"], c["relevance"] * (1 + c["watch_mean"]) ** 0.5 * c["satisfaction"] ** 0.5, rtol=1e-12
    )
    ds = a.dataset()
    assert set(ds.inputs) == {"categorical", "numeric"}
    assert ds.inputs["numeric"].shape[1] == 2 * 4 + 1  # u, v, promo: no truth among the inputs
    assert set(TRUTH) <= set(ds.targets) and [t.name for t in ds.tasks] == ["click", "watch_time", "like"]
    assert torch.equal(ds.inputs["categorical"][:, 1], torch.from_numpy(c["position"] + 1))


def test_propensity_helper_and_splits() -> None:
    np.testing.assert_allclose(propensity(np.array([0, 1, 3]), 2.0), [1.0, 0.25, 1 / 16])
    s = youtube_log_splits(train_slates=30, val_slates=5, test_slates=10, auxiliary_like=True)
    assert len(s.train) == 300 and len(s.val) == 50 and len(s.test) == 100
    assert [t.auxiliary for t in s.tasks] == [False, False, True]
    assert s.input_spec.categorical == ("device", "position")
    assert float(s.test.targets["slate"].min()) == 35  # whole slates per split, in order


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"slates": 0}, "slates must be an int >= 1"),
        ({"slates": 5, "slate_size": 50, "items": 10}, "slate_size (50) cannot exceed"),
        ({"slates": 5, "eta": -1.0}, "eta must be a finite number >= 0"),
        ({"slates": 5, "device_scale": (1.0,)}, "device_scale needs 3 numbers"),
        ({"slates": 5, "conflict": 2.0}, "conflict"),
        ({"slates": 5, "seed": -1}, "seed must be an int >= 0"),
    ],
)
def test_bad_arguments_are_refused_clearly(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        youtube_log(**kwargs)


def test_generate_cli_writes_the_csv(tmp_path: Path) -> None:
    out = tmp_path / "log.csv"
    assert main(["generate", "youtube-log", str(out), "--slates", "12", "--seed", "2"]) == 0
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    log = youtube_log(12, seed=2)
    assert len(rows) == len(log) == 120
    assert [float(r["relevance"]) for r in rows] == pytest.approx(log.columns["relevance"].tolist(), rel=1e-8)
    assert all((r["like"] == "") == (r["click"] == "0.0" or r["click"] == "0") for r in rows)
    assert {r["device"] for r in rows} <= set(DEVICES)
    write_csv(log, tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_text() == out.read_text()
