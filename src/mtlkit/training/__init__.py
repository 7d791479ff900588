"""Training: the Trainer, early stopping and checkpoints."""

from mtlkit.training.checkpoint import load_checkpoint, save_checkpoint
from mtlkit.training.early_stopping import EarlyStopping
from mtlkit.training.loggers import EpochLogger, TensorBoardLogger
from mtlkit.training.trainer import Trainer, TrainingDivergedError, default_device

__all__ = [
    "EarlyStopping",
    "EpochLogger",
    "TensorBoardLogger",
    "Trainer",
    "TrainingDivergedError",
    "default_device",
    "load_checkpoint",
    "save_checkpoint",
]
