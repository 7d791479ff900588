"""Multi-task datasets, batching, the synthetic generators and the real-data loaders."""

from mtlkit.data import cache
from mtlkit.data.batch import Batch, Inputs, as_batch, collate
from mtlkit.data.census import census_income, read_census
from mtlkit.data.ctr import ali_ccp_sample, aliexpress_sample, ctr_cvr_targets, ctr_cvr_tasks
from mtlkit.data.dataset import BatchAugment, MultiTaskDataset, TensorBatchLoader
from mtlkit.data.images import RandomFlipCrop, cifar10, mnist_fashion, read_cifar_batch, read_idx
from mtlkit.data.impressions import ImpressionLog, impression_log
from mtlkit.data.multilabel import multilabel, read_arff
from mtlkit.data.preprocessing import TabularPreprocessor, UnknownCategoryDropout, UnknownCategoryWarning
from mtlkit.data.schema import FeatureSchema, InputSpec
from mtlkit.data.splits import DataSplits
from mtlkit.data.streaming import StreamLoader, TabularStream, tabular_stream
from mtlkit.data.synthetic import pearson, synthetic_correlation, synthetic_correlation_splits
from mtlkit.data.synthetic_ctr import synthetic_ctr_cvr, synthetic_ctr_cvr_splits
from mtlkit.data.synthetic_ctr_ids import synthetic_ctr_cvr_ids, synthetic_ctr_cvr_ids_splits
from mtlkit.data.tabular import TaskColumn, read_table, tabular
from mtlkit.data.youtube import YoutubeLog, youtube_log, youtube_log_splits

__all__ = [
    "Batch",
    "BatchAugment",
    "DataSplits",
    "FeatureSchema",
    "ImpressionLog",
    "InputSpec",
    "Inputs",
    "MultiTaskDataset",
    "RandomFlipCrop",
    "StreamLoader",
    "TabularPreprocessor",
    "TabularStream",
    "TaskColumn",
    "TensorBatchLoader",
    "UnknownCategoryDropout",
    "UnknownCategoryWarning",
    "YoutubeLog",
    "ali_ccp_sample",
    "aliexpress_sample",
    "as_batch",
    "cache",
    "census_income",
    "cifar10",
    "collate",
    "ctr_cvr_targets",
    "ctr_cvr_tasks",
    "impression_log",
    "mnist_fashion",
    "multilabel",
    "pearson",
    "read_arff",
    "read_census",
    "read_cifar_batch",
    "read_idx",
    "read_table",
    "synthetic_correlation",
    "synthetic_correlation_splits",
    "synthetic_ctr_cvr",
    "synthetic_ctr_cvr_ids",
    "synthetic_ctr_cvr_ids_splits",
    "synthetic_ctr_cvr_splits",
    "tabular",
    "tabular_stream",
    "youtube_log",
    "youtube_log_splits",
]
