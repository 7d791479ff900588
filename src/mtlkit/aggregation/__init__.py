"""Gradient aggregation: per-task gradients (Jacobian ``[T, P]``) -> one update ``[P]``.

Every class is callable as ``aggregator(jacobian)``; :func:`mtlkit.backward` builds the
Jacobian (w.r.t. the shared parameters or the shared representation) and writes the result.
The Gramian-based methods (MGDA, UPGrad, IMTL-G, CAGrad, Nash-MTL, Aligned-MTL) are a pure
:class:`GramianWeighting` (``[T, T]`` Gramian -> ``[T]`` weights, solvers in ``_solvers``) wrapped
by :class:`GramianWeightedAggregator`; constructor arguments are checked in ``_checks``.
See ``docs/aggregation.md`` for the methods, their formulas, costs and departures.
"""

from mtlkit.aggregation._aligned_mtl import AlignedMTL
from mtlkit.aggregation._base import Aggregation, Aggregator, Mean, Sum, gramian
from mtlkit.aggregation._cagrad import CAGrad
from mtlkit.aggregation._db_mtl import DBMTL
from mtlkit.aggregation._graddrop import GradDrop
from mtlkit.aggregation._gradvac import GradVac
from mtlkit.aggregation._imtl import IMTLG
from mtlkit.aggregation._mgda import MGDA
from mtlkit.aggregation._nash_mtl import NashMTL
from mtlkit.aggregation._pcgrad import PCGrad
from mtlkit.aggregation._upgrad import UPGrad
from mtlkit.aggregation._weighting import GramianWeightedAggregator, GramianWeighting
from mtlkit.aggregation.registry import AGGREGATORS

__all__ = [
    "AGGREGATORS",
    "DBMTL",
    "IMTLG",
    "MGDA",
    "Aggregation",
    "Aggregator",
    "AlignedMTL",
    "CAGrad",
    "GradDrop",
    "GradVac",
    "GramianWeightedAggregator",
    "GramianWeighting",
    "Mean",
    "NashMTL",
    "PCGrad",
    "Sum",
    "UPGrad",
    "gramian",
]
