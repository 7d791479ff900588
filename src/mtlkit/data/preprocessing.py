"""Tabular preprocessing fitted on the training split and saved with the model.

:class:`TabularPreprocessor` turns raw columns (categorical strings or codes, numeric values)
into the tensors that the embedding front end reads::

    pre = TabularPreprocessor(categorical=["education", "race"], numeric=["age"]).fit(train_columns)
    inputs = pre.transform(columns)   # {"categorical": (N, 2) long, "numeric": (N, 1) float}
    pre.schema                        # FeatureSchema(categorical=..., cardinalities=..., numeric=...)

Categorical columns get a vocabulary of the values seen in training (at least ``min_frequency``
times), numbered from 1 by decreasing frequency; index 0 is the unknown bucket for unseen, rare
and missing values. Numeric columns are standardised with the training mean and standard
deviation; missing values (empty, ``?``, ``NA``, NaN) become 0, the training mean. Infinite
numeric values are refused (:class:`~mtlkit.errors.DataError` naming the column and the first
row), so a fitted mean or standard deviation is always finite, also for values near the float64
limit. The fitted state is plain JSON (:meth:`state_dict`), so checkpoints and exports carry it.

Index 0 only learns when training rows use it: :class:`UnknownCategoryDropout` (the tabular
loaders' default, 1 % of the training cells per epoch) replaces a random fraction of training
categories by 0, and :meth:`TabularPreprocessor.unseen_counts` counts the values of new data that
fall into it (prediction warns with :class:`UnknownCategoryWarning`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtlkit.data.schema import CATEGORICAL, NUMERIC, FeatureSchema
from mtlkit.errors import DataError

__all__ = [
    "MISSING_VALUES",
    "TabularPreprocessor",
    "UnknownCategoryDropout",
    "UnknownCategoryWarning",
    "standardisation",
    "vocabulary",
]

MISSING_VALUES = frozenset({"", "?", "na", "nan", "null", "none"})
"""Raw strings (compared lower-cased, stripped) that mean "no value"."""

Columns = Mapping[str, Sequence[Any] | np.ndarray]


_EXACT_INTEGERS = 2.0**53  # every integer below this in magnitude is exact in float64


def number_strings(x: np.ndarray) -> np.ndarray:
    """Numbers as category strings: integers exactly (``3.0`` and ``3`` -> ``"3"``, an id such as
    ``123456789012345`` keeps every digit), other values with ``%.12g``; NaN -> ``""`` (missing).

    Integer arrays are written as they are; integer-valued floats up to 2**53 (exact in float64)
    as integers; other floats with 12 significant digits (so 0.1 + 0.2 and 0.3 are one category).
    """
    arr = np.asarray(x)
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64).astype(str)
    f = arr.astype(np.float64)
    whole = np.isfinite(f) & (np.abs(f) < _EXACT_INTEGERS) & (np.floor(f) == f)
    out = np.where(np.isnan(f), "", np.char.mod("%.12g", np.nan_to_num(f))).astype(object)
    if whole.any():
        out[whole] = f[whole].astype(np.int64).astype(str)
    return out.astype(str)


def _as_strings(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind in "fciub":
        # numeric codes of a categorical column: 3.0 and 3 are the same category; NaN is missing
        return number_strings(arr)
    return np.char.strip(arr.astype(str))


def _missing(strings: np.ndarray) -> np.ndarray:
    return np.isin(np.char.lower(strings), list(MISSING_VALUES))


def vocabulary(
    values: np.ndarray, counts: np.ndarray, *, min_frequency: int, max_categories: int | None
) -> list[str]:
    """The vocabulary of a column from its distinct non-missing values and their counts: values seen at
    least ``min_frequency`` times, most frequent first (ties by value), the first ``max_categories``."""
    keep = counts >= min_frequency
    values, counts = np.asarray(values)[keep].astype(str), np.asarray(counts)[keep]
    order = np.lexsort((values, -counts))  # most frequent first, ties by value
    if max_categories is not None:
        order = order[:max_categories]
    return [str(v) for v in values[order].tolist()]


class UnknownCategoryWarning(UserWarning):
    """New data holds categories the model never saw in training (they share the unknown bucket 0)."""


def standardisation(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of finite float64 values ``x``, both finite for any finite input.

    The values are scaled by their largest magnitude first, so neither the sum nor the squares can
    overflow (values near 1e308 give a finite mean and spread). A zero or non-finite spread
    gives 1 (the column is only centred).
    """
    scale = float(np.max(np.abs(x))) if x.size else 0.0
    if scale == 0.0:
        return 0.0, 1.0
    y = x / scale
    mean, std = float(y.mean()) * scale, float(y.std()) * scale
    return mean, std if std > 0 and math.isfinite(std) else 1.0


