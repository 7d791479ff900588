"""Training: the Trainer, training schedules, early stopping and checkpoints."""

from mtlkit.training.checkpoint import Checkpointer, load_checkpoint, save_checkpoint
from mtlkit.training.early_stopping import EarlyStopping
from mtlkit.training.loggers import EpochLogger, TensorBoardLogger
from mtlkit.training.schedules import (
    Alternating,
    EpochPlan,
    Joint,
    Mixed,
    Sampling,
    ScheduledStep,
    TaskSchedule,
)
from mtlkit.training.source import PerTaskSources, TrainSource, as_source
from mtlkit.training.task_data import PerTaskData, mixed_dataset
from mtlkit.training.trainer import Trainer, TrainingDivergedError, default_device

__all__ = [
    "Alternating",
    "Checkpointer",
    "EarlyStopping",
    "EpochLogger",
    "EpochPlan",
    "Joint",
    "Mixed",
    "PerTaskData",
    "PerTaskSources",
    "Sampling",
    "ScheduledStep",
    "TaskSchedule",
    "TensorBoardLogger",
    "TrainSource",
    "Trainer",
    "TrainingDivergedError",
    "as_source",
    "default_device",
    "load_checkpoint",
    "mixed_dataset",
    "save_checkpoint",
]
