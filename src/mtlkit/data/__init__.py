"""Multi-task datasets, batching and the synthetic generators."""

from mtlkit.data.batch import Batch, Inputs, as_batch, collate
from mtlkit.data.dataset import MultiTaskDataset, TensorBatchLoader
from mtlkit.data.splits import DataSplits
from mtlkit.data.synthetic import pearson, synthetic_correlation, synthetic_correlation_splits

__all__ = [
    "Batch",
    "DataSplits",
    "Inputs",
    "MultiTaskDataset",
    "TensorBatchLoader",
    "as_batch",
    "collate",
    "pearson",
    "synthetic_correlation",
    "synthetic_correlation_splits",
]
