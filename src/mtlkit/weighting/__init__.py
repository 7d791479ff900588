"""Loss-level balancing: task losses ``[T]`` -> one scalar objective."""

from mtlkit.registries import WEIGHTINGS
from mtlkit.weighting._base import LossWeighting, WeightedLoss
from mtlkit.weighting.basic import EqualWeighting, StaticWeighting
from mtlkit.weighting.dynamic import DWA, GLS, IMTLL, RLW
from mtlkit.weighting.famo import FAMO
from mtlkit.weighting.gradnorm import GradNorm
from mtlkit.weighting.uncertainty import UncertaintyWeighting

__all__ = [
    "DWA",
    "FAMO",
    "GLS",
    "IMTLL",
    "RLW",
    "WEIGHTINGS",
    "EqualWeighting",
    "GradNorm",
    "LossWeighting",
    "StaticWeighting",
    "UncertaintyWeighting",
    "WeightedLoss",
]
