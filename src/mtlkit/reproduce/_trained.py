"""Rebuild a trained model from a run directory (``config.yaml`` + ``checkpoint.pt``) for analyses
that need the model itself, such as gate statistics."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from torch import nn

from mtlkit.analysis import GateStats, gate_statistics
from mtlkit.config.build import build_data, build_model
from mtlkit.config.load import resolve
from mtlkit.data.splits import DataSplits
from mtlkit.errors import CheckpointError
from mtlkit.training.checkpoint import load_checkpoint
from mtlkit.utils import seed_everything

__all__ = ["load_trained", "run_gate_statistics"]


def load_trained(
    run_dir: str | os.PathLike[str], *, splits: DataSplits | None = None
) -> tuple[nn.Module, DataSplits]:
    """The model of a run directory written by ``run_experiment`` (its best state when the run
    restored one, else its last) in eval mode, and the run's data (built from its config unless
    ``splits`` is given)."""
    rd = Path(run_dir)
    cfg_path = rd / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{str(rd)!r} has no config.yaml; is it a run directory written by `mtlkit run`?"
        )
    cfg = next(iter(resolve(yaml.safe_load(cfg_path.read_text()), source=str(cfg_path)).variants.values()))
    splits = splits if splits is not None else build_data(cfg.data)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, splits, cfg.backbone)
    state = load_checkpoint(rd)
    best = state.get("best") or {}
    model.load_state_dict(best["state"] if best.get("state") is not None else state["model"])
    return model.eval(), splits


def run_gate_statistics(
    run_dir: str | os.PathLike[str], *, max_samples: int = 10_000
) -> dict[str, GateStats]:
    """Gate statistics (:func:`mtlkit.analysis.gate_statistics`) of a run's trained model over the
    run's test split (validation, then training split, when it has none)."""
    model, splits = load_trained(run_dir)
    data = splits.test if splits.test is not None else splits.val if splits.val is not None else splits.train
    return gate_statistics(model, data, max_samples=max_samples)
