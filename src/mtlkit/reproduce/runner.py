"""Run a named reproduction: validate every config, train each job with ``run_experiment``,
then let the recipe write its report into one run directory."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from mtlkit import __version__
from mtlkit.config.load import ResolvedExperiment, apply_overrides, resolve
from mtlkit.errors import CheckpointError, ConfigError, MtlkitError
from mtlkit.experiment import ExperimentResult, RunResult, resume_experiment, run_experiment
from mtlkit.jsonio import dumps
from mtlkit.reproduce._base import REPRODUCTIONS, Job, JobResult, Report, Reproduction, Settings
from mtlkit.reproduce.terminal import print_markdown
from mtlkit.utils import torch_threads

__all__ = [
    "ReproductionResult",
    "list_reproductions",
    "main_metrics",
    "plan_reproduction",
    "report_reproduction",
    "resume_reproduction",
    "run_reproduction",
]


@dataclass(slots=True)
class ReproductionResult:
    """A finished reproduction: its directory, the jobs' results, the report and the wall time."""

    name: str
    run_dir: Path
    results: list[JobResult]
    report: Report
    seconds: float


def list_reproductions() -> dict[str, dict[str, Any]]:
    """``{name: {"summary", "paper", "minutes"}}`` of every registered reproduction."""
    out = {}
    for name in REPRODUCTIONS.names():
        cls = REPRODUCTIONS.get(name)
        out[name] = {
            "summary": REPRODUCTIONS.summary(name),
            "paper": getattr(cls, "paper", ""),
            "minutes": getattr(cls, "minutes", float("nan")),
        }
    return out


def _settings(full: bool, seeds: int | Sequence[int] | None, overrides: Sequence[str]) -> Settings:
    if isinstance(seeds, bool) or (isinstance(seeds, int) and seeds < 1):
        raise ConfigError([f"seeds: must be a positive number of seeds or a list of seeds; got {seeds!r}."])
    seed_tuple = tuple(range(seeds)) if isinstance(seeds, int) else None if seeds is None else tuple(seeds)
    if seed_tuple is not None and len(set(seed_tuple)) != len(seed_tuple):
        raise ConfigError([f"seeds: must be distinct; got {list(seed_tuple)}."])
    return Settings(full=full, seeds=seed_tuple, overrides=tuple(overrides))


def plan_reproduction(
    name: str,
    *,
    full: bool = False,
    seeds: int | Sequence[int] | None = None,
    overrides: Sequence[str] = (),
) -> tuple[Reproduction, Settings, list[tuple[Job, ResolvedExperiment]]]:
    """The recipe, the settings and every job with its validated experiment, nothing trained.

    Raises:
        UnknownComponentError: no reproduction is called ``name``.
        ConfigError: a job's config is invalid (all problems of all jobs, each listed once).
    """
    recipe = REPRODUCTIONS.get(name)()
    settings = _settings(full, seeds, overrides)
    jobs = recipe.plan(settings)
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise ConfigError([f"reproduction {name!r}: job keys must be unique; got {keys}."])
    planned, problems = [], []
    for job in jobs:
        raw = {**dict(job.config), "name": job.key}
        try:
            if settings.overrides and job.overridable:
                raw = apply_overrides(raw, settings.overrides)
            planned.append((job, resolve(raw, source=f"reproduction {name!r}, job {job.key!r}")))
        except ConfigError as exc:
            problems += [p for p in exc.problems if p not in problems]
    if problems:
        source = f"reproduction {name!r}" + (" with overrides" if settings.overrides else "")
        raise ConfigError(problems, source=source)
    return recipe, settings, planned


def _new_dir(root: Path, name: str) -> Path:
    base = root / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    path.mkdir(parents=True)
    return path


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return None


def main_metrics(run: RunResult) -> dict[str, str]:
    """Each task's main metric: its first metric other than the loss (the loss if it has none)."""
    out = {}
    for task, ms in run.metrics.items():
        names = [m for m in ms if m != "loss"]
        out[task] = names[0] if names else "loss"
    return out


def _summary_line(jr: JobResult) -> str:
    parts = []
    for label in dict.fromkeys(r.label for r in jr.runs):
        rs = [r for r in jr.runs if r.label == label]
        vals = " ".join(
            f"{t}/{m}={sum(r.metrics[t][m] for r in rs) / len(rs):.4f}"
            for t, m in main_metrics(rs[0]).items()
        )
        parts.append(f"{label} {vals}")
    return "; ".join(parts)


RECORD = "reproduction.json"
"""The run directory's record: written when the reproduction starts (``"status": "running"``,
what :func:`resume_reproduction` re-plans from) and again when its report is written."""


