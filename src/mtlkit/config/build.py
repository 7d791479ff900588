"""Turn a validated config into objects. The only module that reads configs to build things."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn

from mtlkit.argcheck import check, non_negative, positive, positive_int, positive_ints
from mtlkit.config.components import FAMILIES, allowed_params
from mtlkit.config.schema import ExperimentConfig
from mtlkit.data.schema import FeatureSchema, describe_input_spec
from mtlkit.data.splits import DataSplits
from mtlkit.errors import ArgumentError, ConfigError, DataError, MtlkitError
from mtlkit.tasks import Task
from mtlkit.training.early_stopping import EarlyStopping
from mtlkit.training.schedules import TaskSchedule, compatibility_problems
from mtlkit.training.trainer import Trainer

__all__ = [
    "backbone_factory",
    "build_aggregator",
    "build_data",
    "build_model",
    "build_schedule",
    "build_trainer",
    "build_weighting",
    "config_problems",
    "data_key",
    "early_stopping",
    "model_data",
    "optimizer_factory",
    "schedule_problems",
    "scheduler_factory",
]


def _build(section: str, spec: dict[str, Any], **injected: Any) -> Any:
    params = {k: v for k, v in spec.items() if k != "name"}
    with config_problems(section, spec):
        return FAMILIES[section].registry.build(spec["name"], **injected, **params)


@contextmanager
def config_problems(section: str, spec: Mapping[str, Any]) -> Iterator[None]:
    """Turn a builder's refusal of its arguments into a :class:`ConfigError` naming the config path.

    A refusal is an :class:`~mtlkit.errors.ArgumentError` (reported at ``section.argument``), another
    mtlkit error or a ``ValueError`` (reported at ``section (name)``). Any other exception is a bug
    in the builder, not a config problem: it propagates unchanged, with a note naming the section.
    """
    name = spec.get("name", "?")
    try:
        yield
    except ConfigError:
        raise
    except ArgumentError as exc:
        raise ConfigError([argument_problem(section, spec, exc)]) from None
    except (MtlkitError, ValueError) as exc:
        raise ConfigError([f"{section} ({name}): {exc}"]) from None
    except Exception as exc:
        exc.add_note(f"mtlkit: raised while building {section} {name!r} from the config section {section!r}.")
        raise


def argument_problem(section: str, spec: Mapping[str, Any], exc: ArgumentError) -> str:
    """``section.argument: must be <constraint>; got <value>.`` for an argument the config sets."""
    top = exc.name.split(".")[0]
    if top in spec or top in allowed_params(FAMILIES[section], str(spec.get("name"))):
        hint = f" {exc.hint}" if exc.hint else ""
        return f"{section}.{exc.name}: must be {exc.constraint}; got {exc.value!r}.{hint}"
    return f"{section} ({spec.get('name')}): {exc}"


def data_key(spec: Mapping[str, Any]) -> str:
    """A key equal for equal data sections (runs with the same data share one build)."""
    return json.dumps(spec, sort_keys=True, default=str)


def build_data(spec: dict[str, Any]) -> DataSplits:
    splits = _build("data", spec)
    if not isinstance(splits, DataSplits):
        raise ConfigError(
            [
                f"data ({spec['name']}): the dataset builder must return DataSplits; got {type(splits).__name__}."
            ]
        )
    return splits


def model_data(spec: Mapping[str, Any], splits: DataSplits) -> DataSplits:
    """The data as the model section sees it: ``funnel:`` (esmm, aitm) turns the data's raw click and
    purchase tasks into the model's tasks and labels (:mod:`mtlkit.data.funnel`); otherwise ``splits``.

    The one place ``validate``, ``run``, ``evaluate`` and loading a run apply it; raises a
    :class:`ConfigError` listing every problem of the funnel."""
    from mtlkit.data.funnel import FUNNEL_MODELS, funnel_splits, parse_funnel

    raw = spec.get("funnel")
    if raw is None or spec.get("name") not in FUNNEL_MODELS:
        return splits  # a funnel on another model: refused as an unknown parameter of that model
    funnel, problems = parse_funnel(str(spec["name"]), raw)
    if funnel is None or problems:
        raise ConfigError(problems)
    try:
        return funnel_splits(funnel, splits)
    except DataError as exc:
        raise ConfigError([f"data: {exc}"]) from None


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
    with config_problems("backbone", spec), torch.device("meta"):
        factory()  # check the parameters now, without allocating or drawing weights
    return factory


def build_model(
    spec: dict[str, Any], splits: DataSplits, backbone: dict[str, Any] | None = None
) -> nn.Module:
    """Build the model named by ``spec`` for ``splits``, behind the configured backbone.

    The builder receives whichever of ``input_dim``, ``input_spec``, ``input_layer`` (a backbone
    factory) and ``tasks`` its signature declares.
    """
    from mtlkit.config.model_wrappers import base_splits, split_wrappers, wrap_model

    spec, wrappers = split_wrappers(spec)  # bias_tower / fusion wrap the model built below
    if wrappers:
        return wrap_model(build_model(spec, base_splits(splits, wrappers), backbone), splits, wrappers)
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
    try:
        return _build("model", spec, **injected)
    except ConfigError as exc:
        if not any("Task(" in p for p in exc.problems):
            raise
        # the model wants tasks declared otherwise; in a config the data section declares them
        raise ConfigError(
            [
                f"{p} In a config the tasks come from the data section: {_describe_tasks(splits.tasks)}. "
                f"Use data whose tasks model {spec['name']!r} predicts (e.g. a dataset with an ESMM "
                "task_set), or a model with one output per task."
                for p in exc.problems
            ]
        ) from None


def _describe_tasks(tasks: Sequence[Task]) -> str:
    parts = []
    for t in tasks:
        logit = "" if t.kind.value not in ("binary", "multilabel") else (" logits" if t.logits else " probability")
        parts.append(f"{t.name} ({t.kind.value}{logit})")
    return "data declares " + ", ".join(parts)


def build_weighting(spec: dict[str, Any], tasks: Sequence[Task]) -> Any:
    return _build("weighting", spec, tasks=tasks)


def build_aggregator(spec: dict[str, Any] | None, tasks: Sequence[Task]) -> Any:
    return None if spec is None else _build("aggregator", spec, tasks=tasks)


def optimizer_factory(spec: dict[str, Any]) -> Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]:
    """A factory ``params -> optimizer`` of the ``optimizer`` section; its numbers are checked now."""
    cls = FAMILIES["optimizer"].registry.get(spec["name"])
    params = {k: v for k, v in spec.items() if k != "name"}
    if isinstance(params.get("betas"), list):
        params["betas"] = tuple(params["betas"])
    with config_problems("optimizer", spec):
        check_optimizer_args(params)
    if cls in (torch.optim.Adam, torch.optim.AdamW) and "foreach" not in params:
        params["foreach"] = True  # multi-tensor kernels: same numbers, faster on CPU too (torch's default on GPU)

    def make(parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        with config_problems("optimizer", spec):  # torch's own checks (e.g. nesterov without momentum)
            return cls(parameters, **params)  # type: ignore[no-any-return]

    return make


def scheduler_factory(spec: dict[str, Any] | None) -> Callable[[torch.optim.Optimizer], Any] | None:
    """A factory ``optimizer -> scheduler`` of the ``scheduler`` section; its numbers are checked now."""
    if spec is None:
        return None
    cls = FAMILIES["scheduler"].registry.get(spec["name"])
    params = {k: v for k, v in spec.items() if k != "name"}
    with config_problems("scheduler", spec):
        check_scheduler_args(params)

    def make(optimizer: torch.optim.Optimizer) -> Any:
        with config_problems("scheduler", spec):
            return cls(optimizer, **params)

    return make


def _unit_open(name: str, value: Any) -> None:
    ok = isinstance(value, (int, float)) and 0 <= value < 1
    check(name, value, ok, "a number in [0, 1)")


# the constraints torch's optimizers and schedulers check (or should), by argument name
_OPTIMIZER_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "lr": positive,
    "weight_decay": non_negative,
    "momentum": non_negative,
    "eps": non_negative,
    "alpha": non_negative,
    "lr_decay": non_negative,
    "initial_accumulator_value": non_negative,
}
_SCHEDULER_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "step_size": positive_int,
    "gamma": positive,
    "milestones": positive_ints,
    "T_max": positive_int,
    "eta_min": non_negative,
    "patience": lambda n, v: positive_int(n, v, minimum=0),
    "cooldown": lambda n, v: positive_int(n, v, minimum=0),
    "threshold": non_negative,
    "min_lr": non_negative,
    "eps": non_negative,
}


def _check_numbers(params: Mapping[str, Any], checks: Mapping[str, Callable[[str, Any], Any]]) -> None:
    for key, value in params.items():
        if key not in checks or value is None:
            continue
        if isinstance(value, (list, tuple)) and key != "milestones":  # per parameter group
            for i, v in enumerate(value):
                checks[key](f"{key}.{i}", v)
        else:
            checks[key](key, value)


def check_optimizer_args(params: Mapping[str, Any]) -> None:
    """Raise :class:`ArgumentError` for an optimizer number out of range (lr > 0, betas in [0, 1)...)."""
    _check_numbers(params, _OPTIMIZER_CHECKS)
    betas = params.get("betas")
    if betas is not None:
        for i, b in enumerate(betas):
            _unit_open(f"betas.{i}", b)


def check_scheduler_args(params: Mapping[str, Any]) -> None:
    """Raise :class:`ArgumentError` for a scheduler number out of range (step_size >= 1, gamma > 0...)."""
    _check_numbers(params, _SCHEDULER_CHECKS)
    if "factor" in params:  # ReduceLROnPlateau multiplies the learning rate by it
        factor = params["factor"]
        check("factor", factor, isinstance(factor, (int, float)) and 0 < factor < 1, "a number in (0, 1)")


def build_schedule(spec: dict[str, Any]) -> TaskSchedule:
    """The training schedule of the ``schedule`` section (joint, mixed, alternating, sampling)."""
    schedule = _build("schedule", spec)
    if not isinstance(schedule, TaskSchedule):
        raise ConfigError(
            [
                f"schedule ({spec['name']}): the builder must return a TaskSchedule; got {type(schedule).__name__}."
            ]
        )
    return schedule


def schedule_problems(cfg: ExperimentConfig) -> list[str]:
    """Combinations the training schedule refuses (aggregators, all-task weightings, per-task
    optimizers), found before any data is built; the same messages as the Trainer's."""
    try:
        schedule = build_schedule(cfg.schedule)
    except ConfigError as exc:
        return list(exc.problems)
    # the classes the registry entries declare (their capability flags); an entry that declares
    # none is checked on the built object by check_experiment (the Trainer's own check)
    weighting = FAMILIES["weighting"].registry.entry(cfg.weighting["name"]).cls
    aggregator = None if cfg.aggregator is None else FAMILIES["aggregator"].registry.entry(cfg.aggregator["name"]).cls
    if weighting is None or (cfg.aggregator is not None and aggregator is None):
        return []
    problems = compatibility_problems(
        schedule, weighting=weighting, aggregator=aggregator, per_task_optimizers=cfg.trainer.per_task_optimizers
    )
    return [f"schedule: {p}" for p in problems]