def standardise(x: np.ndarray, mean: float, std: float, *, column: str, source: str) -> np.ndarray:
    """``(x - mean) / std`` as float32 with missing values (NaN) as 0; a finite value whose standard
    score leaves the float32 range is refused (:class:`DataError` with its row)."""
    with np.errstate(over="ignore", invalid="ignore"):
        z = (x - mean) / std
        over = np.isinf(z)
        if over.any():  # x - mean overflowed (values near the float64 limit): divide first
            z[over] = x[over] / std - mean / std
        out = np.nan_to_num(z, nan=0.0).astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: numeric column {column!r} row {row + 1} holds {float(x[row])!r}, {float(z[row]):.3g} standard "
            f"deviations from the training mean {mean:.6g} (std {std:.6g}): beyond the float32 range. "
            "Clean the value or rescale the column (e.g. a log transform)."
        )
    return out


def first_non_finite(x: np.ndarray, *, column: str, source: str) -> None:
    """Refuse +-inf in numeric values (NaN is a missing value): :class:`DataError` naming the row."""
    bad = np.isinf(x)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(
            f"{source}: numeric column {column!r} holds {float(x[rows[0]])!r} in row {int(rows[0]) + 1}"
            + (f" ({rows.size} infinite values in all)" if rows.size > 1 else "")
            + "; numeric features must be finite numbers (blank, NA or NaN mark a missing value). "
            "Clean the value or leave the cell blank."
        )


class UnknownCategoryDropout:
    """A training-batch transform: each categorical cell becomes 0 (the unknown bucket) with
    probability ``fraction``, so the unknown embedding row is trained even when every training
    value is known.

    Attach it as a dataset's ``augment`` (the tabular loaders do, on the training split only);
    :class:`~mtlkit.data.TensorBatchLoader` applies it to shuffled (training) batches with a
    generator seeded from ``(seed, epoch)``, so runs are reproducible and resume exactly.
    """

    def __init__(self, fraction: float = 0.01) -> None:
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0.0 <= fraction < 1.0:
            raise DataError(f"unknown_fraction must be a number in [0, 1); got {fraction!r}.")
        self.fraction = float(fraction)

    def __call__(self, inputs: Any, generator: torch.Generator) -> Any:
        if not isinstance(inputs, Mapping) or CATEGORICAL not in inputs or self.fraction == 0.0:
            return inputs
        codes = inputs[CATEGORICAL]
        drop = torch.rand(codes.shape, generator=generator) < self.fraction
        return {**inputs, CATEGORICAL: codes.masked_fill(drop.to(codes.device), 0)}

    def __repr__(self) -> str:
        return f"UnknownCategoryDropout(fraction={self.fraction})"