def run_reproduction(
    name: str,
    *,
    full: bool = False,
    seeds: int | Sequence[int] | None = None,
    overrides: Sequence[str] = (),
    output_dir: str | os.PathLike[str] = "runs",
    console: Console | None = None,
    progress: bool | None = None,
    threads: int | None = None,
    command: str | None = None,
    jobs: int = 1,
) -> ReproductionResult:
    """Run the reproduction ``name`` and write its report.

    Every job's config is validated before anything trains. Each job is trained by
    :func:`~mtlkit.experiment.run_experiment` into ``<run dir>/runs/``; the recipe then writes
    its tables (``.md``, ``.csv``, ``.json``) and plots (``.png``) into the run directory
    ``<output_dir>/<name>-<timestamp>/``, with ``report.md`` (the summary) and
    ``reproduction.json`` (settings, wall time, machine, files). An interrupted reproduction
    (Ctrl-C, a crash, a killed session) continues with :func:`resume_reproduction`.

    Args:
        name: a registered reproduction (see :func:`list_reproductions`).
        full: the paper's scale instead of the quick default.
        seeds: a number of seeds (``0 .. n-1``) or the seeds themselves (default: the recipe's).
        overrides: ``dotted.key=value`` applied to every job's config.
        output_dir: parent of the run directory.
        console: where progress and the report are printed (default: a new rich console).
        progress: a live bar over the jobs (default: when the console is a terminal); otherwise
            one line per finished job.
        threads: torch intra-op threads while it runs (restored afterwards; ``None``: unchanged).
        command: the command line to record in ``reproduction.json`` and ``report.md``.
        jobs: experiments trained at once, each in its own process with ``threads`` threads
            (e.g. 2 jobs of 1 thread on 2 cores); 1 trains them one after another here.
    """
    recipe, settings, planned = plan_reproduction(name, full=full, seeds=seeds, overrides=overrides)
    canonical = REPRODUCTIONS.canonical(name)
    root = _new_dir(Path(output_dir), canonical)
    _write_start_record(root, canonical, recipe, settings, command)
    return _execute(
        canonical, recipe, settings, planned, root, console, progress, threads, command, jobs, resume=False
    )


def resume_reproduction(
    run_dir: str | os.PathLike[str],
    *,
    console: Console | None = None,
    progress: bool | None = None,
    threads: int | None = None,
    command: str | None = None,
    jobs: int = 1,
) -> ReproductionResult:
    """Finish the reproduction in ``run_dir`` and write its report.

    The jobs are re-planned from the settings ``reproduction.json`` recorded when it started.
    In each job's experiment, finished runs are kept, an interrupted run continues from its last
    checkpoint (see :func:`~mtlkit.experiment.resume_experiment`: the same metrics as an
    uninterrupted run) and runs not started are trained; jobs not started are started.

    Raises:
        CheckpointError: ``run_dir`` is not a reproduction's run directory.
    """
    root, canonical, recipe, settings, planned, first_command = _replan(run_dir)
    return _execute(
        canonical,
        recipe,
        settings,
        planned,
        root,
        console,
        progress,
        threads,
        command or first_command,
        jobs,
        resume=True,
    )


def report_reproduction(
    run_dir: str | os.PathLike[str], *, console: Console | None = None, command: str | None = None
) -> ReproductionResult:
    """The report of the runs that have finished so far in the reproduction ``run_dir``, written
    into it without training anything (for a reproduction that runs for hours, or one that
    stopped); its header names the runs still missing. :func:`resume_reproduction` later
    replaces it with the whole report.

    Raises:
        CheckpointError: ``run_dir`` is not a reproduction's run directory, or no run has finished.
    """
    from mtlkit.experiment import finished_runs

    root, canonical, recipe, settings, planned, _ = _replan(run_dir)
    console = console or Console()
    results: list[JobResult] = []
    missing: list[str] = []
    for job, experiment in planned:
        job_dir = _job_dir(root, job.key)
        if job_dir is None:
            missing.append(f"{job.key} (not started)")
            continue
        result, absent = finished_runs(job_dir)
        missing += [f"{job.key}: {a}" for a in absent]
        if result.runs:
            results.append(JobResult(job, experiment, result))
    if not results:
        raise CheckpointError(
            f"No run of the reproduction in {str(root)!r} has finished yet; nothing to report. "
            f"Continue it with: mtlkit reproduce --resume {root}"
        )
    try:
        report = recipe.report(results, root, settings)
    except (KeyError, IndexError, ValueError) as exc:
        raise CheckpointError(
            f"The {canonical} report needs runs that have not finished yet ({type(exc).__name__}: {exc}); "
            f"missing: {', '.join(missing)}. Continue it with: mtlkit reproduce --resume {root}"
        ) from None
    done = sum(len(r.runs) for r in results)
    lines = [f"# Reproduction: {canonical} (partial)", "", recipe.paper, ""]
    if command:
        lines += ["```bash", command, "```", ""]
    lines.append(
        f"**Partial report**: {done} run(s) finished; still missing: {', '.join(missing) or 'none'}. "
        f"Finish with `mtlkit reproduce --resume {root}`."
    )
    (root / "report.md").write_text("\n".join(lines) + "\n\n" + report.markdown, encoding="utf-8")
    print_markdown(console, report.markdown)
    console.print(
        f"Partial report ({done} finished run(s); missing: {', '.join(missing) or 'none'}): {root / 'report.md'}"
    )
    return ReproductionResult(canonical, root, results, report, 0.0)


