"""Multi-task datasets, batching and the synthetic generators."""

from mtlkit.data.batch import Batch, Inputs, as_batch, collate
from mtlkit.data.dataset import MultiTaskDataset, TensorBatchLoader
from mtlkit.data.preprocessing import TabularPreprocessor
from mtlkit.data.schema import FeatureSchema, InputSpec
from mtlkit.data.splits import DataSplits
from mtlkit.data.synthetic import pearson, synthetic_correlation, synthetic_correlation_splits

__all__ = [
    "Batch",
    "DataSplits",
    "FeatureSchema",
    "InputSpec",
    "Inputs",
    "MultiTaskDataset",
    "TabularPreprocessor",
    "TensorBatchLoader",
    "as_batch",
    "collate",
    "pearson",
    "synthetic_correlation",
    "synthetic_correlation_splits",
]
