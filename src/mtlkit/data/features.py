"""The feature specification of tabular data: one entry per column, for YAML and Python alike.

A column is a plain name (a learned vocabulary, or a standardised number, as before) or a
mapping with options::

    categorical:
      - device                                              # vocabulary (min_frequency, max_categories)
      - {name: user_id, hash_buckets: 1000000, dim: 16}     # stable hash into 1e6 buckets, 16-wide
      - {name: item_id, dim: 16}
      - {name: history, list: true, delimiter: '|', pooling: mean, share: item_id}
    numeric:
      - price                                               # standardised
      - {name: watch, transform: log1p}                     # log1p, then standardised
      - {name: age, bucketize: [18, 25, 35, 50]}            # embedded bins

See :class:`CategoricalFeature` and :class:`NumericFeature` for every option and
``docs/datasets.md`` for the rules.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError, model_validator

from mtlkit.errors import DataError

__all__ = [
    "CategoricalFeature",
    "FeatureSpecs",
    "NumericFeature",
    "auto_dim",
    "feature_names",
    "parse_features",
]

_LIST_OPTIONS = ("delimiter", "pooling", "max_length")


def auto_dim(cardinality: int) -> int:
    """The default embedding width of a table with ``cardinality`` rows (``embedding_dim: auto``):
    ``min(64, round(6 * cardinality ** 0.25))``, at least 2 (the rule of thumb of the
    Deep & Cross and TensorFlow feature-column guides)."""
    return max(2, min(64, round(6 * cardinality**0.25)))


class CategoricalFeature(BaseModel):
    """One categorical column.

    Attributes:
        name: the column.
        hash_buckets: hash the values into this many buckets (stable 64-bit FNV-1a, see
            :mod:`mtlkit.data.hashing`) instead of learning a vocabulary; never fails on new values.
        dim: the embedding width of this column's table (default: the backbone's ``embedding_dim``).
        share: look the values up in the table (vocabulary or hash, and embeddings) of this other
            categorical column, e.g. a history of item ids sharing ``item_id``'s table.
        list: the cell holds several values (a Parquet list, or a ``delimiter``-separated string in
            CSV), pooled into one embedding with ``pooling``.
        delimiter: list columns in CSV: the separator of the values (default ``|``).
        pooling: list columns: ``mean`` (default), ``sum`` or ``max`` of the values' embeddings.
        max_length: list columns: at most this many values per row are read (the first ones).
        min_frequency: this column's vocabulary keeps values seen at least this often (default: the
            dataset's ``min_frequency``).
        max_categories: this column's vocabulary keeps at most this many values, the most frequent
            (default: the dataset's ``max_categories``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    hash_buckets: PositiveInt | None = None
    dim: PositiveInt | None = None
    share: str | None = None
    list: bool = False
    delimiter: str = "|"
    pooling: Literal["mean", "sum", "max"] = "mean"
    max_length: PositiveInt = 50
    min_frequency: PositiveInt | None = None
    max_categories: PositiveInt | None = None

    @model_validator(mode="after")
    def _check(self) -> CategoricalFeature:
        vocab = [k for k in ("min_frequency", "max_categories") if getattr(self, k) is not None]
        if vocab and self.hash_buckets is not None:
            raise ValueError(f"{', '.join(vocab)} apply to vocabularies; a hashed column has none")
        if not self.list:
            given = [k for k in _LIST_OPTIONS if k in self.model_fields_set]
            if given:
                raise ValueError(
                    f"{', '.join(given)} apply to list columns only; add list: true or remove them"
                )
        if self.list and not self.delimiter:
            raise ValueError("delimiter must be a non-empty string")
        if self.share is not None:
            given = [
                k
                for k in ("hash_buckets", "dim", "min_frequency", "max_categories")
                if getattr(self, k) is not None
            ]
            if given:
                raise ValueError(
                    f"a column that shares another's table takes its {', '.join(given)} from it; remove "
                    f"{', '.join(given)} (or set them on {self.share!r})"
                )
            if self.share == self.name:
                raise ValueError("share names the column itself; name another categorical column")
        return self

    @property
    def plain(self) -> bool:
        return not self.model_fields_set - {"name"}


class NumericFeature(BaseModel):
    """One numeric column.

    Attributes:
        name: the column.
        transform: ``standardise`` (default: ``(x - mean) / std`` with training statistics) or
            ``log1p`` (``log(1 + x)``, then standardised; values must be > -1).
        bucketize: ascending bin boundaries: the column becomes a categorical input with
            ``len(bucketize) + 1`` embedded bins, ``[-inf, b0), [b0, b1), ..., [b_last, inf)``,
            plus index 0 for missing values.
        dim: bucketized columns: the embedding width (default: the backbone's ``embedding_dim``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    transform: Literal["standardise", "standardize", "log1p"] = "standardise"
    bucketize: tuple[float, ...] | None = None
    dim: PositiveInt | None = None

    @model_validator(mode="after")
    def _check(self) -> NumericFeature:
        if self.bucketize is not None:
            b = list(self.bucketize)
            if not b:
                raise ValueError("bucketize needs at least one boundary")
            if any(x != x or abs(x) == float("inf") for x in b):
                raise ValueError(f"bucketize boundaries must be finite numbers; got {b}")
            if any(x >= y for x, y in itertools.pairwise(b)):
                raise ValueError(f"bucketize boundaries must be strictly increasing; got {b}")
            if self.transform != "standardise":
                raise ValueError("a bucketized column is not transformed; remove transform or bucketize")
        elif self.dim is not None:
            raise ValueError(
                "dim applies to bucketized columns only (they are embedded); add bucketize or remove dim"
            )
        return self

    @property
    def plain(self) -> bool:
        return not self.model_fields_set - {"name"}


class FeatureSpecs(BaseModel):
    """The parsed specification of every feature column (see :func:`parse_features`)."""

    model_config = ConfigDict(frozen=True)

    categorical: tuple[CategoricalFeature, ...] = ()
    numeric: tuple[NumericFeature, ...] = ()

    @property
    def plain(self) -> bool:
        """Every column a plain name (the behaviour and saved state of before feature specs)."""
        return all(f.plain for f in (*self.categorical, *self.numeric))

    def cat(self, name: str) -> CategoricalFeature:
        return next(f for f in self.categorical if f.name == name)

    def owner(self, name: str) -> CategoricalFeature:
        """The column whose table (vocabulary or hash, and embeddings) ``name`` uses."""
        f = self.cat(name)
        return self.cat(f.share) if f.share is not None else f

    def to_state(self) -> dict[str, Any]:
        return {
            "categorical": [f.model_dump(exclude_defaults=True) for f in self.categorical],
            "numeric": [
                {
                    **f.model_dump(exclude_defaults=True),
                    **({"bucketize": list(f.bucketize)} if f.bucketize else {}),
                }
                for f in self.numeric
            ],
        }


def _entry(raw: Any, cls: type[BaseModel], where: str) -> Any:
    if isinstance(raw, cls):
        return raw
    if isinstance(raw, str):
        return cls(name=raw)
    if isinstance(raw, BaseModel):
        raw = raw.model_dump(exclude_defaults=True)
    if not isinstance(raw, Mapping):
        raise DataError(f"{where}: must be a column name or a mapping {{name: ..., ...}}; got {raw!r}.")
    try:
        return cls.model_validate(dict(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        name = raw.get("name", "?")
        msg = err["msg"].removeprefix("Value error, ")
        allowed = ", ".join(cls.model_fields)
        hint = f" Allowed keys: {allowed}." if err["type"] == "extra_forbidden" else ""
        raise DataError(f"{where} ({name!r}){'.' + loc if loc else ''}: {msg}.{hint}") from None


def parse_features(
    categorical: Sequence[Any] = (), numeric: Sequence[Any] = (), *, who: str = "tabular"
) -> FeatureSpecs:
    """Column names or option mappings -> :class:`FeatureSpecs`, checked as a whole (a shared table
    must be another, non-sharing categorical column).

    Raises:
        DataError: a bad entry, naming its position, its column and the fix.
    """
    if isinstance(categorical, (str, Mapping)) or isinstance(numeric, (str, Mapping)):
        raise DataError(f"{who}: categorical and numeric must be lists of columns, e.g. categorical: [city].")
    cats = tuple(_entry(c, CategoricalFeature, f"{who}: categorical[{i}]") for i, c in enumerate(categorical))
    nums = tuple(_entry(c, NumericFeature, f"{who}: numeric[{i}]") for i, c in enumerate(numeric))
    by_name = {f.name: f for f in cats}
    for f in cats:
        if f.share is None:
            continue
        owner = by_name.get(f.share)
        if owner is None:
            raise DataError(
                f"{who}: categorical column {f.name!r} shares the table of {f.share!r}, which is not a categorical "
                f"column; share must name one of {[c.name for c in cats if c.name != f.name]}."
            )
        if owner.share is not None:
            raise DataError(
                f"{who}: categorical column {f.name!r} shares the table of {f.share!r}, which itself shares "
                f"{owner.share!r}'s; write share: {owner.share}."
            )
    return FeatureSpecs(categorical=cats, numeric=nums)


def feature_names(entries: Sequence[Any]) -> list[str]:
    """The column names of feature entries (names, mappings or specs), unchecked."""
    out = []
    for e in entries:
        if isinstance(e, str):
            out.append(e)
        elif isinstance(e, BaseModel):
            out.append(str(getattr(e, "name", e)))
        elif isinstance(e, Mapping) and "name" in e:
            out.append(str(e["name"]))
        else:
            out.append(str(e))
    return out
