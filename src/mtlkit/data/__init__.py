"""Multi-task datasets, batching and the synthetic generators."""

from mtlkit.data.batch import Batch, Inputs, as_batch, collate
from mtlkit.data.ctr import ali_ccp_sample, aliexpress_sample, ctr_cvr_targets, ctr_cvr_tasks
from mtlkit.data.dataset import MultiTaskDataset, TensorBatchLoader
from mtlkit.data.preprocessing import TabularPreprocessor
from mtlkit.data.schema import FeatureSchema, InputSpec
from mtlkit.data.splits import DataSplits
from mtlkit.data.synthetic import pearson, synthetic_correlation, synthetic_correlation_splits
from mtlkit.data.synthetic_ctr import synthetic_ctr_cvr, synthetic_ctr_cvr_splits

__all__ = [
    "Batch",
    "DataSplits",
    "FeatureSchema",
    "InputSpec",
    "Inputs",
    "MultiTaskDataset",
    "TabularPreprocessor",
    "TensorBatchLoader",
    "ali_ccp_sample",
    "aliexpress_sample",
    "as_batch",
    "collate",
    "ctr_cvr_targets",
    "ctr_cvr_tasks",
    "pearson",
    "synthetic_correlation",
    "synthetic_correlation_splits",
    "synthetic_ctr_cvr",
    "synthetic_ctr_cvr_splits",
]
