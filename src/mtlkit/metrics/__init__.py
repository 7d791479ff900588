"""Per-task metrics with missing-label masking, on top of torchmetrics."""

from mtlkit.metrics.collection import MultiTaskMetrics, higher_is_better
from mtlkit.metrics.defaults import AUROC, LogLoss, default_metrics
from mtlkit.metrics.functional import delta_m, delta_m_per_task, relative_improvements, select_metrics
from mtlkit.metrics.ranking import group_auc, group_auc_stats, group_ndcg
from mtlkit.metrics.ranking_metrics import Calibration, ExpectedCalibrationError, GroupAUC, NormalizedEntropy
from mtlkit.metrics.select import parse_metrics

__all__ = [
    "AUROC",
    "Calibration",
    "ExpectedCalibrationError",
    "GroupAUC",
    "LogLoss",
    "MultiTaskMetrics",
    "NormalizedEntropy",
    "default_metrics",
    "delta_m",
    "delta_m_per_task",
    "group_auc",
    "group_auc_stats",
    "group_ndcg",
    "higher_is_better",
    "parse_metrics",
    "relative_improvements",
    "select_metrics",
]
