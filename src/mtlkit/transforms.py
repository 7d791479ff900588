"""Target transforms of regression tasks (``Task(transform=...)``, ``transform: log1p`` in YAML).

The model is trained on the transformed labels ``z = f(y)``; its outputs are mapped back with
``f⁻¹`` wherever predictions leave mtlkit (:meth:`mtlkit.Task.activate`: ``predict``, ``export``
and the metrics), so predictions and metrics (MSE, MAE, ...) are on the label's original scale.
The training loss is on the transformed scale.

- ``log1p``: ``z = log(1 + y)``, ``y = exp(z) - 1``; labels must be > -1.
- ``standardise``: ``z = (y - mean) / std``, ``y = z·std + mean``, with ``mean``/``std`` fitted on
  the training labels (:meth:`TargetTransform.fit`; the tabular builder does it) and saved with the
  run (``signature.json``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["TRANSFORM_NAMES", "TargetTransform", "target_transform"]

TRANSFORM_NAMES = ("log1p", "standardise")
_ALIASES = {"standardize": "standardise", "log1p": "log1p", "standardise": "standardise"}


@dataclass(frozen=True, slots=True)
class TargetTransform:
    """A label transform and its inverse; ``standardise`` carries its fitted ``mean`` and ``std``."""

    name: str
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.name not in TRANSFORM_NAMES:
            raise ValueError(
                f"Unknown target transform {self.name!r}; choices: {', '.join(TRANSFORM_NAMES)}."
            )
        if self.name == "standardise":
            if self.mean is None or self.std is None:
                raise ValueError(
                    "The standardise transform needs the training labels' mean and std: "
                    "TargetTransform.fit('standardise', labels), or {name: standardise, mean: m, std: s}."
                )
            if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
                raise ValueError(
                    f"standardise needs a finite mean and a std > 0; got mean={self.mean!r}, std={self.std!r} "
                    "(a constant label cannot be standardised)."
                )

    @classmethod
    def fit(cls, name: str, labels: Tensor | Any) -> TargetTransform:
        """The transform ``name`` fitted on ``labels`` (NaN = missing; ``std`` is the population std)."""
        name = _ALIASES.get(str(name).lower(), str(name))
        if name != "standardise":
            return cls(name)
        y = torch.as_tensor(labels, dtype=torch.float64).reshape(-1)
        y = y[~torch.isnan(y)]
        if y.numel() == 0:
            raise ValueError("standardise: no training label to fit the mean and std on.")
        mean = float(y.mean())
        std = float(((y - mean) ** 2).mean().sqrt())
        if not std > 0:
            raise ValueError(
                f"standardise: the training labels are all {mean!r}; a constant cannot be standardised."
            )
        return cls(name, mean, std)

    def forward(self, y: Tensor) -> Tensor:
        """Label -> training scale."""
        if self.name == "log1p":
            return torch.log1p(y)
        assert self.mean is not None
        assert self.std is not None
        return (y - self.mean) / self.std

    def inverse(self, z: Tensor) -> Tensor:
        """Training scale -> label scale (traceable: used in exported graphs)."""
        if self.name == "log1p":
            # expm1 from operations ONNX has (it has no expm1): near 0, expm1(z) = 2t / (1 - t) with
            # t = tanh(z/2) keeps the digits that exp(z) - 1 would cancel; elsewhere exp(z) - 1
            t = torch.tanh(z / 2)
            return torch.where(z.abs() < 0.5, 2 * t / (1 - t), torch.exp(z) - 1)
        assert self.mean is not None
        assert self.std is not None
        return z * self.std + self.mean

    def check(self, y: Tensor) -> str | None:
        """A problem with labels ``y`` (NaN = missing) for this transform, or None."""
        if self.name == "log1p":
            present = y[~torch.isnan(y)]
            bad = present <= -1
            if bad.any():
                return f"log1p needs labels > -1; got {present[bad][0].item()!r}"
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.name == "standardise":
            out |= {"mean": self.mean, "std": self.std}
        return out


def target_transform(spec: str | Mapping[str, Any] | TargetTransform, *, task: str) -> TargetTransform:
    """A :class:`TargetTransform` from ``"log1p"``, ``{"name": "standardise", "mean": m, "std": s}`` or one."""
    if isinstance(spec, TargetTransform):
        return spec
    try:
        if isinstance(spec, str):
            return TargetTransform(_ALIASES.get(spec.lower(), spec))
        if isinstance(spec, Mapping) and "name" in spec:
            extra = sorted(set(spec) - {"name", "mean", "std"})
            if extra:
                raise ValueError(f"unknown key {extra[0]!r} (keys: name, mean, std)")
            name = _ALIASES.get(str(spec["name"]).lower(), str(spec["name"]))
            return TargetTransform(name, spec.get("mean"), spec.get("std"))
    except ValueError as exc:
        raise ValueError(f"Task {task!r}: transform: {exc}") from None
    raise ValueError(
        f"Task {task!r}: transform must be one of {', '.join(TRANSFORM_NAMES)} or {{name: ..., mean, std}}; got {spec!r}."
    )
