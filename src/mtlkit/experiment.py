"""Run a validated experiment: every variant x seed, each in its own run directory, then one
comparison table. Used by ``mtlkit run`` and ``mtlkit evaluate``; also callable from Python."""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from mtlkit.analysis.plots import write_experiment_plots
from mtlkit.config.build import (
    build_data,
    build_model,
    build_schedule,
    build_trainer,
    data_key,
    early_stopping,
    model_data,
)
from mtlkit.config.check import check_experiment
from mtlkit.config.load import ResolvedExperiment, resolve
from mtlkit.config.schema import ExperimentConfig
from mtlkit.data.fingerprint import data_fingerprint
from mtlkit.data.splits import DataSplits
from mtlkit.distributed import (
    DistributedContext,
    broadcast_object,
    current_context,
    distributed_session,
    is_main_process,
)
from mtlkit.errors import (
    CheckpointError,
    DataError,
    IncompatibleComponentsError,
    MtlkitError,
    RunDirectoryError,
)
from mtlkit.jsonio import write_json
from mtlkit.metrics.collection import MultiTaskMetrics
from mtlkit.metrics.functional import MetricSelection, delta_m, delta_m_per_task, select_metrics
from mtlkit.predict import save_run_signature
from mtlkit.report import comparison_table, metrics_table, write_tables
from mtlkit.runs import find_runs, load_run, read_config, with_saved_preprocessor
from mtlkit.seed_report import cap_bound, cap_note, paired_wins, wins_table
from mtlkit.training.checkpoint import Checkpointer, atomic_write_bytes
from mtlkit.training.run_lock import RunLock, os_error_message
from mtlkit.training.schedules import TaskSchedule
from mtlkit.utils import seed_everything

__all__ = [
    "ExperimentResult",
    "RunInterrupted",
    "RunResult",
    "aggregate",
    "evaluate_run_dir",
    "finished_runs",
    "resume_experiment",
    "run_experiment",
]

_GATE_SAMPLES = 10_000  # rows of the evaluation split used for a run's gate statistics