def early_stopping(cfg: ExperimentConfig) -> EarlyStopping | None:
    es = cfg.trainer.early_stopping
    return None if es is None else EarlyStopping(**es.model_dump())


def build_trainer(
    cfg: ExperimentConfig,
    model: nn.Module,
    tasks: Sequence[Task],
    *,
    device: str | None,
    schedule: TaskSchedule | None = None,
    **runtime: Any,
) -> Trainer:
    """The Trainer of ``cfg`` around ``model``: weighting, aggregator, optimizer, scheduler and
    schedule built from their sections. ``runtime`` passes what the config does not hold
    (``seed``, ``progress``, ``console``, ``log_dir``). The one trainer factory of
    ``mtlkit run``, ``evaluate`` and ``validate`` (which builds it on the meta device)."""
    return Trainer(
        model,
        tasks,
        optimizer=optimizer_factory(cfg.optimizer),
        scheduler=scheduler_factory(cfg.scheduler),
        scheduler_interval=cfg.trainer.scheduler_interval,
        weighting=build_weighting(cfg.weighting, tasks),
        aggregator=build_aggregator(cfg.aggregator, tasks),
        gradient_target=cfg.trainer.gradient_target,
        schedule=schedule if schedule is not None else build_schedule(cfg.schedule),
        per_task_optimizers=cfg.trainer.per_task_optimizers,
        device=device,
        grad_clip_norm=cfg.trainer.grad_clip_norm,
        log_epochs=cfg.trainer.log_epochs,
        **runtime,
    )
