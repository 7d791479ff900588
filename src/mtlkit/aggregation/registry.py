"""Registry builders for the aggregators (``aggregator: {name: ..., **hyper-parameters}`` in configs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from mtlkit.aggregation._aligned_mtl import AlignedMTL
from mtlkit.aggregation._base import Mean, Sum
from mtlkit.aggregation._cagrad import CAGrad
from mtlkit.aggregation._db_mtl import DBMTL
from mtlkit.aggregation._graddrop import GradDrop
from mtlkit.aggregation._gradvac import GradVac
from mtlkit.aggregation._imtl import IMTLG
from mtlkit.aggregation._mgda import MGDA
from mtlkit.aggregation._nash_mtl import NashMTL
from mtlkit.aggregation._pcgrad import PCGrad
from mtlkit.aggregation._upgrad import UPGrad
from mtlkit.registries import AGGREGATORS
from mtlkit.tasks import Task

__all__ = ["AGGREGATORS"]


@AGGREGATORS.register("mean", cls=Mean)
def mean(tasks: Sequence[Task]) -> Mean:
    """Mean of the task gradients (linear scalarisation; the reference point)."""
    return Mean()


@AGGREGATORS.register("sum", cls=Sum)
def sum_(tasks: Sequence[Task]) -> Sum:
    """Sum of the task gradients (identical to backpropagating the summed loss)."""
    return Sum()


@AGGREGATORS.register("mgda", cls=MGDA)
def mgda(tasks: Sequence[Task]) -> MGDA:
    """MGDA: exact min-norm point of the convex hull of the task gradients (Sener & Koltun, NeurIPS 2018)."""
    return MGDA()


@AGGREGATORS.register("pcgrad", cls=PCGrad)
def pcgrad(tasks: Sequence[Task]) -> PCGrad:
    """PCGrad: project away conflicting components, random task order (Yu et al., NeurIPS 2020)."""
    return PCGrad()


@AGGREGATORS.register("gradvac", cls=GradVac)
def gradvac(tasks: Sequence[Task], *, beta: float = 0.01) -> GradVac:
    """GradVac: raise pairwise similarities to EMA targets, rate beta (Wang et al., ICLR 2021)."""
    return GradVac(beta=beta, num_tasks=len(tasks))


@AGGREGATORS.register("graddrop", cls=GradDrop)
def graddrop(tasks: Sequence[Task], *, leak: float = 0.0) -> GradDrop:
    """GradDrop: per-coordinate random sign dropout by sign purity (Chen et al., NeurIPS 2020)."""
    return GradDrop(leak=leak)


@AGGREGATORS.register("imtl_g", cls=IMTLG)
def imtl_g(tasks: Sequence[Task]) -> IMTLG:
    """IMTL-G: equal projections onto every unit task gradient, closed form (Liu et al., ICLR 2021)."""
    return IMTLG()


@AGGREGATORS.register("cagrad", cls=CAGrad)
def cagrad(tasks: Sequence[Task], *, c: float = 0.5, rescale: Literal[0, 1, 2] = 1) -> CAGrad:
    """CAGrad: best worst-case task improvement within c*||g0|| of the mean (Liu et al., NeurIPS 2021)."""
    return CAGrad(c=c, rescale=rescale)


@AGGREGATORS.register("nash_mtl", cls=NashMTL)
def nash_mtl(tasks: Sequence[Task], *, update_weights_every: int = 1, max_norm: float = 1.0) -> NashMTL:
    """Nash-MTL: Nash bargaining weights, (J J^T) a = 1/a by Newton (Navon et al., ICML 2022)."""
    return NashMTL(update_weights_every=update_weights_every, max_norm=max_norm)


@AGGREGATORS.register("aligned_mtl", cls=AlignedMTL)
def aligned_mtl(tasks: Sequence[Task], *, scale_mode: Literal["min", "median", "rmse"] = "min") -> AlignedMTL:
    """Aligned-MTL: condition-number-one alignment of the task gradients (Senushkin et al., CVPR 2023)."""
    return AlignedMTL(scale_mode=scale_mode)


@AGGREGATORS.register("upgrad", cls=UPGrad)
def upgrad(tasks: Sequence[Task]) -> UPGrad:
    """UPGrad: mean of the projections onto the dual cone, exact QP (Quinton & Rey, 2024)."""
    return UPGrad()


@AGGREGATORS.register("db_mtl", cls=DBMTL)
def db_mtl(tasks: Sequence[Task], *, beta: float = 0.9, sigma: float = 0.0) -> DBMTL:
    """DB-MTL: log losses + EMA gradients rescaled to the largest norm (Lin et al., 2023)."""
    return DBMTL(beta=beta, sigma=sigma, num_tasks=len(tasks))