@dataclass
class RunResult:
    """One trained model: a variant at one seed."""

    label: str
    seed: int
    run_dir: Path
    split: str
    metrics: dict[str, dict[str, float]]
    params: int
    seconds: float
    epochs: int
    best_epoch: int | None
    directions: dict[str, dict[str, bool]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ExperimentResult:
    """All runs of an experiment and the aggregated comparison."""

    run_dir: Path
    runs: list[RunResult]
    comparison: dict[str, Any]


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_experiment` or :func:`resume_experiment`; ``run_dir`` is the run
    directory to pass to ``mtlkit run --resume``."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


def _new_run_dir(root: Path, name: str) -> Path:
    for parent in (root, *root.parents):  # the nearest existing part of --out must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise RunDirectoryError(
                    f"The output folder {str(root)!r} cannot be created: {str(parent)!r} is a file, not a "
                    "folder. Pass a folder with --out (or output_dir=...); it is created if missing."
                )
            break
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / f"{name}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise RunDirectoryError(os_error_message(exc, root, "create the run directory in")) from None
    return path


def _dump_yaml(data: Mapping[str, Any], path: Path) -> None:
    atomic_write_bytes(yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False).encode(), path)


def _dump_json(data: Any, path: Path) -> None:
    """Atomic, so that a run killed while writing never leaves half a file (metrics.json marks a finished run)."""
    write_json(data, path)


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for k in dict.fromkeys([*a, *b]):
            out += _differences(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if a == b else [path or "(root)"]


def _device(cfg: ExperimentConfig) -> str | None:
    return None if cfg.trainer.device == "auto" else cfg.trainer.device


def _data_key(spec: Mapping[str, Any]) -> str:
    return data_key(spec)


def _finished(run_dir: Path, splits: DataSplits) -> RunResult | None:
    """The result of a run that finished (its metrics.json is written last), else None."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
        return RunResult(
            rec["label"],
            int(rec["seed"]),
            run_dir,
            rec["split"],
            _nan_for_null(rec["metrics"]),
            int(rec["params"]),
            float(rec["seconds"]),
            int(rec["epochs"]),
            rec["best_epoch"],
            MultiTaskMetrics(splits.tasks).directions(),
            json.loads(hist.read_text()) if (hist := run_dir / "history.json").is_file() else [],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{str(path)!r} is damaged ({type(exc).__name__}: {exc}); delete it to train that run again."
        ) from None


def _nan_for_null(metrics: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict[str, float]]:
    """Metrics read back from metrics.json: the JSON writer stores NaN as null."""
    return {t: {m: math.nan if v is None else float(v) for m, v in ms.items()} for t, ms in metrics.items()}


def _normalised(config: Mapping[str, Any]) -> dict[str, Any]:
    return next(iter(resolve(config).variants.values())).model_dump(mode="json")


def _resume_state(checkpointer: Checkpointer, config_dict: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint of an interrupted run, checked against the run's config and data; None if
    there is none."""
    path = checkpointer.path
    state = checkpointer.resume()
    if state is None:
        return None
    saved = (state.get("extra") or {}).get("config")
    if saved is not None:
        # compare resolved forms: resolving fills in defaults (e.g. Adam's betas) that a config
        # built in Python may not spell out
        diff = _differences(_normalised(saved), _normalised(config_dict))
        if diff:
            raise CheckpointError(
                f"Checkpoint {str(path)!r} was written with another config than the run's config.yaml "
                f"(differences at: {', '.join(diff[:5])}). Restore the original config.yaml, or start a new run."
            )
    return state


def _train_one(
    cfg: ExperimentConfig,
    splits: DataSplits,
    seed: int,
    run_dir: Path,
    label: str,
    console: Console,
    progress: bool | None,
    resume: bool = False,
    fingerprint: dict[str, Any] | None = None,
    allow_data_change: bool = False,
) -> RunResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = current_context()
    main = ctx is None or ctx.is_main  # under torchrun, rank 0 writes the run's files
    single = cfg.model_copy(
        update={"seed": seed, "seeds": None, "compare": None, "baseline": None, "name": cfg.name}
    )
    config_dict = single.model_dump(mode="json")
    checkpointer = Checkpointer(
        run_dir / "checkpoint.pt", fingerprint=fingerprint, allow_data_change=allow_data_change
    )
    state = _resume_state(checkpointer, config_dict) if resume else None
    if main:
        _dump_yaml(config_dict, run_dir / "config.yaml")
        save_run_signature(run_dir, splits)
    seed_everything(seed)
    model = build_model(cfg.model, splits, cfg.backbone)
    schedule = build_schedule(cfg.schedule)
    trainer = build_trainer(
        cfg,
        _distributed_model(model, ctx, schedule, splits) if ctx is not None else model,
        splits.tasks,
        schedule=schedule,
        device=str(ctx.device) if ctx is not None else _device(cfg),
        seed=seed,
        progress=(cfg.trainer.progress if cfg.trainer.progress is not None else progress) if main else False,
        log_dir=run_dir / "tensorboard" if cfg.trainer.tensorboard else None,
        console=console,
    )
    restored = 0.0
    if state is not None:  # an interrupted run: continue where its checkpoint was written
        trainer.load_state_dict(state, source=f"checkpoint {str(run_dir / 'checkpoint.pt')!r}")
        restored = sum(float(h.get("seconds", 0.0)) for h in trainer.history)
        position = state.get("position") or {}
        restored += float(position.get("seconds", 0.0))
        where = f"after epoch {trainer.epoch}"
        if position.get("steps"):  # written inside an epoch (trainer.checkpoint_every_steps)
            where += f", at step {position['steps']} of epoch {trainer.epoch + 1}"
        console.print(f"  {label:<16} seed {seed:<3} resuming {where}")
        if checkpointer.data_changes:
            console.print(
                f"  {label:<16} seed {seed:<3} [bold]continuing on changed data[/bold] (--allow-data-change): "
                + "; ".join(checkpointer.data_changes),
                highlight=False,
            )
    started = time.perf_counter()
    history = trainer.fit(
        splits.train,
        splits.val,
        epochs=cfg.trainer.epochs,
        batch_size=cfg.trainer.batch_size,
        early_stopping=early_stopping(cfg),
        checkpoint=checkpointer,
        extra_state=_extra_state(config_dict, label, splits, run_dir),
        checkpoint_every=cfg.trainer.checkpoint_every_steps,
    )
    seconds = time.perf_counter() - started + restored
    split, data = ("test", splits.test) if splits.test is not None else ("val", splits.val or splits.train)
    if data is splits.train:
        split = "train"
    metrics = trainer.evaluate(data, batch_size=max(cfg.trainer.batch_size, 1024))
    best = trainer.stopper.best_epoch
    params = sum(p.numel() for p in model.parameters())
    result = RunResult(
        label,
        seed,
        run_dir,
        split,
        metrics,
        params,
        seconds,
        len(history),
        best,
        MultiTaskMetrics(splits.tasks).directions(),
        history,
    )
    if main:
        if cfg.plots:
            _write_run_plots(model, data, run_dir, f"{label} seed {seed}", splits.tasks)
        _dump_json(history, run_dir / "history.json")
        record = {**_run_record(result, splits), "data_fingerprint": fingerprint}
        _dump_json(record, run_dir / "metrics.json")  # last: marks the run finished
    return result


def _distributed_model(
    model: torch.nn.Module, ctx: DistributedContext, schedule: TaskSchedule, splits: DataSplits
) -> torch.nn.Module:
    """The model in DistributedDataParallel on this rank's device. Steps that leave some task
    heads out of the loss (per-task schedules, evaluation-only tasks) need DDP to look for
    unused parameters."""
    model.to(ctx.device)
    partial = schedule.name != "joint" or any(not t.train for t in splits.tasks)
    return torch.nn.parallel.DistributedDataParallel(
        model,
        device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
        find_unused_parameters=partial,
    )


def _extra_state(config: dict[str, Any], label: str, splits: DataSplits, run_dir: Path) -> dict[str, Any]:
    """What checkpoints carry besides the training state (the fitted preprocessor's state too;
    :func:`~mtlkit.predict.save_run_signature` writes it to ``preprocessor.json`` for evaluation
    and prediction)."""
    extra: dict[str, Any] = {"config": config, "label": label}
    state_dict = getattr(splits.preprocessor, "state_dict", None)
    if callable(state_dict):
        extra["preprocessor"] = state_dict()
    return extra


def _write_run_plots(
    model: torch.nn.Module, data: Any, run_dir: Path, title: str, tasks: tuple[Any, ...] = ()
) -> None:
    """``gates.json`` and ``gates.png`` (per-expert gate distributions) for a gated model."""
    from mtlkit.analysis import gate_statistics, plot_gate_distributions

    if not getattr(getattr(model, "module", model), "gates", None):
        return
    if hasattr(data, "eval_loader"):  # a stream: its batches in file order (the first rows are used)
        data = data.eval_loader(tasks, 1024)
    try:
        stats = gate_statistics(model, data, max_samples=_GATE_SAMPLES)
    except IncompatibleComponentsError:  # gates(x) returned {}: not a gated model
        return
    write_json({k: v.to_dict() for k, v in stats.items()}, run_dir / "gates.json")
    plot_gate_distributions(stats, title=f"{title}: gate weights per expert", path=run_dir / "gates.png")


STATUS_FILE = "status.json"


def _mark_failed(root: Path, run_dir: Path, exc: BaseException, console: Console) -> None:
    """Write ``status.json`` (``{"status": "failed", ...}``) into the failed run's directory (and
    the experiment's) and say where it is; a run that a resume later finishes loses the marker."""
    record = {
        "status": "failed",
        "error": f"{type(exc).__name__}: {exc}",
        "run": str(run_dir.relative_to(root)) if run_dir != root else ".",
        "time": datetime.now().isoformat(timespec="seconds"),
    }
    for folder in dict.fromkeys([run_dir, root]):
        with contextlib.suppress(OSError):  # e.g. a full disk: the message below still says where the run is
            write_json(record, folder / STATUS_FILE)
    # an mtlkit error: the CLI adds the resume command where resuming can help (RunDirectoryError)
    fix = "" if isinstance(exc, MtlkitError) else f" After fixing the cause: mtlkit run --resume {root}"
    console.print(
        f"Run failed: {run_dir} (marked in {STATUS_FILE}; its last checkpoint, if any, is kept). "
        f"Run directory: {root}.{fix}",
        highlight=False,
        markup=False,
        soft_wrap=True,  # paths stay on one line
    )


def _run_record(r: RunResult, splits: DataSplits) -> dict[str, Any]:
    return {
        "label": r.label,
        "seed": r.seed,
        "split": r.split,
        "metrics": r.metrics,
        "params": r.params,
        "seconds": r.seconds,
        "epochs": r.epochs,
        "best_epoch": r.best_epoch,
        "data": splits.info,
    }


def _primary(
    directions: Mapping[str, Mapping[str, bool]], metrics: Mapping[str, Mapping[str, float]]
) -> dict[str, str]:
    """First metric of each task other than ``loss`` (the default metric list starts with the main one)."""
    out = {}
    for task, ms in metrics.items():
        names = [m for m in ms if m != "loss"]
        out[task] = names[0] if names else "loss"
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (Bessel-corrected; 0 for one value); both NaN if any value is NaN."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(
    runs: list[RunResult],
    baseline: str | None,
    *,
    metrics: MetricSelection = None,
    auxiliary: Sequence[str] = (),
) -> dict[str, Any]:
    """Mean and std over seeds of every metric of every label and task; Δm against the baseline label.

    Args:
        runs: the runs (every label at every seed).
        baseline: the label Δm compares against (``None``: no Δm).
        metrics: the metrics Δm averages per task (default: each task's primary metric, the one
            the comparison table shows); see :func:`mtlkit.metrics.select_metrics`. The table
            shows exactly the metrics Δm uses.
        auxiliary: auxiliary tasks (``Task.auxiliary``): reported, but left out of Δm (listed
            under ``"auxiliary"``; the report shows them in a separate block).

    Returns:
        ``{"labels": {label: entry}, "baseline", "primary", "directions", "delta_m_metrics"}``.
        Each entry has ``metrics[task][metric] = {"mean", "std", "values"}`` (values per seed,
        std with Bessel's correction, 0 for one seed), ``seeds``, ``params``, ``seconds``,
        ``split`` and, with a baseline: ``delta_m`` (of the seed means, in %), ``delta_m_std``
        (std over seeds of each seed's Δm against the baseline's means; the values themselves in
        ``delta_m_values``, in the order of ``seeds``), ``delta_m_tasks``
        (per-task Δm_t of the means) and ``delta_m_primary`` (Δm over each task's main metric).
    """
    labels = list(dict.fromkeys(r.label for r in runs))
    first = runs[0]
    primary = _primary(first.directions, first.metrics)
    aux = [t for t in dict.fromkeys(auxiliary) if t in first.metrics]
    out: dict[str, Any] = {"labels": {}, "baseline": baseline, "primary": primary, "auxiliary": aux}
    out["directions"] = {t: dict(d) for t, d in first.directions.items()}
    for label in labels:
        rs = [r for r in runs if r.label == label]
        stats: dict[str, dict[str, dict[str, Any]]] = {}
        for task, ms in rs[0].metrics.items():
            stats[task] = {}
            for m in ms:
                vals = [r.metrics[task][m] for r in rs]
                mean, std = _mean_std(vals)
                stats[task][m] = {"mean": mean, "std": std, "values": vals}
        out["labels"][label] = {
            "metrics": stats,
            "seeds": [r.seed for r in rs],
            "params": rs[0].params,
            "seconds": statistics.fmean(r.seconds for r in rs),
            "split": rs[0].split,
        }
    if baseline is not None and baseline in out["labels"]:
        base_entry = out["labels"][baseline]["metrics"]
        base = {t: {m: st["mean"] for m, st in ms.items()} for t, ms in base_entry.items() if t not in aux}
        # Δm over the metrics the table shows: each task's primary metric unless configured
        used = select_metrics(base, metrics if metrics is not None else {t: [primary[t]] for t in base})
        out["delta_m_metrics"] = used
        main_primary = {t: m for t, m in primary.items() if t not in aux}
        base_primary = {t: base[t][m] for t, m in main_primary.items()}
        higher_primary = {t: first.directions[t][m] for t, m in main_primary.items()}
        for label, entry in out["labels"].items():
            directions = next(r.directions for r in runs if r.label == label)
            means = {
                t: {m: st["mean"] for m, st in ms.items()} for t, ms in entry["metrics"].items() if t not in aux
            }
            try:
                entry["delta_m"] = delta_m(means, base, directions, metrics=used)
                entry["delta_m_tasks"] = delta_m_per_task(means, base, directions, metrics=used)
                per_seed = [
                    delta_m({t: v for t, v in r.metrics.items() if t not in aux}, base, directions, metrics=used)
                    for r in runs
                    if r.label == label
                ]
                entry["delta_m_std"] = _mean_std(per_seed)[1]
                entry["delta_m_values"] = per_seed  # in the order of entry["seeds"]
                entry["delta_m_primary"] = delta_m(
                    {t: means[t][m] for t, m in main_primary.items()}, base_primary, higher_primary
                )
            except (DataError, KeyError) as exc:  # e.g. a variant trained on other tasks
                entry["delta_m"] = math.nan
                entry["delta_m_note"] = str(exc)
    return out


def run_experiment(
    experiment: ResolvedExperiment | Mapping[str, Any],
    *,
    output_dir: str | Path | None = None,
    console: Console | None = None,
    progress: bool | None = None,
) -> ExperimentResult:
    """Train every variant at every seed; write run directories and the comparison; print tables."""
    if not isinstance(experiment, ResolvedExperiment):
        experiment = resolve(experiment)
    data = check_experiment(experiment)  # everything `mtlkit validate` checks, before any directory exists
    with distributed_session(experiment.config.trainer.device) as ctx:
        root = None
        if ctx is None or ctx.is_main:
            root = _new_run_dir(Path(output_dir or experiment.config.output_dir), experiment.config.name)
            _dump_yaml(experiment.to_dict(), root / "config.yaml")
        root = Path(broadcast_object(str(root)))  # every rank works in rank 0's run directory
        return _run_all(experiment, root, console or Console(), progress, resume=False, data=data)


def resume_experiment(
    run_dir: str | Path,
    *,
    console: Console | None = None,
    progress: bool | None = None,
    allow_data_change: bool = False,
) -> ExperimentResult:
    """Continue an experiment that was interrupted (crash, ``kill -9``, power loss).

    Reads the run directory's ``config.yaml``; every variant/seed run whose ``metrics.json``
    exists is finished and kept as it is; a run with a ``checkpoint.pt`` but no ``metrics.json``
    continues from that checkpoint (the end of its last finished epoch, so an epoch interrupted
    half-way is trained again from its start, with the same data order and random state; with
    ``trainer.checkpoint_every_steps`` the last checkpoint written inside the epoch, continued
    from its next step); runs
    not started yet are trained. Then the comparison is written as :func:`run_experiment` does.
    With the same seed, the resumed experiment ends with the same metrics as an uninterrupted one.

    The run directory is locked while it is written (a second process gets a clear error), and
    the data is compared with the fingerprint stored in each checkpoint and ``metrics.json``:
    a run whose data changed is refused unless ``allow_data_change`` (then it continues on the
    new data and says so).

    Raises:
        CheckpointError: ``run_dir`` is not the top directory of a run, a checkpoint is damaged
            or was written with another config, or the data changed.
        RunDirectoryError: another process is writing ``run_dir``, or it cannot be written.
    """
    root = Path(run_dir)
    cfg_path = root / "config.yaml"
    if not root.is_dir():
        raise CheckpointError(f"Run directory {str(root)!r} does not exist.")
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{str(root)!r} has no config.yaml; pass the run directory printed by `mtlkit run` "
            "(runs/<name>-<date>-<time>)."
        )
    top = root.parent.parent
    if root.name.startswith("seed") and (top / "config.yaml").is_file() and (top / root.parent.name).is_dir():
        raise CheckpointError(
            f"{str(root)!r} is one run of the experiment in {str(top)!r}; resume the whole experiment: "
            f"mtlkit run --resume {top}"
        )
    experiment = resolve(yaml.safe_load(cfg_path.read_text()), source=str(cfg_path))
    with distributed_session(experiment.config.trainer.device):
        return _run_all(
            experiment, root, console or Console(), progress, resume=True, allow_data_change=allow_data_change
        )


def finished_runs(run_dir: str | Path) -> tuple[ExperimentResult, list[str]]:
    """The runs of the experiment in ``run_dir`` that have finished (their ``metrics.json``
    exists), with the comparison over them, and the runs still missing (``"label seed N"``);
    nothing is trained. The data is built (for the tasks and their metric directions) as a
    resume would.

    Raises:
        CheckpointError: ``run_dir`` has no ``config.yaml``, or a ``metrics.json`` is damaged.
    """
    root = Path(run_dir)
    cfg_path = root / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{str(root)!r} has no config.yaml: it is not an experiment's run directory.")
    experiment = resolve(yaml.safe_load(cfg_path.read_text()), source=str(cfg_path))
    cfg = experiment.config
    labels = list(experiment.variants)
    multi = len(labels) > 1 or len(cfg.run_seeds()) > 1 or cfg.compare is not None
    cache: dict[str, DataSplits] = {}
    runs: list[RunResult] = []
    missing: list[str] = []
    first: DataSplits | None = None
    for label, vcfg in experiment.variants.items():
        key = _data_key(vcfg.data)
        if key not in cache:
            cache[key] = build_data(vcfg.data)
        splits = model_data(vcfg.model, cache[key])
        first = first or splits
        for seed in vcfg.run_seeds():
            done = _finished(root / label / f"seed{seed}" if multi else root, splits)
            if done is None:
                missing.append(f"{label} seed {seed}")
            else:
                runs.append(done)
    baseline = cfg.baseline or ("single_task" if "single_task" in labels else None)
    present = {r.label for r in runs}
    comparison = (
        aggregate(
            runs,
            baseline if len(labels) > 1 and baseline in present else None,
            metrics=cfg.delta_m_metrics,
            auxiliary=[t.name for t in first.tasks if t.auxiliary] if first else [],
        )
        if runs
        else {"labels": {}}
    )
    if first is not None:
        comparison["data"] = dict(first.info.items())
    return ExperimentResult(root, runs, comparison), missing


def _run_all(
    experiment: ResolvedExperiment,
    root: Path,
    console: Console,
    progress: bool | None,
    *,
    resume: bool,
    allow_data_change: bool = False,
    data: dict[str, DataSplits] | None = None,
) -> ExperimentResult:
    """:func:`_run_variants` with the run directory locked (rank 0 writes it); Ctrl-C raises
    :class:`RunInterrupted`, and an error notes the run directory it left unfinished."""
    try:
        with RunLock(root) if is_main_process() else nullcontext():
            return _run_variants(
                experiment, root, console, progress, resume=resume, allow_data_change=allow_data_change, data=data
            )
    except KeyboardInterrupt:
        raise RunInterrupted(root) from None
    except MtlkitError as exc:
        if not (isinstance(exc, RunDirectoryError) and "is in use by" in str(exc)):
            exc.run_dir = root  # type: ignore[attr-defined]  # the CLI says the run is incomplete
        raise


def _check_finished_data(run_dir: Path, fingerprint: dict[str, Any] | None, allow_data_change: bool) -> None:
    """A finished run kept by a resume must have been trained on the same data."""
    try:
        saved = json.loads((run_dir / "metrics.json").read_text()).get("data_fingerprint")
    except (OSError, ValueError, AttributeError):
        return  # _finished reported a damaged file already
    Checkpointer(run_dir, fingerprint=fingerprint, allow_data_change=allow_data_change).check_data(
        saved, what=f"the run in {str(run_dir)!r} finished"
    )


def _run_variants(
    experiment: ResolvedExperiment,
    root: Path,
    console: Console,
    progress: bool | None,
    *,
    resume: bool,
    allow_data_change: bool,
    data: dict[str, DataSplits] | None,
) -> ExperimentResult:
    cfg = experiment.config
    labels = list(experiment.variants)
    main = is_main_process()
    if not main:  # under torchrun only rank 0 prints and writes
        console = Console(quiet=True)
    multi = len(labels) > 1 or len(cfg.run_seeds()) > 1 or cfg.compare is not None
    # every run's components, the monitor, the device, plots and Δm metrics: checked before training
    data_cache = data if data is not None else check_experiment(experiment)
    fingerprints: dict[str, dict[str, Any]] = {}
    runs: list[RunResult] = []
    baseline = cfg.baseline or ("single_task" if "single_task" in labels else None)
    if cfg.description:
        console.print(f"[bold]{cfg.name}[/bold]: {cfg.description.strip()}")
    for label, vcfg in experiment.variants.items():
        key = _data_key(vcfg.data)
        if key not in data_cache:
            data_cache[key] = build_data(vcfg.data)
        splits = model_data(vcfg.model, data_cache[key])  # a funnel's tasks and labels (esmm, aitm)
        if key not in fingerprints:
            fingerprints[key] = data_fingerprint(data_cache[key])
        for seed in vcfg.run_seeds():
            run_dir = root / label / f"seed{seed}" if multi else root
            done = _finished(run_dir, splits) if resume else None
            if done is not None:
                _check_finished_data(run_dir, fingerprints[key], allow_data_change)
            try:
                r = done or _train_one(
                    vcfg, splits, seed, run_dir, label, console, progress, resume, fingerprints[key], allow_data_change
                )
            except Exception as exc:
                if main:
                    _mark_failed(root, run_dir, exc, console)
                raise
            if main:
                (run_dir / STATUS_FILE).unlink(missing_ok=True)  # a failed run that a resume finished
            runs.append(r)
            best = f"(best {r.best_epoch:>3})  " if r.best_epoch is not None else ""
            console.print(
                f"  {label:<16} seed {seed:<3} {r.epochs:>3} epochs {best} {r.seconds:6.1f}s  "
                + ("(finished earlier)  " if done else "")
                + "  ".join(
                    f"{t}/{m}={r.metrics[t][m]:.4f}" for t, m in _primary(r.directions, r.metrics).items()
                )
            )
    first_data = data_cache[_data_key(next(iter(experiment.variants.values())).data)]
    comparison = aggregate(
        runs,
        baseline if len(labels) > 1 else None,
        metrics=cfg.delta_m_metrics,
        auxiliary=[t.name for t in first_data.tasks if t.auxiliary],
    )
    comparison["data"] = dict(first_data.info.items())
    caps = {label: v.trainer.epochs for label, v in experiment.variants.items()}
    comparison["cap_bound"] = cap_bound(runs, caps)  # runs stopped by the epoch cap while improving
    comparison["epoch_cap"] = cfg.trainer.epochs
    wins = paired_wins(comparison) if multi else None
    if wins is not None:
        comparison["paired"] = wins
    if main:
        write_tables(comparison, root, title=f"{cfg.name}: {runs[0].split} metrics")
    if cfg.plots and main:
        histories: dict[str, list[list[dict[str, Any]]]] = {}
        for r in runs:
            histories.setdefault(r.label, []).append(r.history)
        write_experiment_plots(root, histories, title=cfg.name)
    if multi:
        table = comparison_table(
            comparison, title=f"{cfg.name}: {runs[0].split} metrics (mean ± std over seeds)"
        )
    else:
        table = metrics_table(runs[0].metrics, title=f"{cfg.name}: {runs[0].split} metrics")
    console.print(table)
    if wins is not None:
        console.print(wins_table(wins, title=f"{cfg.name}: Δm paired over seeds"))
    note = cap_note(comparison["cap_bound"], len(runs), cfg.trainer.epochs if len(set(caps.values())) == 1 else None)
    if note:
        console.print(f"[bold yellow]{note}[/bold yellow]", highlight=False)
    if multi and comparison.get("auxiliary"):
        console.print(comparison_table(comparison, title="auxiliary tasks (not in Δm)", auxiliary=True))
    if main:
        (root / STATUS_FILE).unlink(missing_ok=True)  # every run finished
    console.print(f"Run directory: {root}")
    return ExperimentResult(root, runs, comparison)


def evaluate_run_dir(
    run_dir: str | Path, *, split: str = "test", console: Console | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """Re-evaluate every checkpoint under ``run_dir`` on ``split``; print one table; return ``{run: metrics}``."""
    root = Path(run_dir)
    console = console or Console()
    if not root.exists():
        raise CheckpointError(f"Run directory {str(root)!r} does not exist.")
    results: dict[str, dict[str, dict[str, float]]] = {}
    data_cache: dict[str, DataSplits] = {}
    for rd in find_runs(root):
        cfg = read_config(rd)
        data_spec = with_saved_preprocessor(cfg.data, rd)
        key = _data_key(data_spec)
        if key not in data_cache:
            data_cache[key] = build_data(data_spec)
        splits = model_data(cfg.model, data_cache[key])
        data = {"test": splits.test, "val": splits.val, "train": splits.train}.get(split)
        if data is None:
            raise CheckpointError(
                f"The data of {str(rd)!r} has no {split!r} split; choose another with --split."
            )
        run = load_run(rd, splits=splits)  # the best weights, else the last
        trainer = build_trainer(cfg, run.model, splits.tasks, device=_device(cfg), progress=False)
        name = str(rd.relative_to(root)) if rd != root else rd.name
        results[name] = trainer.evaluate(data, batch_size=max(cfg.trainer.batch_size, 1024))
        console.print(metrics_table(results[name], title=f"{name}: {split} metrics"))
    return results
