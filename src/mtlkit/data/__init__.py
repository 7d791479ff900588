"""Multi-task datasets, batching and the synthetic generators."""

from mtlkit.data.batch import Batch, Inputs, as_batch, collate
from mtlkit.data.dataset import MultiTaskDataset, TensorBatchLoader
from mtlkit.data.synthetic import pearson, synthetic_correlation

__all__ = [
    "Batch",
    "Inputs",
    "MultiTaskDataset",
    "TensorBatchLoader",
    "as_batch",
    "collate",
    "pearson",
    "synthetic_correlation",
]
