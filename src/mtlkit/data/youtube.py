"""Logged ranking impressions with a known truth: position bias, engagement and satisfaction.

A simulated logging ranker showed each user a slate of items; the user clicked an item with
probability ``relevance x propensity(position, device)``, and watch time and likes are observed
on clicked items only. The unbiased relevance, the satisfaction, the propensities and the
utility of every impression are kept, for evaluation only (targets that no task reads), so a
model trained on the logged clicks can be scored against what the user actually wanted.
This is the setting of YouTube's ranking system (Zhao et al., RecSys 2019): engagement and
satisfaction objectives, and selection (position) bias in the logged data.

Generation (one ``numpy`` generator seeded with ``seed``), for ``dim``-dimensional latent factors:

1. Users ``u ~ N(0, I)`` and items ``v ~ N(0, I)`` (observed as numeric features ``u0..``,
   ``v0..``); each item has a ``promo`` value ``~ N(0, 1)`` (observed) that the *logging* ranker
   favoured but that has no effect on the user; each impression a ``device`` (``0..2``, uniform).
2. Relevance score ``z_r = (u . v + c . v) / sqrt(2 dim)`` (``c`` a fixed random item-quality
   direction), relevance ``r = sigmoid(a + 1.5 z_r)`` with ``a`` set so that the mean relevance
   is ``relevance`` (default 0.3).
3. Satisfaction (a like given a click) ``s = sigmoid(b + 1.5 (rho z_r + sqrt(1 - rho^2) z_s))``,
   ``z_s = u . (A v) / sqrt(dim)`` (``A`` a fixed random orthogonal matrix), ``rho = conflict``
   the correlation between the two objectives' scores (partly conflicting for ``rho < 1``);
   mean ``s`` about 0.4.
4. Slates: each of a user's slates holds ``slate_size`` distinct items drawn uniformly; the
   logging ranker sorts them by ``z_r + noise + logging_bias x promo`` (``noise ~ N(0, 1)``)
   and shows them at positions ``0 .. slate_size - 1`` (0 = top).
5. Propensity ``e(pos, device) = 1 / (1 + pos) ** (eta x device_scale[device])``; the logged
   ``click ~ Bernoulli(r x e)``; the unbiased ``click_unbiased ~ Bernoulli(r)`` (what a click would
   have been without position bias, for evaluation).
6. Given a click: ``watch_time = exp(0.6 z_r + 0.3 eps)`` (minutes; mean ``m = exp(0.6 z_r + 0.045)``)
   and ``like ~ Bernoulli(s)``; both NaN (missing) on impressions without a click.
7. The true utility of an impression, the score an ideal ranker sorts by:
   ``utility = r x (1 + m) ** watch_weight x s ** like_weight``.

Inputs (tabular, model-ready): ``categorical`` = ``[device, position]`` (indices ``1 + value``;
0 is the unknown bucket) and ``numeric`` = ``[u0.., v0.., promo]``. Tasks: ``click`` (binary),
``watch_time`` (regression, clicked impressions only) and ``like`` (binary, clicked only). Truth
targets (:data:`TRUTH`): ``relevance``, ``satisfaction``, ``watch_mean``, ``utility``,
``propensity``, ``click_prob`` (``r x e``), ``click_unbiased``, ``slate`` (the slate id, for
per-slate ranking metrics) and ``position``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlkit.data.dataset import MultiTaskDataset
from mtlkit.data.schema import FeatureSchema
from mtlkit.data.splits import DataSplits
from mtlkit.errors import DataError
from mtlkit.registries import DATASETS
from mtlkit.tasks import Task

__all__ = [
    "DEVICES",
    "TRUTH",
    "YoutubeLog",
    "propensity",
    "youtube_log",
    "youtube_log_splits",
    "youtube_tasks",
]

DEVICES = ("android", "ios", "web")
TRUTH = (
    "relevance",
    "satisfaction",
    "watch_mean",
    "utility",
    "propensity",
    "click_prob",
    "click_unbiased",
    "slate",
    "position",
)
"""Targets kept for evaluation only (no task reads them; never model inputs)."""


def propensity(
    position: np.ndarray, eta: float, device: np.ndarray | None = None, device_scale: Sequence[float] = (1.0,)
) -> np.ndarray:
    """``1 / (1 + position) ** (eta x device_scale[device])`` (position 0 = top)."""
    pos = np.asarray(position, dtype=np.float64)
    scale = np.asarray(device_scale, dtype=np.float64)[np.asarray(device)] if device is not None else 1.0
    return 1.0 / (1.0 + pos) ** (eta * scale)


def youtube_tasks(auxiliary_like: bool = False) -> tuple[Task, ...]:
    """``click`` (binary), ``watch_time`` (regression), ``like`` (binary; auxiliary on request)."""
    return (
        Task(name="click", kind="binary"),
        Task(name="watch_time", kind="regression"),
        Task(name="like", kind="binary", auxiliary=auxiliary_like),
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _offset(score: np.ndarray, level: float) -> float:
    """``a`` with ``mean(sigmoid(a + score)) == level`` (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _sigmoid(score + mid).mean() < level else (lo, mid)
    return 0.5 * (lo + hi)


class YoutubeLog:
    """The generated log (see the module doc): ``columns`` (numpy arrays, one row per impression),
    ``schema`` and ``info``; :meth:`dataset` turns rows into a :class:`MultiTaskDataset`."""

    def __init__(
        self,
        columns: dict[str, np.ndarray],
        schema: FeatureSchema,
        info: dict[str, Any],
        dim: int,
        tasks: tuple[Task, ...],
    ) -> None:
        self.columns, self.schema, self.info, self.dim, self.tasks = columns, schema, info, dim, tasks

    def __len__(self) -> int:
        return int(self.columns["click"].shape[0])

    def dataset(self, rows: np.ndarray | slice | None = None) -> MultiTaskDataset:
        c = self.columns
        idx = slice(None) if rows is None else rows
        cat = np.stack([c["device"][idx] + 1, c["position"][idx] + 1], axis=1).astype(np.int64)
        num = np.concatenate([c["user"][idx], c["item"][idx], c["promo"][idx][:, None]], axis=1)
        targets = {
            k: torch.from_numpy(np.ascontiguousarray(c[k][idx], dtype=np.float64))
            for k in ("click", "watch_time", "like", *TRUTH)
        }
        inputs = {"categorical": torch.from_numpy(cat), "numeric": torch.from_numpy(num.astype(np.float32))}
        return MultiTaskDataset(inputs, targets, tasks=self.tasks, info=self.info)


def write_csv(log: YoutubeLog, path: str | os.PathLike[str]) -> Path:
    """Write the log as one CSV: ids, features (``u0..``, ``v0..``, ``promo``, ``device`` as its
    name, ``position``), the logged labels (``watch_time``/``like`` blank when missing) and the
    truth columns (:data:`TRUTH`, for evaluation only)."""
    c = log.columns
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [
        "slate",
        "user_id",
        "item_id",
        *log.schema.numeric,
        "device",
        "position",
        "click",
        "watch_time",
        "like",
    ]
    names += [t for t in TRUTH if t not in ("slate", "position")]
    cols: dict[str, np.ndarray] = {
        "slate": c["slate"].astype(np.int64),
        "user_id": c["user_id"],
        "item_id": c["item_id"],
    }
    for j in range(log.dim):
        cols[f"u{j}"], cols[f"v{j}"] = c["user"][:, j], c["item"][:, j]
    cols["promo"] = c["promo"]
    cols["device"] = np.asarray(DEVICES)[c["device"]]
    cols["position"] = c["position"]
    for k in ("click", "watch_time", "like", *TRUTH):
        if k not in ("slate", "position"):
            cols[k] = c[k]

    def cell(v: object) -> str:
        if isinstance(v, (float, np.floating)):
            return "" if math.isnan(float(v)) else format(float(v), ".9g")
        return str(v)

    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for row in zip(*(cols[k].tolist() for k in names)):
            writer.writerow([cell(v) for v in row])
    return out


def youtube_log(
    slates: int,
    *,
    slate_size: int = 10,
    users: int = 1000,
    items: int = 400,
    dim: int = 4,
    eta: float = 1.0,
    device_scale: Sequence[float] = (1.0, 1.5, 0.7),
    logging_bias: float = 1.5,
    conflict: float = 0.5,
    relevance: float = 0.3,
    watch_weight: float = 0.5,
    like_weight: float = 0.5,
    auxiliary_like: bool = False,
    seed: int = 0,
) -> YoutubeLog:
    """``slates`` logged slates of ``slate_size`` impressions each (see the module doc)."""
    _check(slates=slates, slate_size=slate_size, users=users, items=items, dim=dim)
    if slate_size > items:
        raise DataError(
            f"youtube_log: slate_size ({slate_size}) cannot exceed the number of items ({items})."
        )
    for name, v in (
        ("eta", eta),
        ("logging_bias", logging_bias),
        ("watch_weight", watch_weight),
        ("like_weight", like_weight),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise DataError(f"youtube_log: {name} must be a finite number >= 0; got {v!r}.")
    scale = [float(s) for s in device_scale]
    if len(scale) != len(DEVICES) or any(not math.isfinite(s) or s < 0 for s in scale):
        raise DataError(
            f"youtube_log: device_scale needs {len(DEVICES)} numbers >= 0 ({', '.join(DEVICES)}); got {device_scale!r}."
        )
    if not -1.0 <= conflict <= 1.0:
        raise DataError(
            f"youtube_log: conflict (the correlation of the two objectives) must be in [-1, 1]; got {conflict!r}."
        )
    if not 0.0 < relevance < 1.0:
        raise DataError(f"youtube_log: relevance (the mean relevance) must be in (0, 1); got {relevance!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"youtube_log: seed must be an int >= 0; got {seed!r}.")

    rng = np.random.default_rng(seed)
    U = rng.standard_normal((users, dim))
    V = rng.standard_normal((items, dim))
    promo = rng.standard_normal(items)
    c_dir = rng.standard_normal(dim)
    c_dir /= np.linalg.norm(c_dir)
    A, _ = np.linalg.qr(rng.standard_normal((dim, dim)))

    n = slates * slate_size
    user_of_slate = rng.integers(0, users, slates)
    # distinct items per slate: the first slate_size of a random permutation key
    keys = rng.random((slates, items))
    slate_items = np.argpartition(keys, slate_size - 1, axis=1)[:, :slate_size]
    device_of_slate = rng.integers(0, len(DEVICES), slates)
    u = U[np.repeat(user_of_slate, slate_size)]
    it = slate_items.reshape(-1)
    v = V[it]
    z_r = ((u * v).sum(1) + v @ c_dir) / math.sqrt(2 * dim)
    z_s = (u * (v @ A.T)).sum(1) / math.sqrt(dim)
    z_r_std = (z_r - z_r.mean()) / (z_r.std() + 1e-12)
    z_s_std = (z_s - z_s.mean()) / (z_s.std() + 1e-12)
    a = _offset(1.5 * z_r, relevance)
    r = _sigmoid(a + 1.5 * z_r)
    sat_score = 1.5 * (conflict * z_r_std + math.sqrt(max(0.0, 1.0 - conflict**2)) * z_s_std)
    s = _sigmoid(_offset(sat_score, 0.4) + sat_score)

    # the logging ranker: relevance seen through noise, plus the promo it favoured
    log_score = (z_r / (z_r.std() + 1e-12) + rng.standard_normal(n) + logging_bias * promo[it]).reshape(
        slates, slate_size
    )
    order = np.argsort(-log_score, axis=1, kind="stable")
    position = np.empty((slates, slate_size), dtype=np.int64)
    np.put_along_axis(position, order, np.arange(slate_size)[None, :].repeat(slates, 0), axis=1)
    position = position.reshape(-1)
    device = np.repeat(device_of_slate, slate_size)
    e = propensity(position, eta, device, scale)
    p_click = r * e
    click = (rng.random(n) < p_click).astype(np.float64)
    click_unbiased = (rng.random(n) < r).astype(np.float64)
    watch_mean = np.exp(0.6 * z_r + 0.5 * 0.3**2)
    watch = np.exp(0.6 * z_r + 0.3 * rng.standard_normal(n))
    like = (rng.random(n) < s).astype(np.float64)
    clicked = click > 0
    columns = {
        "user_id": np.repeat(user_of_slate, slate_size),
        "item_id": it,
        "user": u.astype(np.float32),
        "item": v.astype(np.float32),
        "promo": promo[it].astype(np.float32),
        "device": device,
        "position": position,
        "click": click,
        "watch_time": np.where(clicked, watch, np.nan),
        "like": np.where(clicked, like, np.nan),
        "relevance": r,
        "satisfaction": s,
        "watch_mean": watch_mean,
        "utility": r * (1.0 + watch_mean) ** watch_weight * s**like_weight,
        "propensity": e,
        "click_prob": p_click,
        "click_unbiased": click_unbiased,
        "slate": np.repeat(np.arange(slates), slate_size).astype(np.float64),
    }
    schema = FeatureSchema(
        ("device", "position"),
        (len(DEVICES) + 1, slate_size + 1),
        (*(f"u{j}" for j in range(dim)), *(f"v{j}" for j in range(dim)), "promo"),
    )
    info = {
        "generator": "youtube_log",
        "slates": slates,
        "slate_size": slate_size,
        "users": users,
        "items": items,
        "dim": dim,
        "eta": float(eta),
        "device_scale": scale,
        "logging_bias": float(logging_bias),
        "conflict": float(conflict),
        "watch_weight": float(watch_weight),
        "like_weight": float(like_weight),
        "seed": seed,
        "click_rate": float(click.mean()),
        "mean_relevance": float(r.mean()),
        "like_rate_clicked": float(like[clicked].mean()) if clicked.any() else math.nan,
    }
    return YoutubeLog(columns, schema, info, dim, youtube_tasks(auxiliary_like))


def _check(**values: int) -> None:
    for name, v in values.items():
        least = 2 if name in ("slate_size", "items") else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise DataError(f"youtube_log: {name} must be an int >= {least}; got {v!r}.")


@DATASETS.register("youtube_log", aliases=("youtube_ranking",))
def youtube_log_splits(
    *,
    train_slates: int = 4000,
    val_slates: int = 500,
    test_slates: int = 2000,
    slate_size: int = 10,
    users: int = 1000,
    items: int = 400,
    dim: int = 4,
    eta: float = 1.0,
    device_scale: Sequence[float] = (1.0, 1.5, 0.7),
    logging_bias: float = 1.5,
    conflict: float = 0.5,
    relevance: float = 0.3,
    watch_weight: float = 0.5,
    like_weight: float = 0.5,
    auxiliary_like: bool = False,
    seed: int = 0,
) -> DataSplits:
    """Logged slates with position bias and a known truth (see :mod:`mtlkit.data.youtube`); tasks
    click, watch_time, like; splits of whole slates."""
    for name, k in (("train_slates", train_slates), ("val_slates", val_slates), ("test_slates", test_slates)):
        least = 1 if name == "train_slates" else 0
        if isinstance(k, bool) or not isinstance(k, int) or k < least:
            raise DataError(f"youtube_log: {name} must be an int >= {least}; got {k!r}.")
    log = youtube_log(
        train_slates + val_slates + test_slates,
        slate_size=slate_size,
        users=users,
        items=items,
        dim=dim,
        eta=eta,
        device_scale=device_scale,
        logging_bias=logging_bias,
        conflict=conflict,
        relevance=relevance,
        watch_weight=watch_weight,
        like_weight=like_weight,
        auxiliary_like=auxiliary_like,
        seed=seed,
    )
    k = slate_size
    a, b = train_slates * k, (train_slates + val_slates) * k
    train = log.dataset(slice(0, a))
    if float(train.targets["click"].sum()) == 0:
        raise DataError("youtube_log: the training split has no click; raise train_slates or relevance.")
    return DataSplits(
        train=train,
        val=log.dataset(slice(a, b)) if val_slates else None,
        test=log.dataset(slice(b, len(log))) if test_slates else None,
        tasks=log.tasks,
        input_spec=log.schema,
        info=dict(log.info),
    )
