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

__all__ = ["CATEGORICAL", "NUMERIC", "FeatureSchema", "InputSpec", "describe_input_spec"]

CATEGORICAL = "categorical"
"""Key of the ``(N, C)`` long tensor of category indices in tabular inputs (0 = unknown)."""
NUMERIC = "numeric"
"""Key of the ``(N, D)`` float tensor of standardised numeric columns in tabular inputs."""


@dataclass(frozen=True, slots=True)
class FeatureSchema:
    """Columns of tabular inputs.

    Attributes:
        categorical: categorical column names, in the column order of ``inputs["categorical"]``.
        cardinalities: number of embedding rows per categorical column, index 0 (the unknown
            bucket) included, so valid indices are ``0 .. cardinality - 1``.
        numeric: numeric column names, in the column order of ``inputs["numeric"]``.
    """

    categorical: tuple[str, ...] = ()
    cardinalities: tuple[int, ...] = ()
    numeric: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "categorical", tuple(str(c) for c in self.categorical))
        object.__setattr__(self, "cardinalities", tuple(int(c) for c in self.cardinalities))
        object.__setattr__(self, "numeric", tuple(str(c) for c in self.numeric))
        if len(self.categorical) != len(self.cardinalities):
            raise ValueError(
                f"FeatureSchema needs one cardinality per categorical column; got {len(self.categorical)} "
                f"columns and {len(self.cardinalities)} cardinalities."
            )
        if any(c < 1 for c in self.cardinalities):
            raise ValueError(f"FeatureSchema cardinalities must be >= 1; got {list(self.cardinalities)}.")
        names = [*self.categorical, *self.numeric]
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
        """Plain lists, for JSON/YAML and checkpoints."""
        return {
            "categorical": list(self.categorical),
            "cardinalities": list(self.cardinalities),
            "numeric": list(self.numeric),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[Any]]) -> FeatureSchema:
        return cls(
            tuple(data.get("categorical", ())),
            tuple(data.get("cardinalities", ())),
            tuple(data.get("numeric", ())),
        )


InputSpec = int | tuple[int, ...] | FeatureSchema
"""A flat width, a per-sample tensor shape, or a tabular :class:`FeatureSchema`."""


def describe_input_spec(spec: InputSpec | None) -> str:
    """A short human description, for error messages."""
    if isinstance(spec, FeatureSchema):
        return f"tabular inputs ({spec.num_categorical} categorical, {spec.num_numeric} numeric columns)"
    if isinstance(spec, tuple):
        return f"tensor inputs of shape (N, {', '.join(map(str, spec))})"
    if isinstance(spec, int):
        return f"feature vectors of width {spec}"
    return "inputs of unknown shape"
