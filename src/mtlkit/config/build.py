"""Turn a validated config into objects. The only module that reads configs to build things."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from mtlkit.config.components import FAMILIES
from mtlkit.config.schema import ExperimentConfig
from mtlkit.data.schema import FeatureSchema, describe_input_spec
from mtlkit.data.splits import DataSplits
from mtlkit.errors import ConfigError
from mtlkit.tasks import Task
from mtlkit.training.early_stopping import EarlyStopping
from mtlkit.training.schedules import TaskSchedule, compatibility_problems

__all__ = [
    "backbone_factory",
    "build_aggregator",
    "build_data",
    "build_model",
    "build_schedule",
    "build_weighting",
    "early_stopping",
    "optimizer_factory",
    "schedule_problems",
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


def backbone_factory(spec: dict[str, Any] | None, splits: DataSplits) -> Callable[[], nn.Module] | None:
    """A zero-argument factory of the configured backbone (None when the data needs none).

    Without a ``backbone`` section, tabular data (a FeatureSchema) gets the default embedding
    front end and flat feature vectors get none; other inputs (images) must name one.
    """
    if spec is None:
        if isinstance(splits.input_spec, FeatureSchema):
            spec = {"name": "embedding"}
        elif splits.input_dim is not None:
            return None
        else:
            raise ConfigError(
                [
                    f"backbone: the data has {describe_input_spec(splits.input_spec)}, which the model cannot "
                    "read directly. Add a backbone section, e.g. backbone: {name: cnn} (see `mtlkit list "
                    "backbones`)."
                ]
            )
    params = {k: v for k, v in spec.items() if k != "name"}
    factory = partial(
        FAMILIES["backbone"].registry.build, spec["name"], input_spec=splits.input_spec, **params
    )
    try:
        with torch.device("meta"):  # check the parameters now, without allocating or drawing weights
            factory()
    except (ValueError, TypeError) as exc:
        raise ConfigError([f"backbone ({spec['name']}): {exc}"]) from None
    return factory


def build_model(
    spec: dict[str, Any], splits: DataSplits, backbone: dict[str, Any] | None = None
) -> nn.Module:
    """Build the model named by ``spec`` for ``splits``, behind the configured backbone.

    The builder receives whichever of ``input_dim``, ``input_spec``, ``input_layer`` (a backbone
    factory) and ``tasks`` its signature declares.
    """
    builder = FAMILIES["model"].registry.get(spec["name"])
    accepts = set(inspect.signature(builder).parameters)
    injected: dict[str, Any] = {"tasks": splits.tasks}
    if "input_spec" in accepts:
        injected["input_spec"] = splits.input_spec
    if "input_dim" in accepts:
        injected["input_dim"] = splits.input_dim
    if "input_layer" in accepts:
        factory = backbone_factory(backbone, splits)
        if factory is not None:
            injected["input_layer"] = factory
    elif backbone is not None:
        raise ConfigError(
            [
                f"backbone: model {spec['name']!r} builds its own input network and takes no backbone; "
                "remove the backbone section."
            ]
        )
    elif "input_spec" not in accepts and splits.input_dim is None:
        raise ConfigError(
            [
                f"model ({spec['name']}): it takes flat feature vectors, but the data has "
                f"{describe_input_spec(splits.input_spec)}."
            ]
        )
    return _build("model", spec, **injected)


def build_weighting(spec: dict[str, Any], tasks: Sequence[Task]) -> Any:
    return _build("weighting", spec, tasks=tasks)


def build_aggregator(spec: dict[str, Any] | None, tasks: Sequence[Task]) -> Any:
    return None if spec is None else _build("aggregator", spec, tasks=tasks)


def optimizer_factory(spec: dict[str, Any]) -> Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]:
    cls = FAMILIES["optimizer"].registry.get(spec["name"])
    params = {k: v for k, v in spec.items() if k != "name"}
    if isinstance(params.get("betas"), list):
        params["betas"] = tuple(params["betas"])
    if cls in (torch.optim.Adam, torch.optim.AdamW) and "foreach" not in params:
        params["foreach"] = True  # multi-tensor kernels: same numbers, faster on CPU too (torch's default on GPU)
    return partial(cls, **params)


def scheduler_factory(spec: dict[str, Any] | None) -> Callable[[torch.optim.Optimizer], Any] | None:
    if spec is None:
        return None
    cls = FAMILIES["scheduler"].registry.get(spec["name"])
    return partial(cls, **{k: v for k, v in spec.items() if k != "name"})


def build_schedule(spec: dict[str, Any]) -> TaskSchedule:
    """The training schedule of the ``schedule`` section (joint, mixed, alternating, sampling)."""
    schedule = _build("schedule", spec)
    if not isinstance(schedule, TaskSchedule):
        raise ConfigError(
            [f"schedule ({spec['name']}): the builder must return a TaskSchedule; got {type(schedule).__name__}."]
        )
    return schedule


def _returned_class(section: str, name: str) -> type:
    """The class a registered builder returns (from its annotation), or a plain stand-in."""
    builder = FAMILIES[section].registry.get(name)
    if inspect.isclass(builder):
        return builder
    try:
        ret = typing.get_type_hints(builder).get("return")
    except Exception:  # unresolvable annotations: the Trainer checks the built object later
        ret = None
    return ret if inspect.isclass(ret) else type(name, (), {})


def schedule_problems(cfg: ExperimentConfig) -> list[str]:
    """Combinations the training schedule refuses (aggregators, all-task weightings, per-task
    optimizers), found before any data is built; the same messages as the Trainer's."""
    try:
        schedule = build_schedule(cfg.schedule)
    except ConfigError as exc:
        return list(exc.problems)
    problems = compatibility_problems(
        schedule,
        weighting=_returned_class("weighting", cfg.weighting["name"]),
        aggregator=None if cfg.aggregator is None else _returned_class("aggregator", cfg.aggregator["name"]),
        per_task_optimizers=cfg.trainer.per_task_optimizers,
    )
    return [f"schedule: {p}" for p in problems]


def early_stopping(cfg: ExperimentConfig) -> EarlyStopping | None:
    es = cfg.trainer.early_stopping
    return None if es is None else EarlyStopping(**es.model_dump())
