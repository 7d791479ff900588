"""What a model's inputs look like: the ``input_spec`` that datasets publish and backbones read.

An input spec is one of

- ``int``: a flat feature vector of that width (``(N, D)`` tensors);
- ``tuple[int, ...]``: a per-sample tensor shape such as an image ``(C, H, W)``;
- :class:`FeatureSchema`: named tabular inputs, ``{"categorical": LongTensor (N, C),
  "numeric": FloatTensor (N, D)}``, as produced by
  :class:`~mtlkit.data.preprocessing.TabularPreprocessor`.

Backbones (``mtlkit.models.backbones``) turn an input spec into a module that maps the inputs to
one ``(N, F)`` feature tensor; architectures are built on ``F``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CATEGORICAL",
    "LIST_PREFIX",
    "NUMERIC",
    "FeatureSchema",
    "InputSpec",
    "ListInput",
    "describe_input_spec",
]

CATEGORICAL = "categorical"
"""Key of the ``(N, C)`` long tensor of category indices in tabular inputs (0 = unknown)."""
NUMERIC = "numeric"
"""Key of the ``(N, D)`` float tensor of standardised numeric columns in tabular inputs."""
LIST_PREFIX = "list:"
"""Key prefix of list-valued columns: ``inputs["list:<column>"]`` is an ``(N, L)`` long tensor of
category indices, -1 padding the rows with fewer than ``L`` values."""


@dataclass(frozen=True, slots=True)
class ListInput:
    """A list-valued categorical column, pooled into one embedding.

    Attributes:
        name: the column; its input is ``inputs["list:<name>"]``.
        cardinality: rows of its table (index 0 the unknown bucket).
        length: ``L``, values per row (-1 pads shorter rows).
        pooling: ``mean``, ``sum`` or ``max``.
        dim: its embedding width (0: the backbone's default).
        table: the column whose table it shares ("" : its own).
    """

    name: str
    cardinality: int
    length: int
    pooling: str = "mean"
    dim: int = 0
    table: str = ""

    @property
    def key(self) -> str:
        return LIST_PREFIX + self.name


@dataclass(frozen=True, slots=True)
class FeatureSchema:
    """Columns of tabular inputs.

    Attributes:
        categorical: categorical column names, in the column order of ``inputs["categorical"]``.
        cardinalities: number of embedding rows per categorical column, index 0 (the unknown
            bucket) included, so valid indices are ``0 .. cardinality - 1``.
        numeric: numeric column names, in the column order of ``inputs["numeric"]``.
        dims: per categorical column its embedding width, 0 for the backbone's default (empty:
            all default).
        tables: per categorical column the column whose table it shares, "" for its own (empty:
            every column its own).
        lists: the list-valued columns (:class:`ListInput`).
    """

    categorical: tuple[str, ...] = ()
    cardinalities: tuple[int, ...] = ()
    numeric: tuple[str, ...] = ()
    dims: tuple[int, ...] = ()
    tables: tuple[str, ...] = ()
    lists: tuple[ListInput, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "categorical", tuple(str(c) for c in self.categorical))
        object.__setattr__(self, "cardinalities", tuple(int(c) for c in self.cardinalities))
        object.__setattr__(self, "numeric", tuple(str(c) for c in self.numeric))
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        object.__setattr__(self, "tables", tuple(str(t) for t in self.tables))
        object.__setattr__(
            self, "lists", tuple(x if isinstance(x, ListInput) else ListInput(**x) for x in self.lists)
        )
        for what, seq in (("dims", self.dims), ("tables", self.tables)):
            if seq and len(seq) != len(self.categorical):
                raise ValueError(
                    f"FeatureSchema {what} needs one entry per categorical column; got {len(seq)}."
                )
        if len(self.categorical) != len(self.cardinalities):
            raise ValueError(
                f"FeatureSchema needs one cardinality per categorical column; got {len(self.categorical)} "
                f"columns and {len(self.cardinalities)} cardinalities."
            )
        if any(c < 1 for c in self.cardinalities):
            raise ValueError(f"FeatureSchema cardinalities must be >= 1; got {list(self.cardinalities)}.")
        names = [*self.categorical, *self.numeric, *(x.name for x in self.lists)]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"FeatureSchema column names must be unique; got duplicates {dup}.")
        if not names:
            raise ValueError("FeatureSchema needs at least one categorical or numeric column.")

    @property
    def num_categorical(self) -> int:
        return len(self.categorical)

    @property
    def num_numeric(self) -> int:
        return len(self.numeric)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, for JSON/YAML and checkpoints (the feature-spec keys only when used)."""
        out: dict[str, Any] = {
            "categorical": list(self.categorical),
            "cardinalities": list(self.cardinalities),
            "numeric": list(self.numeric),
        }
        if any(self.dims):
            out["dims"] = list(self.dims)
        if any(self.tables):
            out["tables"] = list(self.tables)
        if self.lists:
            out["lists"] = [
                {
                    "name": x.name,
                    "cardinality": x.cardinality,
                    "length": x.length,
                    "pooling": x.pooling,
                    "dim": x.dim,
                    "table": x.table,
                }
                for x in self.lists
            ]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[Any]]) -> FeatureSchema:
        return cls(
            tuple(data.get("categorical", ())),
            tuple(data.get("cardinalities", ())),
            tuple(data.get("numeric", ())),
            tuple(data.get("dims", ())),
            tuple(data.get("tables", ())),
            tuple(data.get("lists", ())),
        )


InputSpec = int | tuple[int, ...] | FeatureSchema
"""A flat width, a per-sample tensor shape, or a tabular :class:`FeatureSchema`."""


def describe_input_spec(spec: InputSpec | None) -> str:
    """A short human description, for error messages."""
    if isinstance(spec, FeatureSchema):
        lists = f", {len(spec.lists)} list" if spec.lists else ""
        return (
            f"tabular inputs ({spec.num_categorical} categorical, {spec.num_numeric} numeric{lists} columns)"
        )
    if isinstance(spec, tuple):
        return f"tensor inputs of shape (N, {', '.join(map(str, spec))})"
    if isinstance(spec, int):
        return f"feature vectors of width {spec}"
    return "inputs of unknown shape"
