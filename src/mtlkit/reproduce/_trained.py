"""Rebuild a trained model from a run directory (``config.yaml`` + ``checkpoint.pt``) for analyses
that need the model itself, such as gate statistics."""

from __future__ import annotations

import os

from torch import nn

from mtlkit.analysis import GateStats, gate_statistics
from mtlkit.data.splits import DataSplits
from mtlkit.runs import load_run

__all__ = ["load_trained", "run_gate_statistics"]


def load_trained(
    run_dir: str | os.PathLike[str], *, splits: DataSplits | None = None
) -> tuple[nn.Module, DataSplits]:
    """The model of a run directory written by ``run_experiment`` (its best state when the run
    restored one, else its last) in eval mode, and the run's data (built from its config unless
    ``splits`` is given); see :func:`mtlkit.runs.load_run`."""
    run = load_run(run_dir, splits=splits, data=True)
    assert run.splits is not None
    return run.model, run.splits


def run_gate_statistics(
    run_dir: str | os.PathLike[str], *, max_samples: int = 10_000
) -> dict[str, GateStats]:
    """Gate statistics (:func:`mtlkit.analysis.gate_statistics`) of a run's trained model over the
    run's test split (validation, then training split, when it has none)."""
    model, splits = load_trained(run_dir)
    data = splits.test if splits.test is not None else splits.val if splits.val is not None else splits.train
    return gate_statistics(model, data, max_samples=max_samples)
