"""Per-task metrics with missing-label masking, on top of torchmetrics."""

from mtlkit.metrics.collection import MultiTaskMetrics, higher_is_better
from mtlkit.metrics.defaults import AUROC, LogLoss, default_metrics
from mtlkit.metrics.functional import delta_m, delta_m_per_task, relative_improvements, select_metrics
from mtlkit.metrics.ranking import group_auc, group_ndcg

__all__ = [
    "AUROC",
    "LogLoss",
    "MultiTaskMetrics",
    "default_metrics",
    "delta_m",
    "delta_m_per_task",
    "group_auc",
    "group_ndcg",
    "higher_is_better",
    "relative_improvements",
    "select_metrics",
]
