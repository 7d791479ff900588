"""mtlkit: multi-task learning on PyTorch.

Architectures, loss balancing and training schemes that compose freely::

    import mtlkit
    data = mtlkit.data.synthetic_correlation(10_000, correlation=0.5)
    model = mtlkit.models.mmoe(100, data.tasks)
    trainer = mtlkit.Trainer(model, data.tasks, weighting=mtlkit.weighting.UncertaintyWeighting(data.tasks))
    trainer.fit(data, epochs=5)
"""

from mtlkit import aggregation, data, metrics, models, weighting
from mtlkit.autograd import BackwardResult, backward
from mtlkit.losses import TaskLosses, task_losses
from mtlkit.state import TrainState
from mtlkit.tasks import Task, TaskKind
from mtlkit.training import EarlyStopping, Trainer
from mtlkit.utils import seed_everything

__version__ = "0.1.0"

__all__ = [
    "BackwardResult",
    "EarlyStopping",
    "Task",
    "TaskKind",
    "TaskLosses",
    "TrainState",
    "Trainer",
    "__version__",
    "aggregation",
    "backward",
    "data",
    "metrics",
    "models",
    "seed_everything",
    "task_losses",
    "weighting",
]
