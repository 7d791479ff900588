"""Decide whether an experiment can run: build every component of every run, without training.

``mtlkit validate`` and ``mtlkit run`` both call :func:`check_experiment`, so they accept and
refuse exactly the same configs. It builds the data of every run, each model on the meta
device (no memory, no weight drawing), its Trainer (loss weighting, aggregator, optimizers,
schedulers, training schedule), and checks the early-stopping monitor, the device and the
Δm metric selection; every problem of every run is reported at once.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping

import torch

from mtlkit.config.build import (
    build_aggregator,
    build_data,
    build_model,
    build_schedule,
    build_trainer,
    build_weighting,
    data_key,
    model_data,
    optimizer_factory,
    scheduler_factory,
)
from mtlkit.config.load import ResolvedExperiment
from mtlkit.config.schema import ExperimentConfig
from mtlkit.data.splits import DataSplits
from mtlkit.errors import ConfigError, DataError, IncompatibleComponentsError, UnknownComponentError
from mtlkit.metrics.collection import MultiTaskMetrics
from mtlkit.metrics.functional import select_metrics
from mtlkit.training.early_stopping import resolve_monitor
from mtlkit.training.source import DataSource, TrainSource

__all__ = ["check_experiment", "device_problem", "run_problems"]


def check_experiment(
    experiment: ResolvedExperiment, *, data: dict[str, DataSplits] | None = None
) -> dict[str, DataSplits]:
    """Build every run of ``experiment`` (without training) and raise one :class:`ConfigError`
    listing every problem. Returns the data it built, keyed by :func:`data_key` of the data
    section, for the runs to reuse."""
    data = {} if data is None else data
    cfg = experiment.config
    per_run: dict[str, list[str]] = {
        label: run_problems(vcfg, data) for label, vcfg in experiment.variants.items()
    }
    problems = _merge(per_run, compared=cfg.compare is not None)
    labels = list(experiment.variants)
    baseline = cfg.baseline or ("single_task" if "single_task" in labels else None)
    if baseline is not None and len(labels) > 1 and baseline in experiment.variants:
        splits = data.get(data_key(experiment.variants[baseline].data))
        if splits is not None:
            try:
                select_metrics(MultiTaskMetrics(splits.tasks).directions(), cfg.delta_m_metrics)
            except (ValueError, KeyError) as exc:
                problems.append(f"delta_m_metrics: {exc.args[0] if exc.args else exc}")
    if cfg.plots:
        from mtlkit.analysis.plots import require_matplotlib

        try:
            require_matplotlib()
        except ImportError as exc:
            problems.append(f"plots: {exc}")
    if problems:
        raise ConfigError(problems, source=experiment.source)
    return data


def _merge(per_run: Mapping[str, list[str]], *, compared: bool) -> list[str]:
    """One list: a problem every run has once, the others prefixed with ``compare.<label>``."""
    if not compared:
        return [p for ps in per_run.values() for p in ps]
    runs = list(per_run.values())
    common = [p for p in dict.fromkeys(runs[0]) if all(p in ps for ps in runs[1:])] if runs else []
    out = list(common)
    for label, ps in per_run.items():
        out += [f"compare.{label}: {p}" for p in dict.fromkeys(ps) if p not in common]
    return out


def run_problems(cfg: ExperimentConfig, data: dict[str, DataSplits] | None = None) -> list[str]:
    """The problems of one run (one variant): its data, model, trainer, monitor and device."""
    data = {} if data is None else data
    problems = [p for p in [device_problem(cfg.trainer.device)] if p]
    key = data_key(cfg.data)
    try:
        if key not in data:
            data[key] = build_data(cfg.data)
        splits = data[key]
    except ConfigError as exc:
        return problems + exc.problems + _declared_funnel_problems(cfg)
    try:
        splits = model_data(cfg.model, splits)  # a funnel's tasks and labels (esmm, aitm)
    except ConfigError as exc:
        return problems + exc.problems + _component_problems(cfg, splits)
    model = None
    try:
        with torch.device("meta"):  # the parameters' shapes only: nothing allocated, no weights drawn
            model = build_model(cfg.model, splits, cfg.backbone)
    except ConfigError as exc:
        problems += exc.problems
    problems += _trainer_problems(cfg, model, splits)
    problems += _monitor_problems(cfg, splits)
    problems += _stream_problems(cfg, splits)
    return problems


def _declared_funnel_problems(cfg: ExperimentConfig) -> list[str]:
    """The funnel's problems against the tasks a tabular data section declares, for when the data
    could not be built (so a bad funnel is reported with the data's problems, not after them)."""
    from mtlkit.data.funnel import FUNNEL_MODELS, funnel_problems, parse_funnel
    from mtlkit.data.tabular import task_specs
    from mtlkit.tasks import Task

    spec, data = cfg.model, cfg.data
    if spec.get("funnel") is None or spec.get("name") not in FUNNEL_MODELS:
        return []
    if data.get("name") not in ("tabular", "csv", "parquet") or not isinstance(data.get("tasks"), Mapping):
        return []
    funnel, problems = parse_funnel(str(spec["name"]), spec["funnel"])
    if funnel is None or problems:
        return problems
    try:
        tasks = [Task(name=str(n), kind=s.kind) for n, s in task_specs(data["tasks"]).items()]
    except (DataError, ValueError):
        return []  # the data's own problems name the bad task entries
    return funnel_problems(funnel, tasks)


def _stream_problems(cfg: ExperimentConfig, splits: DataSplits) -> list[str]:
    """A streamed training split (data larger than memory) gives joint batches (schedules 'joint'
    and 'mixed'); a per-task schedule asks it for per-task data, which it refuses (a DataError saying
    why). The schedule is bound to the stream as ``run`` binds it (no data is read)."""
    train = splits.train
    if not isinstance(train, TrainSource) or isinstance(train, DataSource):
        return []
    try:
        schedule = build_schedule(cfg.schedule)
    except ConfigError:
        return []  # reported with the trainer's problems
    trained = [t for t in splits.tasks if t.train] or list(splits.tasks)
    try:
        schedule.bind(train, trained, batch_size=cfg.trainer.batch_size, seed=cfg.seed)
    except DataError as exc:
        return [f"schedule ({schedule.name}): {exc}"]
    return []


def _component_problems(cfg: ExperimentConfig, splits: DataSplits) -> list[str]:
    """Each section the Trainer is built from, on its own (so all are reported when one fails)."""
    problems = []
    for build in (
        lambda: optimizer_factory(cfg.optimizer),
        lambda: scheduler_factory(cfg.scheduler),
        lambda: build_weighting(cfg.weighting, splits.tasks),
        lambda: build_aggregator(cfg.aggregator, splits.tasks),
        lambda: build_schedule(cfg.schedule),
    ):
        try:
            build()
        except ConfigError as exc:
            problems += exc.problems
    return problems


def _trainer_problems(cfg: ExperimentConfig, model: torch.nn.Module | None, splits: DataSplits) -> list[str]:
    problems = _component_problems(cfg, splits)
    if problems or model is None:
        return problems
    try:
        schedule = build_schedule(cfg.schedule)
        build_trainer(cfg, model, splits.tasks, device="meta", schedule=schedule, progress=False)
    except ConfigError as exc:
        return list(exc.problems)
    except UnknownComponentError as exc:  # a task the model has no output for
        return [f"model ({cfg.model['name']}): {exc}"]
    except IncompatibleComponentsError as exc:
        return [f"{_section_of(str(exc), cfg)}: {exc}"]
    except (ValueError, TypeError) as exc:
        return [f"{_section_of(str(exc), cfg)}: {exc}"]
    return []


def _section_of(message: str, cfg: ExperimentConfig) -> str:
    """The config section a Trainer refusal is about (for the dotted path of the message)."""
    if "gradient_target" in message:
        return "trainer.gradient_target"
    if "schedule" in message.lower():
        return "schedule"
    if "per_task_optimizers" in message:
        return "trainer.per_task_optimizers"
    return "aggregator" if cfg.aggregator is not None else "weighting"


def _monitor_problems(cfg: ExperimentConfig, splits: DataSplits) -> list[str]:
    es = cfg.trainer.early_stopping
    if es is None:
        return []
    directions = MultiTaskMetrics(splits.tasks).directions()
    has_val = splits.val is not None
    if not has_val:  # only the training losses exist
        directions = {t: {"loss": False} for t in directions}
    try:
        resolve_monitor(es.monitor, {t: dict.fromkeys(ms, 0.0) for t, ms in directions.items()}, directions)
    except KeyError as exc:
        msg = str(exc.args[0])
        close = _closest_monitor(es.monitor, directions)
        if "Did you mean" not in msg and close:
            msg = msg.replace(". Available:", f". Did you mean {close!r}? Available:", 1)
        hint = "" if has_val else " (the data has no validation split: only training losses can be monitored)"
        return [f"trainer.early_stopping.monitor: {msg}{hint}."]
    return []


def _closest_monitor(monitor: str, directions: Mapping[str, Mapping[str, bool]]) -> str | None:
    """A monitor close to ``monitor``, comparing the task and the metric part separately
    (``click/auc`` -> ``ctr/auc``: whole-string similarity misses it)."""
    task, _, metric = monitor.partition("/")
    holders = [t for t, ms in directions.items() if metric in ms]
    if holders:
        close = difflib.get_close_matches(task, [*holders, "mean"], n=1, cutoff=0.4)
        return f"{close[0]}/{metric}" if close else None
    metrics = directions.get(task) or {m: True for ms in directions.values() for m in ms}
    close = difflib.get_close_matches(metric, list(metrics), n=1, cutoff=0.4)
    return f"{task if task in directions or task == 'mean' else 'mean'}/{close[0]}" if close else None


def device_problem(device: str) -> str | None:
    """Why ``trainer.device`` cannot be used on this machine (None when it can)."""
    fix = "Use trainer.device=cpu, or auto (CUDA when available, else the CPU)."
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = f"this torch ({torch.__version__}) " + (
                "was built without CUDA" if torch.version.cuda is None else "sees no CUDA device"
            )
            return f"trainer.device: {device!r} is not available: {build}. {fix}"
        index = int(device.partition(":")[2] or 0)
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # each process takes its LOCAL_RANK's GPU
        if not distributed and index >= torch.cuda.device_count():
            return (
                f"trainer.device: {device!r} is not available: {torch.cuda.device_count()} CUDA device(s) "
                f"visible (cuda:0 .. cuda:{torch.cuda.device_count() - 1}). {fix}"
            )
    if device == "mps" and not torch.backends.mps.is_available():
        return f"trainer.device: 'mps' is not available on this machine. {fix}"
    return None
