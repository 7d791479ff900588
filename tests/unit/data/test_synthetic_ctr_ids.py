"""The sparse-ID CTR/CVR generator (`synthetic_ctr_cvr_ids`): rates, selection, labels, encoding."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mtlkit.data import synthetic_ctr_cvr_ids, synthetic_ctr_cvr_ids_splits
from mtlkit.data.hashing import hash_codes
from mtlkit.data.schema import CATEGORICAL, FeatureSchema
from mtlkit.registries import DATASETS

N = 80_000


@pytest.fixture(scope="module")
def big() -> dict:
    return synthetic_ctr_cvr_ids(N, n_users=4_000, n_items=4_000, ctr=0.04, cvr=0.1, correlation=0.7, seed=3)


def _sd(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def test_rates_match_the_requested_levels(big: dict) -> None:
    # the offsets make the mean true probabilities exact; the drawn labels are binomial around them
    assert float(big["pctr"].mean()) == pytest.approx(0.04, abs=1e-6)
    assert float(big["pcvr"].mean()) == pytest.approx(0.1, abs=1e-6)
    assert abs(float(big["click"].mean()) - 0.04) < 5 * _sd(0.04, N)
    assert abs(float(big["would_convert"].mean()) - 0.1) < 5 * _sd(0.1, N)
    info = big["info"]
    assert info["click_rate"] == pytest.approx(float(big["click"].mean()))
    assert info["conversion_rate"] == pytest.approx(float((big["click"] * big["would_convert"]).mean()))
    # conversions are rarer than clicks (the clicked impressions convert at cvr_clicked)
    assert info["conversion_rate"] == pytest.approx(info["click_rate"] * info["cvr_clicked"])
    assert info["conversion_rate"] < 0.5 * info["click_rate"]


def test_labels_are_calibrated_to_the_true_probabilities(big: dict) -> None:
    """An independent check of the Bernoulli draws: within bins of the true probability the label
    rate matches the bin's mean probability (binomial tolerance)."""
    for label, prob in (("click", "pctr"), ("would_convert", "pcvr")):
        p, y = big[prob], big[label]
        edges = torch.quantile(p, torch.tensor([0.0, 0.5, 0.9, 0.99, 1.0], dtype=p.dtype))
        for lo, hi in itertools.pairwise(edges):
            sel = (p >= lo) & (p <= hi)
            n, mean_p = int(sel.sum()), float(p[sel].mean())
            assert abs(float(y[sel].mean()) - mean_p) < 5 * _sd(mean_p, n) + 1e-9, (label, float(lo))


def test_conversion_shares_the_click_factors(big: dict) -> None:
    """corr(logit pCTR, logit pCVR) is the requested correlation (the scores are affine in them),
    so clicked impressions convert more often than the entire space: the selection bias."""
    lc, lv = torch.logit(big["pctr"]), torch.logit(big["pcvr"])
    r = float(torch.corrcoef(torch.stack([lc, lv]))[0, 1])
    assert r == pytest.approx(0.7, abs=0.05)
    clicked = big["click"] > 0
    assert float(big["would_convert"][clicked].mean()) > 2 * float(big["would_convert"].mean())
    free = synthetic_ctr_cvr_ids(N, n_users=4_000, n_items=4_000, correlation=0.0, seed=3)
    lc, lv = torch.logit(free["pctr"]), torch.logit(free["pcvr"])
    assert abs(float(torch.corrcoef(torch.stack([lc, lv]))[0, 1])) < 0.05
    c = free["click"] > 0
    cvr_c, cvr_all = float(free["would_convert"][c].mean()), float(free["would_convert"].mean())
    assert abs(cvr_c - cvr_all) < 5 * _sd(cvr_all, int(c.sum()))


def test_deterministic_by_seed() -> None:
    a = synthetic_ctr_cvr_ids(5_000, n_users=300, n_items=100, seed=7)
    b = synthetic_ctr_cvr_ids(5_000, n_users=300, n_items=100, seed=7)
    c = synthetic_ctr_cvr_ids(5_000, n_users=300, n_items=100, seed=8)
    for key in ("user", "item"):
        assert np.array_equal(a[key], b[key]) and not np.array_equal(a[key], c[key])
    for key in ("click", "would_convert", "pctr", "pcvr"):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["pctr"], c["pctr"])
    s1 = synthetic_ctr_cvr_ids_splits(n_train=2_000, n_val=500, n_test=1_000, n_users=100, n_items=50, seed=4)
    s2 = synthetic_ctr_cvr_ids_splits(n_train=2_000, n_val=500, n_test=1_000, n_users=100, n_items=50, seed=4)
    for part in ("train", "val", "test"):
        d1, d2 = getattr(s1, part), getattr(s2, part)
        assert torch.equal(d1.inputs[CATEGORICAL], d2.inputs[CATEGORICAL])
        assert all(torch.equal(d1.targets[k], d2.targets[k]) for k in ("ctr", "ctcvr", "would_convert"))


