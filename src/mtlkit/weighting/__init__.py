"""Loss-level balancing: task losses ``[T]`` -> one scalar objective."""

from mtlkit.registries import WEIGHTINGS
from mtlkit.weighting._base import LossWeighting, WeightedLoss
from mtlkit.weighting.basic import EqualWeighting, StaticWeighting
from mtlkit.weighting.uncertainty import UncertaintyWeighting

__all__ = [
    "WEIGHTINGS",
    "EqualWeighting",
    "LossWeighting",
    "StaticWeighting",
    "UncertaintyWeighting",
    "WeightedLoss",
]