def _write_start_record(
    root: Path, name: str, recipe: Reproduction, settings: Settings, command: str | None
) -> None:
    record = {
        "reproduction": name,
        "paper": recipe.paper,
        "command": command,
        "settings": _settings_record(settings),
        "status": "running",
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    (root / RECORD).write_text(dumps(record), encoding="utf-8")


def _settings_record(settings: Settings) -> dict[str, Any]:
    return {
        "full": settings.full,
        "seeds": None if settings.seeds is None else list(settings.seeds),
        "overrides": list(settings.overrides),
    }


def _replan(
    run_dir: str | os.PathLike[str],
) -> tuple[Path, str, Reproduction, Settings, list[tuple[Job, ResolvedExperiment]], str | None]:
    root = Path(run_dir)
    path = root / RECORD
    if not path.is_file():
        raise CheckpointError(
            f"{str(root)!r} has no {RECORD}: pass the run directory `mtlkit reproduce` printed "
            "(runs/<name>-<date>-<time>)."
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        name, st = record["reproduction"], record["settings"]
        seeds = None if st.get("seeds") is None else [int(x) for x in st["seeds"]]
        full, overrides = bool(st.get("full", False)), [str(o) for o in st.get("overrides", [])]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{str(path)!r} is damaged ({type(exc).__name__}: {exc}).") from None
    recipe, settings, planned = plan_reproduction(name, full=full, seeds=seeds, overrides=overrides)
    return root, REPRODUCTIONS.canonical(name), recipe, settings, planned, record.get("command")


def _job_dir(root: Path, key: str) -> Path | None:
    """The experiment directory of job ``key`` under ``root/runs`` (``<key>-<date>-<time>``, whose
    config names the job), or None when the job has not started."""
    runs = root / "runs"
    if not runs.is_dir():
        return None
    for d in sorted(runs.iterdir()):
        cfg = d / "config.yaml"
        if d.is_dir() and d.name.startswith(f"{key}-") and cfg.is_file() and _config_name(cfg) == key:
            return d
    return None


def _config_name(path: Path) -> object:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return raw.get("name") if isinstance(raw, dict) else None


def _train_job(
    config: dict[str, Any], source: str, runs_dir: str, job_dir: str | None, threads: int | None
) -> ExperimentResult:
    """One job's experiment (resumed when ``job_dir`` exists); the unit a worker process runs."""
    quiet = Console(quiet=True)
    with torch_threads(threads):
        if job_dir is not None:
            return resume_experiment(job_dir, console=quiet, progress=False)
        return run_experiment(
            resolve(config, source=source), output_dir=runs_dir, console=quiet, progress=False
        )


def _execute(
    canonical: str,
    recipe: Reproduction,
    settings: Settings,
    planned: list[tuple[Job, ResolvedExperiment]],
    root: Path,
    console: Console | None,
    progress: bool | None,
    threads: int | None,
    command: str | None,
    jobs: int,
    *,
    resume: bool,
) -> ReproductionResult:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError([f"jobs: must be a whole number >= 1; got {jobs!r}."])
    console = console or Console()
    load_before = _load()
    started = time.perf_counter()
    show_bar = console.is_terminal if progress is None else progress
    verb = "resume" if resume else "reproduce"
    console.print(f"[bold]{verb} {canonical}[/bold]: {len(planned)} experiment(s) -> {root}")
    args = [
        (
            experiment.to_dict(),
            experiment.source,
            str(root / "runs"),
            str(d) if resume and (d := _job_dir(root, job.key)) is not None else None,
        )
        for job, experiment in planned
    ]
    done: dict[int, JobResult] = {}
    try:
        with torch_threads(threads if jobs == 1 else None):
            bar = None
            if show_bar:
                from rich.progress import Progress

                bar = Progress(console=console, transient=True)
                bar.start()
                task = bar.add_task(canonical, total=len(planned))
            t0 = time.perf_counter()

            def finished(i: int, result: ExperimentResult) -> None:
                job, experiment = planned[i]
                done[i] = jr = JobResult(job, experiment, result)
                line = f"[{len(done)}/{len(planned)}] {job.key} ({time.perf_counter() - t0:.1f}s): {_summary_line(jr)}"
                console.print(line, markup=False, highlight=False)
                if bar is not None:
                    bar.advance(task)

            try:
                if jobs == 1:
                    for i, a in enumerate(args):
                        t0 = time.perf_counter()
                        finished(i, _train_job(*a, None))
                else:
                    _parallel(args, jobs, threads, finished)
            finally:
                if bar is not None:
                    bar.stop()
            results = [done[i] for i in range(len(planned))]
            report = recipe.report(results, root, settings)
    except BaseException as exc:
        if not resume and not done and _job_dir_any(root) is None:
            shutil.rmtree(root, ignore_errors=True)  # nothing started (e.g. the data files are missing)
        elif isinstance(exc, (KeyboardInterrupt, MtlkitError)):
            exc.reproduction_dir = root  # type: ignore[attr-defined]  # the CLI says how to continue
        raise
    seconds = time.perf_counter() - started
    header = _header(
        canonical, recipe, settings, seconds, threads, command, load_before, jobs=jobs, resumed=resume
    )
    (root / "report.md").write_text(header + "\n" + report.markdown, encoding="utf-8")
    files = {k: str(v.relative_to(root)) for k, v in report.files.items()}
    record = {
        "reproduction": canonical,
        "paper": recipe.paper,
        "command": command,
        "settings": _settings_record(settings),
        "status": "finished",
        "resumed": resume,
        "jobs": [
            {"key": r.job.key, "meta": dict(r.job.meta), "run_dir": str(r.result.run_dir.relative_to(root))}
            for r in results
        ],
        "seconds": seconds,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": threads if threads is not None else torch.get_num_threads(),
            "parallel_jobs": jobs,
            "load_average_start": load_before,
            "load_average_end": _load(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "mtlkit": __version__,
        },
        "finished": datetime.now().isoformat(timespec="seconds"),
        "files": {"report": "report.md", **files},
    }
    (root / RECORD).write_text(dumps(record), encoding="utf-8")
    print_markdown(console, report.markdown)  # tables whole: names never cut to 'single_t…'
    console.print(f"Wall time {seconds:.0f}s. Report: {root / 'report.md'}")
    return ReproductionResult(canonical, root, results, report, seconds)


def _job_dir_any(root: Path) -> Path | None:
    runs = root / "runs"
    return next((d for d in runs.iterdir() if d.is_dir()), None) if runs.is_dir() else None


def _parallel(args: list[tuple[Any, ...]], jobs: int, threads: int | None, finished: Any) -> None:
    """Each job in a fresh (spawned) process, ``jobs`` at a time; results reported as they come."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(args)), mp_context=ctx) as pool:
        futures = {pool.submit(_train_job, *a, threads): i for i, a in enumerate(args)}
        pending = set(futures)
        try:
            while pending:
                ready, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in ready:
                    finished(futures[f], f.result())
        except BaseException:
            for f in pending:
                f.cancel()
            raise


def _header(
    name: str,
    recipe: Reproduction,
    settings: Settings,
    seconds: float,
    threads: int | None,
    command: str | None,
    load: list[float] | None,
    *,
    jobs: int = 1,
    resumed: bool = False,
) -> str:
    lines = [f"# Reproduction: {name}", "", f"{recipe.paper}", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    scale = "full (paper scale)" if settings.full else "default (quick)"
    seeds = "recipe default" if settings.seeds is None else ", ".join(map(str, settings.seeds))
    lines.append(
        f"Scale: {scale}; seeds: {seeds}; overrides: {' '.join(settings.overrides) or 'none'}. "
        f"Wall time {seconds:.0f} s on {os.cpu_count()} CPU core(s), "
        f"{threads if threads is not None else torch.get_num_threads()} torch thread(s)"
        + (f" per job, {jobs} jobs at once" if jobs > 1 else "")
        + (f", load average at start {load[0]:.1f}." if load else ".")
        + (" Resumed: the wall time is this session's; runs finished earlier were kept." if resumed else "")
    )
    return "\n".join(lines) + "\n"