class TabularPreprocessor:
    """Categorical vocabularies and numeric standardisation, fitted on training data only.

    Args:
        categorical: categorical column names (order = column order of the output tensor), or
            feature specs (:class:`~mtlkit.data.features.CategoricalFeature` or mappings: hashed,
            shared, list-valued columns; see :mod:`mtlkit.data.features`).
        numeric: numeric column names, or specs (``transform: log1p``, ``bucketize: [...]``).
        min_frequency: categories seen fewer times than this in training map to the unknown
            bucket (index 0).
        max_categories: keep at most this many categories per column (the most frequent; ties by
            value); the others map to the unknown bucket. ``None``: no limit.
    """

    def __init__(
        self,
        *,
        categorical: Sequence[Any] = (),
        numeric: Sequence[Any] = (),
        min_frequency: int = 1,
        max_categories: int | None = None,
    ) -> None:
        from mtlkit.data.features import parse_features

        self.features = parse_features(categorical, numeric, who="TabularPreprocessor")
        self.categorical = tuple(f.name for f in self.features.categorical)
        self.numeric = tuple(f.name for f in self.features.numeric)
        self.list_lengths: dict[str, int] = {}
        self._index_cache: dict[str, dict[str, int]] = {}
        if not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"TabularPreprocessor min_frequency must be an int >= 1; got {min_frequency!r}.")
        self.min_frequency = min_frequency
        if max_categories is not None and (
            not isinstance(max_categories, int) or isinstance(max_categories, bool) or max_categories < 1
        ):
            raise ValueError(
                f"TabularPreprocessor max_categories must be None or an int >= 1; got {max_categories!r}."
            )
        self.max_categories = max_categories
        FeatureSchema(self.categorical, (1,) * len(self.categorical), self.numeric)  # checks names
        self.vocabularies: dict[str, list[str]] | None = None
        self.stats: dict[str, tuple[float, float]] | None = None

    # ------------------------------------------------------------------ fitting
    @property
    def fitted(self) -> bool:
        return self.vocabularies is not None and self.stats is not None

    @property
    def plain(self) -> bool:
        """Every column a plain name (no feature-spec options)."""
        return self.features.plain

    def _vocab_index(self, table: str) -> dict[str, int]:
        """``{category: index}`` of a vocabulary table (cached)."""
        index = self._index_cache.get(table)
        if index is None:
            vocab = (self.vocabularies or {})[table]
            index = self._index_cache[table] = {v: i + 1 for i, v in enumerate(vocab)}
        return index

    def fit(self, columns: Columns) -> TabularPreprocessor:
        """Learn vocabularies and numeric statistics from the training columns; returns ``self``."""
        self._check_columns(columns, "fit")
        self._index_cache = {}
        if not self.plain:
            from mtlkit.data.feature_encode import FeatureFitter

            fitter = FeatureFitter(self)
            fitter.update(columns, source="TabularPreprocessor")
            fitter.finish(source="TabularPreprocessor")
            return self
        vocabularies: dict[str, list[str]] = {}
        for name in self.categorical:
            s = _as_strings(columns[name])
            s = s[~_missing(s)]
            values, counts = np.unique(s, return_counts=True)
            vocabularies[name] = vocabulary(
                values, counts, min_frequency=self.min_frequency, max_categories=self.max_categories
            )
        stats: dict[str, tuple[float, float]] = {}
        for name in self.numeric:
            x = self._numbers(columns[name], name)
            x = x[~np.isnan(x)]
            if x.size == 0:
                raise DataError(
                    f"TabularPreprocessor: numeric column {name!r} has no values in the training data; "
                    "drop it or list it as categorical."
                )
            stats[name] = standardisation(x)
        self.vocabularies, self.stats = vocabularies, stats
        return self

    # ------------------------------------------------------------------ transforming
    @property
    def schema(self) -> FeatureSchema:
        """The :class:`FeatureSchema` of the transformed inputs (needs a fitted preprocessor)."""
        vocabularies, _ = self._fitted_state()
        if not self.plain:
            from mtlkit.data.feature_encode import feature_schema

            return feature_schema(self)
        return FeatureSchema(
            self.categorical,
            tuple(len(vocabularies[c]) + 1 for c in self.categorical),
            self.numeric,
        )

    def transform(self, columns: Columns) -> dict[str, Tensor]:
        """Raw columns -> ``{"categorical": (N, C) long, "numeric": (N, D) float32}``.

        Keys without columns are left out. Unseen and missing categories map to index 0;
        missing numeric values to 0 (the training mean).
        """
        vocabularies, stats = self._fitted_state()
        n = self._check_columns(columns, "transform")
        if not self.plain:
            from mtlkit.data.feature_encode import transform_features

            return transform_features(self, columns, source="TabularPreprocessor")
        out: dict[str, Tensor] = {}
        if self.categorical:
            codes = np.zeros((n, len(self.categorical)), dtype=np.int64)
            for j, name in enumerate(self.categorical):
                s = _as_strings(columns[name])
                uniq, inverse = np.unique(s, return_inverse=True)
                index = {v: i + 1 for i, v in enumerate(vocabularies[name])}
                lookup = np.array([index.get(str(u), 0) for u in uniq], dtype=np.int64)
                codes[:, j] = lookup[inverse.reshape(-1)]
            out[CATEGORICAL] = torch.from_numpy(codes)
        if self.numeric:
            mat = np.zeros((n, len(self.numeric)), dtype=np.float32)
            for j, name in enumerate(self.numeric):
                mean, std = stats[name]
                x = self._numbers(columns[name], name)
                mat[:, j] = standardise(x, mean, std, column=name, source="TabularPreprocessor")
            out[NUMERIC] = torch.from_numpy(mat)
        return out

    def unseen_counts(self, columns: Columns) -> tuple[dict[str, int], int]:
        """How many values of each categorical column are present (not missing) but outside the
        training vocabulary, so that they use the unknown bucket; and how many rows hold any.

        Rare training values cut by ``min_frequency`` count too (they share the bucket)."""
        vocabularies, _ = self._fitted_state()
        n = self._check_columns(columns, "unseen_counts")
        if not self.plain:
            from mtlkit.data.feature_encode import unseen_features

            return unseen_features(self, columns)
        per_column: dict[str, int] = {}
        any_row = np.zeros(n, dtype=bool)
        for name in self.categorical:
            s = _as_strings(columns[name])
            uniq, inverse = np.unique(s, return_inverse=True)
            known = set(vocabularies[name])
            flag = np.array([u not in known for u in uniq.tolist()], dtype=bool) & ~_missing(uniq)
            hit = flag[inverse.reshape(-1)] if flag.size else np.zeros(n, dtype=bool)
            per_column[name] = int(hit.sum())
            any_row |= hit
        return per_column, int(any_row.sum())

    def fit_transform(self, columns: Columns) -> dict[str, Tensor]:
        return self.fit(columns).transform(columns)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable fitted state (column lists, vocabularies, means and stds)."""
        vocabularies, stats = self._fitted_state()
        return {
            "type": "tabular",
            "categorical": list(self.categorical),
            "numeric": list(self.numeric),
            "min_frequency": self.min_frequency,
            **({"max_categories": self.max_categories} if self.max_categories is not None else {}),
            "vocabularies": {k: list(v) for k, v in vocabularies.items()},
            "stats": {k: [m, s] for k, (m, s) in stats.items()},
            **(
                {"features": self.features.to_state(), "list_lengths": dict(self.list_lengths)}
                if not self.plain
                else {}
            ),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> TabularPreprocessor:
        """Rebuild a fitted preprocessor from :meth:`state_dict` output."""
        try:
            feats = state.get("features")
            pre = cls(
                categorical=feats["categorical"] if feats else state["categorical"],
                numeric=feats["numeric"] if feats else state["numeric"],
                min_frequency=int(state.get("min_frequency", 1)),
                max_categories=state.get("max_categories"),
            )
            pre.vocabularies = {k: [str(x) for x in v] for k, v in state["vocabularies"].items()}
            pre.stats = {k: (float(v[0]), float(v[1])) for k, v in state["stats"].items()}
            pre.list_lengths = {k: int(v) for k, v in state.get("list_lengths", {}).items()}
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(
                f"Cannot restore a TabularPreprocessor from this state ({type(exc).__name__}: {exc}); "
                "it was not written by TabularPreprocessor.state_dict()."
            ) from None
        specs = pre.features
        missing = [
            f.name
            for f in specs.categorical
            if f.share is None and f.hash_buckets is None and f.name not in pre.vocabularies
        ] + [f.name for f in specs.numeric if f.bucketize is None and f.name not in pre.stats]
        missing += [f.name for f in specs.categorical if f.list and f.name not in pre.list_lengths]
        if missing:
            raise DataError(f"TabularPreprocessor state lacks the fitted values of columns {missing}.")
        return pre

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return (
            f"TabularPreprocessor(categorical={list(self.categorical)}, numeric={list(self.numeric)}, "
            f"min_frequency={self.min_frequency}"
            + (f", max_categories={self.max_categories}" if self.max_categories is not None else "")
            + f", {state})"
        )

    # ------------------------------------------------------------------ helpers
    def _fitted_state(self) -> tuple[dict[str, list[str]], dict[str, tuple[float, float]]]:
        if self.vocabularies is None or self.stats is None:
            raise DataError("TabularPreprocessor is not fitted; call fit(train_columns) first.")
        return self.vocabularies, self.stats

    def _check_columns(self, columns: Columns, where: str) -> int:
        if not isinstance(columns, Mapping):
            raise DataError(
                f"TabularPreprocessor.{where} takes a mapping {{column name: values}}; got {type(columns).__name__}."
            )
        wanted = [*self.categorical, *self.numeric]
        absent = [c for c in wanted if c not in columns]
        if absent:
            raise DataError(
                f"TabularPreprocessor.{where}: columns {absent} are missing from the data "
                f"(available: {', '.join(map(str, columns)) or 'none'})."
            )
        lengths = {c: len(columns[c]) for c in wanted}
        if len(set(lengths.values())) > 1:
            raise DataError(f"TabularPreprocessor.{where}: columns have different lengths {lengths}.")
        return next(iter(lengths.values())) if lengths else 0

    @staticmethod
    def _numbers(values: Sequence[Any] | np.ndarray, name: str) -> np.ndarray:
        arr = np.asarray(values)
        if arr.dtype.kind in "biuf":
            out = arr.astype(np.float64)
            first_non_finite(out, column=name, source="TabularPreprocessor")
            return out
        s = np.char.strip(arr.astype(str))
        s = np.where(_missing(s), "nan", s)
        try:
            out = s.astype(np.float64)
        except ValueError:
            bad = next(v for v in s.tolist() if not _is_float(v))
            raise DataError(
                f"TabularPreprocessor: numeric column {name!r} holds a non-numeric value {bad!r}; "
                "list the column as categorical, or clean the data."
            ) from None
        first_non_finite(out, column=name, source="TabularPreprocessor")
        return out


def _is_float(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True
