"""Synthetic impressions over sparse user and item IDs: the regime where ESMM's mechanism applies.

ESMM (Ma et al., SIGIR 2018) gains over a CVR model trained on clicked impressions through two
effects of sparse ID features: *data sparsity* (few clicks per ID, so a CVR network trained on
clicks alone overfits or never sees an ID) and *sample selection bias* (the clicked impressions
are a biased sample of the impressions pCVR is used on). Both need high-cardinality IDs whose
embeddings are learned, a click rate of a few percent and rarer conversions, and a conversion
propensity that shares latent factors with the click propensity, so that what the click data
teach the shared embeddings carries over to conversions. :func:`synthetic_ctr_cvr_ids` draws such
impressions with the ground truth known everywhere; :func:`synthetic_ctr_cvr_ids_splits` (dataset
``synthetic_ctr_cvr_ids``) encodes the IDs with the feature specs of :mod:`mtlkit.data.features`
(hashed columns, embedded by the ``embedding`` backbone).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from mtlkit.data.ctr import TaskSet, ctr_cvr_targets, ctr_cvr_tasks
from mtlkit.data.dataset import MultiTaskDataset
from mtlkit.data.preprocessing import TabularPreprocessor
from mtlkit.data.splits import DataSplits
from mtlkit.data.synthetic_ctr import _auc, _offset
from mtlkit.errors import DataError
from mtlkit.registries import DATASETS

__all__ = ["IDImpressions", "synthetic_ctr_cvr_ids", "synthetic_ctr_cvr_ids_splits"]

IDImpressions = dict[str, Any]


def _check(name: str, ok: bool, want: str, got: Any) -> None:
    if not ok:
        raise ValueError(f"synthetic_ctr_cvr_ids: {name} must be {want}; got {got!r}.")


def _is_int(x: Any, least: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= least


def synthetic_ctr_cvr_ids(
    n_samples: int,
    *,
    n_users: int = 20_000,
    n_items: int = 5_000,
    factors: int = 8,
    ctr: float = 0.04,
    cvr: float = 0.1,
    click_scale: float = 2.0,
    conversion_scale: float = 2.0,
    correlation: float = 0.7,
    seed: int = 0,
) -> IDImpressions:
    """Impressions ``(user, item)`` with a click, a would-convert label and their true probabilities.

    Generation (one generator seeded with ``seed``, float64):

    1. Every user ``u`` has a click propensity ``a_u ~ N(0, 1)`` and latent vector ``p_u ~
       N(0, I_k)``, a conversion propensity ``c_u`` and a second vector ``r_u`` (likewise);
       every item ``i`` has ``b_i, q_i`` and ``d_i, s_i`` (``k = factors``).
    2. Impressions: user and item drawn uniformly, independently.
    3. Click score ``z_c = (a_u + b_i + p_u.q_i / sqrt(k)) / sqrt(3)`` and the conversion's own
       score ``z_o = (c_u + d_i + r_u.s_i / sqrt(k)) / sqrt(3)`` (each of variance 1); the
       conversion score ``z_v = rho * z_c + sqrt(1 - rho^2) * z_o`` shares the click's latent
       factors (``rho = correlation`` is the correlation of ``z_v`` with ``z_c``).
    4. ``pCTR = sigmoid(a + click_scale * z_c)``, ``pCVR = sigmoid(b + conversion_scale * z_v)``,
       with ``a``, ``b`` set (bisection on the drawn impressions) so that the mean pCTR is ``ctr``
       and the mean pCVR over all impressions is ``cvr``.
    5. ``click ~ Bernoulli(pCTR)`` and independently ``would_convert ~ Bernoulli(pCVR)``; the
       observed conversion is ``click * would_convert``.

    Clicks select impressions with high ``z_c`` and so (for ``rho > 0``) a higher conversion rate
    than the entire space: the selection bias. Conversions are missing at random given the IDs.

    Returns:
        ``{"user", "item"}`` (int64 ID arrays), ``"click"``, ``"would_convert"``, ``"pctr"``,
        ``"pcvr"`` (float64 tensors) and ``"info"`` (the parameters, offsets and rates drawn).
    """
    _check("n_samples", _is_int(n_samples, 2), "an int >= 2", n_samples)
    _check("n_users", _is_int(n_users, 1), "an int >= 1", n_users)
    _check("n_items", _is_int(n_items, 1), "an int >= 1", n_items)
    _check("factors", _is_int(factors, 1), "an int >= 1", factors)
    for name, level in (("ctr", ctr), ("cvr", cvr)):
        _check(name, isinstance(level, (int, float)) and 0.0 < level < 1.0, "a rate in (0, 1)", level)
    for name, scale in (("click_scale", click_scale), ("conversion_scale", conversion_scale)):
        _check(
            name,
            isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0,
            "a float >= 0",
            scale,
        )
    _check(
        "correlation",
        isinstance(correlation, (int, float)) and -1.0 <= correlation <= 1.0,
        "in [-1, 1]",
        correlation,
    )

    g = torch.Generator().manual_seed(seed)
    f64, k = torch.float64, factors

    def latent(n: int) -> tuple[Tensor, Tensor]:
        return torch.randn(n, generator=g, dtype=f64), torch.randn(n, k, generator=g, dtype=f64)

    (a_u, p_u), (c_u, r_u) = latent(n_users), latent(n_users)
    (b_i, q_i), (d_i, s_i) = latent(n_items), latent(n_items)
    user = torch.randint(n_users, (n_samples,), generator=g)
    item = torch.randint(n_items, (n_samples,), generator=g)
    root3, rootk = math.sqrt(3.0), math.sqrt(k)
    z_c = (a_u[user] + b_i[item] + (p_u[user] * q_i[item]).sum(1) / rootk) / root3
    z_o = (c_u[user] + d_i[item] + (r_u[user] * s_i[item]).sum(1) / rootk) / root3
    rho = float(correlation)
    z_v = rho * z_c + math.sqrt(max(0.0, 1.0 - rho * rho)) * z_o
    a = _offset(click_scale * z_c, ctr)
    b = _offset(conversion_scale * z_v, cvr)
    pctr, pcvr = torch.sigmoid(a + click_scale * z_c), torch.sigmoid(b + conversion_scale * z_v)
    click = (torch.rand(n_samples, generator=g, dtype=f64) < pctr).to(f64)
    would = (torch.rand(n_samples, generator=g, dtype=f64) < pcvr).to(f64)
    clicked = click > 0
    info = {
        "generator": "synthetic_ctr_cvr_ids",
        "n_users": n_users,
        "n_items": n_items,
        "factors": k,
        "ctr": ctr,
        "cvr": cvr,
        "click_scale": float(click_scale),
        "conversion_scale": float(conversion_scale),
        "correlation": rho,
        "seed": seed,
        "click_rate": float(click.mean()),
        "cvr_all": float(would.mean()),
        "cvr_clicked": float(would[clicked].mean()) if clicked.any() else math.nan,
        "conversion_rate": float((click * would).mean()),
        "offsets": {"a": a, "b": b},
    }
    return {
        "user": user.numpy(),
        "item": item.numpy(),
        "click": click,
        "would_convert": would,
        "pctr": pctr,
        "pcvr": pcvr,
        "info": info,
    }


@DATASETS.register("synthetic_ctr_cvr_ids", aliases=("synthetic_esmm_ids",))
def synthetic_ctr_cvr_ids_splits(
    *,
    n_train: int = 200_000,
    n_val: int = 50_000,
    n_test: int = 100_000,
    n_users: int = 20_000,
    n_items: int = 5_000,
    factors: int = 8,
    ctr: float = 0.04,
    cvr: float = 0.1,
    click_scale: float = 2.0,
    conversion_scale: float = 2.0,
    correlation: float = 0.7,
    hash_buckets: int | None = None,
    task_set: TaskSet = "esmm",
    train_cvr: Literal["clicked", "all"] = "clicked",
    test_cvr: Literal["entire_space", "clicked"] = "entire_space",
    seed: int = 0,
) -> DataSplits:
    """Impressions over sparse user and item IDs (see :func:`synthetic_ctr_cvr_ids`); tasks ctr, ctcvr, cvr.

    Inputs: the categorical columns ``user_id`` and ``item_id``, hashed into ``hash_buckets``
    buckets each (``None``: ``2 * n_users`` and ``2 * n_items``; feature specs
    ``{name: user_id, hash_buckets: ...}``), for the ``embedding`` backbone. An ID never seen in
    training keeps its bucket's initial embedding.

    Args:
        task_set: ``"esmm"``, ``"clicked_cvr"`` or ``"funnel"`` (see :func:`~mtlkit.data.ctr.ctr_cvr_tasks`).
        train_cvr: the ``cvr`` labels of the training and validation splits: ``"clicked"`` (what
            a log reveals: the conversion of clicked impressions, NaN elsewhere) or ``"all"`` (the
            naive CVR model's data: every impression, unclicked ones as not converted).
        test_cvr: ``"entire_space"`` (default): the test ``cvr`` labels are the latent
            would-convert labels of every impression; ``"clicked"``: the observed ones.
        seed: the data seed (IDs, latent factors, labels).
    """
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        _check(
            name, _is_int(n, 2 if name == "n_train" else 0), f"an int >= {2 if name == 'n_train' else 0}", n
        )
    _check(
        "hash_buckets", hash_buckets is None or _is_int(hash_buckets, 1), "None or an int >= 1", hash_buckets
    )
    _check("train_cvr", train_cvr in ("clicked", "all"), "'clicked' or 'all'", train_cvr)
    _check("test_cvr", test_cvr in ("entire_space", "clicked"), "'entire_space' or 'clicked'", test_cvr)
    tasks = ctr_cvr_tasks(task_set)
    n = n_train + n_val + n_test
    gen_args = {"n_users": n_users, "n_items": n_items, "factors": factors, "ctr": ctr, "cvr": cvr}
    gen_args |= {"click_scale": click_scale, "conversion_scale": conversion_scale, "correlation": correlation}
    imp = synthetic_ctr_cvr_ids(n, **gen_args, seed=seed)
    buckets = {
        "user_id": hash_buckets or 2 * n_users,
        "item_id": hash_buckets or 2 * n_items,
    }
    pre = TabularPreprocessor(categorical=[{"name": c, "hash_buckets": b} for c, b in buckets.items()])
    bounds = np.cumsum([0, n_train, n_val, n_test])
    cols = {"user_id": imp["user"], "item_id": imp["item"]}
    pre.fit({c: v[: bounds[1]] for c, v in cols.items()})
    parts: dict[str, MultiTaskDataset] = {}
    counts: dict[str, dict[str, int]] = {}
    info: dict[str, Any] = dict(imp["info"]) | {
        "task_set": task_set,
        "train_cvr": train_cvr,
        "test_cvr": test_cvr,
    }
    info["hash_buckets"] = buckets
    for split, lo, hi in zip(("train", "val", "test"), bounds[:-1], bounds[1:], strict=True):
        if hi == lo:
            continue
        click, would = imp["click"][lo:hi], imp["would_convert"][lo:hi]
        targets = ctr_cvr_targets(click, click * would, source="synthetic_ctr_cvr_ids")
        if split == "test" and test_cvr == "entire_space":
            targets["cvr"] = would.float()
        elif split != "test" and train_cvr == "all":
            targets["cvr"] = targets["ctcvr"].clone()
        targets |= {
            "would_convert": would.float(),
            "pctr_true": imp["pctr"][lo:hi].float(),
            "pcvr_true": imp["pcvr"][lo:hi].float(),
        }
        inputs = pre.transform({c: v[lo:hi] for c, v in cols.items()})
        parts[split] = MultiTaskDataset(inputs, targets, tasks=tasks)
        counts[split] = {
            "impressions": int(hi - lo),
            "clicks": int(click.sum()),
            "conversions": int((click * would).sum()),
        }
    info["counts"] = counts
    if int(counts["train"]["clicks"]) == 0 or int(counts["train"]["conversions"]) == 0:
        raise DataError(
            f"synthetic_ctr_cvr_ids: the training split has {counts['train']['clicks']} clicks and "
            f"{counts['train']['conversions']} conversions (n_train={n_train}, ctr={ctr}, cvr={cvr}); raise them."
        )
    if n_test:
        lo = bounds[2]
        train_click = imp["click"][: bounds[1]].numpy() > 0
        for key, ids in (("user", imp["user"]), ("item", imp["item"])):
            seen, test = ids[: bounds[1]], ids[lo:]
            # shares of test impressions whose ID had no training impression / no training click
            info[f"test_unseen_{key}"] = float(1.0 - np.isin(test, seen).mean())
            info[f"test_{key}_without_click"] = float(1.0 - np.isin(test, seen[train_click]).mean())
        info["oracle_test_cvr_auc"] = _auc(imp["pcvr"][lo:], imp["would_convert"][lo:])
        info["oracle_test_ctcvr_auc"] = _auc(
            imp["pcvr"][lo:] * imp["pctr"][lo:], (imp["click"] * imp["would_convert"])[lo:]
        )
    return DataSplits(
        train=parts["train"],
        val=parts.get("val"),
        test=parts.get("test"),
        tasks=tasks,
        input_spec=pre.schema,
        info=info,
        preprocessor=pre,
    )
