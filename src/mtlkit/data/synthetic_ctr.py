"""Synthetic impressions with clicks and conversions: a known CVR and a controlled click-selection bias.

Real CTR/CVR logs only reveal a conversion label for clicked impressions, so a CVR model is
trained on clicks but used on every impression (the sample selection bias that ESMM, Ma et al.
2018, addresses). Here the ground truth is known for every impression: its conversion
probability and whether it *would* convert if clicked, so pCVR can be scored over the entire
impression space.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc

from mtlkit.data.ctr import TaskSet, ctr_cvr_targets, ctr_cvr_tasks
from mtlkit.data.dataset import MultiTaskDataset
from mtlkit.data.splits import DataSplits
from mtlkit.errors import DataError
from mtlkit.registries import DATASETS

__all__ = ["TRUTH_TARGETS", "synthetic_ctr_cvr", "synthetic_ctr_cvr_splits"]

TRUTH_TARGETS = ("would_convert", "pctr_true", "pcvr_true")
"""Extra targets of the synthetic data (no task reads them): the latent conversion label of every
impression and the true click and conversion probabilities, kept for evaluation."""


def _offset(score: Tensor, level: float) -> float:
    """``b`` such that ``mean(sigmoid(score + b)) == level`` (bisection; the mean rises with ``b``)."""
    lo, hi = -40.0, 40.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if torch.sigmoid(score + mid).mean().item() < level:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def synthetic_ctr_cvr(
    n_samples: int,
    *,
    dim: int = 16,
    ctr: float = 0.1,
    cvr: float = 0.2,
    selection_bias: float = 2.0,
    correlation: float = 0.5,
    seed: int = 0,
) -> MultiTaskDataset:
    """Impressions with a click, a conversion and the ground truth behind them.

    Generation (all from one generator seeded with ``seed``):

    1. ``u, v, w``: orthonormal directions in R^dim; ``x ~ N(0, I_dim)`` (the features).
    2. Click: ``pCTR(x) = sigmoid(a + s * u.x + w.x)`` with ``s = selection_bias``. The larger
       ``s``, the more clicks concentrate where ``u.x`` is high, so clicked impressions are a
       biased sample of all impressions (``s = 0``: clicks do not depend on ``u.x``).
    3. Conversion given click: ``pCVR(x) = sigmoid(b + rho * u.x + sqrt(1 - rho^2) * v.x)`` with
       ``rho = correlation``, the Pearson correlation between the conversion score and the
       selection score ``u.x``.
    4. ``a`` and ``b`` are set (by bisection on the drawn ``x``) so that the mean pCTR over the
       impressions is ``ctr`` and the mean pCVR is ``cvr``.
    5. ``click ~ Bernoulli(pCTR)`` and, independently given ``x``, ``would_convert ~
       Bernoulli(pCVR)``; the observed ``conversion = click * would_convert``.

    Conversions are missing at random given ``x``: ``pCVR(x)`` is the conversion probability of
    an impression both among clicked impressions and over the entire space.

    Returns:
        A :class:`MultiTaskDataset` with float inputs ``(n, dim)`` and targets ``ctr`` (click),
        ``ctcvr`` (conversion), ``cvr`` (conversion on clicked impressions, NaN elsewhere), plus
        the ground truth :data:`TRUTH_TARGETS` (``would_convert``, ``pctr_true``, ``pcvr_true``),
        and the ``"esmm"`` task set (see :func:`~mtlkit.data.ctr.ctr_cvr_tasks`).
    """
    if not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"synthetic_ctr_cvr: n_samples must be an int >= 2; got {n_samples!r}.")
    if not isinstance(dim, int) or dim < 3:
        raise ValueError(f"synthetic_ctr_cvr: dim must be an int >= 3 (three orthogonal directions); got {dim!r}.")
    for name, level in (("ctr", ctr), ("cvr", cvr)):
        if not 0.0 < level < 1.0:
            raise ValueError(f"synthetic_ctr_cvr: {name} (the mean rate) must be in (0, 1); got {level!r}.")
    if not (math.isfinite(selection_bias) and selection_bias >= 0):
        raise ValueError(f"synthetic_ctr_cvr: selection_bias must be a float >= 0; got {selection_bias!r}.")
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"synthetic_ctr_cvr: correlation must be in [-1, 1]; got {correlation!r}.")

    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    q, _ = torch.linalg.qr(torch.randn(dim, 3, generator=g, dtype=f64))
    u, v, w = q[:, 0], q[:, 1], q[:, 2]
    x = torch.randn(n_samples, dim, generator=g, dtype=f64)
    su, sv, sw = x @ u, x @ v, x @ w
    click_score = selection_bias * su + sw
    rho = float(correlation)
    conv_score = rho * su + math.sqrt(max(0.0, 1.0 - rho * rho)) * sv
    a, b = _offset(click_score, ctr), _offset(conv_score, cvr)
    pctr, pcvr = torch.sigmoid(click_score + a), torch.sigmoid(conv_score + b)
    click = (torch.rand(n_samples, generator=g, dtype=f64) < pctr).float()
    would = (torch.rand(n_samples, generator=g, dtype=f64) < pcvr).float()
    targets = ctr_cvr_targets(click, click * would, source="synthetic_ctr_cvr")
    targets.update({"would_convert": would, "pctr_true": pctr.float(), "pcvr_true": pcvr.float()})
    clicked = click > 0
    info = {
        "generator": "synthetic_ctr_cvr",
        "dim": dim,
        "ctr": ctr,
        "cvr": cvr,
        "selection_bias": float(selection_bias),
        "correlation": rho,
        "seed": seed,
        "click_rate": float(click.mean()),
        "cvr_all": float(would.mean()),
        "cvr_clicked": float(would[clicked].mean()) if clicked.any() else math.nan,
        "pcvr_clicked": float(pcvr[clicked].mean()) if clicked.any() else math.nan,
        "selection_score_clicked": float(su[clicked].mean()) if clicked.any() else math.nan,
        "offsets": {"a": a, "b": b},
    }
    return MultiTaskDataset(x.float(), targets, tasks=ctr_cvr_tasks("esmm"), info=info)


def _auc(score: Tensor, label: Tensor) -> float:
    if label.min() == label.max():
        return math.nan
    return float(binary_auroc(score.double(), label.long(), thresholds=None))


@DATASETS.register("synthetic_ctr_cvr", aliases=("synthetic_esmm",))
def synthetic_ctr_cvr_splits(
    *,
    n_train: int = 20_000,
    n_val: int = 5_000,
    n_test: int = 20_000,
    dim: int = 16,
    ctr: float = 0.1,
    cvr: float = 0.2,
    selection_bias: float = 2.0,
    correlation: float = 0.5,
    task_set: TaskSet = "esmm",
    test_cvr: Literal["entire_space", "clicked"] = "entire_space",
    seed: int = 0,
) -> DataSplits:
    """Synthetic impressions with click-selection bias and a known CVR; tasks ctr, ctcvr, cvr (see task_set).

    Train and validation splits hold what a log reveals (``cvr`` labels on clicked impressions
    only). With ``test_cvr="entire_space"`` (default) the test split's ``cvr`` labels are the
    latent ``would_convert`` labels of *every* impression, so the test ``cvr`` metrics score pCVR
    over the entire impression space; ``"clicked"`` keeps the observed labels as in training.
    See :func:`synthetic_ctr_cvr` for the generator and :func:`~mtlkit.data.ctr.ctr_cvr_tasks`
    for ``task_set``.
    """
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        least = 2 if name == "n_train" else 0
        if not isinstance(n, int) or n < least:
            raise ValueError(f"synthetic_ctr_cvr: {name} must be an int >= {least}; got {n!r}.")
    if test_cvr not in ("entire_space", "clicked"):
        raise ValueError(f"synthetic_ctr_cvr: test_cvr must be 'entire_space' or 'clicked'; got {test_cvr!r}.")
    tasks = ctr_cvr_tasks(task_set)
    full = synthetic_ctr_cvr(
        n_train + n_val + n_test,
        dim=dim,
        ctr=ctr,
        cvr=cvr,
        selection_bias=selection_bias,
        correlation=correlation,
        seed=seed,
    )
    train, val, test = full.split([n_train, n_val, n_test])
    info = dict(full.info) | {"task_set": task_set, "test_cvr": test_cvr}
    if int(train.targets["ctr"].sum()) == 0:
        raise DataError(
            f"synthetic_ctr_cvr: the training split has no click (n_train={n_train}, ctr={ctr}); raise either."
        )
    test_targets = dict(test.targets)
    if n_test:
        info["oracle_test_cvr_auc"] = _auc(test_targets["pcvr_true"], test_targets["would_convert"])
        if test_cvr == "entire_space":
            test_targets["cvr"] = test_targets["would_convert"]

    def with_tasks(d: MultiTaskDataset, targets: dict[str, Tensor] | None = None) -> MultiTaskDataset:
        return MultiTaskDataset(d.inputs, targets or d.targets, tasks=tasks, info=d.info)

    return DataSplits(
        train=with_tasks(train),
        val=with_tasks(val) if n_val else None,
        test=with_tasks(test, test_targets) if n_test else None,
        tasks=tasks,
        input_spec=dim,
        info=info,
    )