@pytest.fixture(scope="module")
def splits():
    return synthetic_ctr_cvr_ids_splits(
        n_train=20_000, n_val=5_000, n_test=10_000, n_users=500, n_items=200, hash_buckets=4_096, seed=1
    )


def test_conversions_observed_only_on_clicks(splits) -> None:
    for part in (splits.train, splits.val, splits.test):
        t = part.targets
        assert bool((t["ctcvr"] <= t["ctr"]).all())
        # the observed conversion is the latent one on clicks and 0 elsewhere
        assert torch.equal(t["ctcvr"], t["ctr"] * t["would_convert"])
    for part in (splits.train, splits.val):  # what a log reveals: cvr on clicks, NaN elsewhere
        t = part.targets
        clicked = t["ctr"] > 0
        assert bool(t["cvr"][~clicked].isnan().all())
        assert torch.equal(t["cvr"][clicked], t["ctcvr"][clicked])


def test_entire_space_test_labels(splits) -> None:
    t = splits.test.targets
    assert not bool(t["cvr"].isnan().any())
    assert torch.equal(t["cvr"], t["would_convert"])
    clicked = t["ctr"] > 0
    assert torch.equal(
        t["cvr"][clicked], t["ctcvr"][clicked]
    )  # on clicks the latent label is the observed one
    assert float(t["cvr"][~clicked].sum()) > 0  # unclicked impressions that would have converted
    clicked_only = synthetic_ctr_cvr_ids_splits(
        n_train=2_000, n_val=0, n_test=1_000, n_users=100, n_items=50, test_cvr="clicked", seed=1
    )
    tc = clicked_only.test.targets
    assert bool(tc["cvr"][tc["ctr"] == 0].isnan().all())


def test_naive_training_labels_treat_unclicked_as_not_converted() -> None:
    s = synthetic_ctr_cvr_ids_splits(
        n_train=4_000,
        n_val=1_000,
        n_test=1_000,
        n_users=100,
        n_items=50,
        task_set="clicked_cvr",
        train_cvr="all",
    )
    for part in (s.train, s.val):
        assert torch.equal(part.targets["cvr"], part.targets["ctcvr"])
    assert torch.equal(s.test.targets["cvr"], s.test.targets["would_convert"])  # evaluation unchanged


def test_ids_are_hashed_feature_columns(splits) -> None:
    schema = splits.input_spec
    assert isinstance(schema, FeatureSchema)
    assert schema.categorical == ("user_id", "item_id") and schema.cardinalities == (4_097, 4_097)
    codes = splits.train.inputs[CATEGORICAL]
    assert codes.dtype == torch.long and codes.shape == (20_000, 2)
    # the codes are the stable hash of the raw IDs (independent recomputation)
    raw = synthetic_ctr_cvr_ids(35_000, n_users=500, n_items=200, seed=1)
    assert np.array_equal(codes[:, 0].numpy(), hash_codes(raw["user"][:20_000], 4_096))
    assert np.array_equal(codes[:, 1].numpy(), hash_codes(raw["item"][:20_000], 4_096))
    info = splits.info
    assert info["counts"]["train"]["impressions"] == 20_000
    assert 0.5 < info["oracle_test_cvr_auc"] < 1.0
    assert DATASETS.get("synthetic_ctr_cvr_ids") is synthetic_ctr_cvr_ids_splits


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ctr": 0.0}, "ctr must be a rate in \\(0, 1\\); got 0.0"),
        ({"cvr": 1.5}, "cvr must be a rate in \\(0, 1\\)"),
        ({"n_users": 0}, "n_users must be an int >= 1; got 0"),
        ({"correlation": 2.0}, "correlation must be in \\[-1, 1\\]"),
        ({"click_scale": -1.0}, "click_scale must be a float >= 0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        synthetic_ctr_cvr_ids(100, **kwargs)


def test_bad_split_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="train_cvr must be 'clicked' or 'all'; got 'x'"):
        synthetic_ctr_cvr_ids_splits(n_train=100, train_cvr="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hash_buckets must be None or an int >= 1; got 0"):
        synthetic_ctr_cvr_ids_splits(n_train=100, hash_buckets=0)
