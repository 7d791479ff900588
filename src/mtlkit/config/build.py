"""Turn a validated config into objects. The only module that reads configs to build things."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from mtlkit.config.components import FAMILIES
from mtlkit.config.schema import ExperimentConfig
from mtlkit.data.splits import DataSplits
from mtlkit.errors import ConfigError
from mtlkit.tasks import Task
from mtlkit.training.early_stopping import EarlyStopping

__all__ = [
    "build_aggregator",
    "build_data",
    "build_model",
    "build_weighting",
    "early_stopping",
    "optimizer_factory",
    "scheduler_factory",
]


def _build(section: str, spec: dict[str, Any], **injected: Any) -> Any:
    params = {k: v for k, v in spec.items() if k != "name"}
    try:
        return FAMILIES[section].registry.build(spec["name"], **injected, **params)
    except (ValueError, TypeError) as exc:
        raise ConfigError([f"{section} ({spec['name']}): {exc}"]) from None


def build_data(spec: dict[str, Any]) -> DataSplits:
    splits = _build("data", spec)
    if not isinstance(splits, DataSplits):
        raise ConfigError(
            [
                f"data ({spec['name']}): the dataset builder must return DataSplits; got {type(splits).__name__}."
            ]
        )
    return splits


def build_model(spec: dict[str, Any], splits: DataSplits) -> nn.Module:
    if splits.input_dim is None:
        raise ConfigError(
            [f"model ({spec['name']}): this dataset has named inputs; use a model with an input layer."]
        )
    return _build("model", spec, input_dim=splits.input_dim, tasks=splits.tasks)


def build_weighting(spec: dict[str, Any], tasks: Sequence[Task]) -> Any:
    return _build("weighting", spec, tasks=tasks)


def build_aggregator(spec: dict[str, Any] | None, tasks: Sequence[Task]) -> Any:
    return None if spec is None else _build("aggregator", spec, tasks=tasks)


def optimizer_factory(spec: dict[str, Any]) -> Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]:
    cls = FAMILIES["optimizer"].registry.get(spec["name"])
    params = {k: v for k, v in spec.items() if k != "name"}
    if isinstance(params.get("betas"), list):
        params["betas"] = tuple(params["betas"])
    return partial(cls, **params)


def scheduler_factory(spec: dict[str, Any] | None) -> Callable[[torch.optim.Optimizer], Any] | None:
    if spec is None:
        return None
    cls = FAMILIES["scheduler"].registry.get(spec["name"])
    return partial(cls, **{k: v for k, v in spec.items() if k != "name"})


def early_stopping(cfg: ExperimentConfig) -> EarlyStopping | None:
    es = cfg.trainer.early_stopping
    return None if es is None else EarlyStopping(**es.model_dump())
