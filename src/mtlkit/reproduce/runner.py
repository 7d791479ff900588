"""Run a named reproduction: validate every config, train each job with ``run_experiment``,
then let the recipe write its report into one run directory."""

from __future__ import annotations

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
from rich.console import Console

from mtlkit import __version__
from mtlkit.config.load import ResolvedExperiment, apply_overrides, resolve
from mtlkit.errors import ConfigError
from mtlkit.experiment import RunResult, run_experiment
from mtlkit.jsonio import dumps
from mtlkit.reproduce._base import REPRODUCTIONS, Job, JobResult, Report, Reproduction, Settings
from mtlkit.reproduce.terminal import print_markdown
from mtlkit.utils import torch_threads

__all__ = [
    "ReproductionResult",
    "list_reproductions",
    "main_metrics",
    "plan_reproduction",
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
) -> ReproductionResult:
    """Run the reproduction ``name`` and write its report.

    Every job's config is validated before anything trains. Each job is trained by
    :func:`~mtlkit.experiment.run_experiment` into ``<run dir>/runs/``; the recipe then writes
    its tables (``.md``, ``.csv``, ``.json``) and plots (``.png``) into the run directory
    ``<output_dir>/<name>-<timestamp>/``, with ``report.md`` (the summary) and
    ``reproduction.json`` (settings, wall time, machine, files).

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
    """
    recipe, settings, planned = plan_reproduction(name, full=full, seeds=seeds, overrides=overrides)
    canonical = REPRODUCTIONS.canonical(name)
    console = console or Console()
    root = _new_dir(Path(output_dir), canonical)
    quiet = Console(quiet=True)
    load_before = _load()
    started = time.perf_counter()
    results: list[JobResult] = []
    show_bar = console.is_terminal if progress is None else progress
    console.print(f"[bold]reproduce {canonical}[/bold]: {len(planned)} experiment(s) -> {root}")
    with torch_threads(threads):
        bar = None
        if show_bar:
            from rich.progress import Progress

            bar = Progress(console=console, transient=True)
            bar.start()
            task = bar.add_task(canonical, total=len(planned))
        try:
            for i, (job, experiment) in enumerate(planned, 1):
                t0 = time.perf_counter()
                try:
                    result = run_experiment(
                        experiment, output_dir=root / "runs", console=quiet, progress=False
                    )
                except Exception:
                    if not results:  # nothing finished (e.g. the data files are missing): leave no empty run
                        shutil.rmtree(root, ignore_errors=True)
                    raise
                jr = JobResult(job, experiment, result)
                results.append(jr)
                line = (
                    f"[{i}/{len(planned)}] {job.key} ({time.perf_counter() - t0:.1f}s): {_summary_line(jr)}"
                )
                console.print(line, markup=False, highlight=False)
                if bar is not None:
                    bar.advance(task)
        finally:
            if bar is not None:
                bar.stop()
        report = recipe.report(results, root, settings)
    seconds = time.perf_counter() - started
    header = _header(canonical, recipe, settings, seconds, threads, command, load_before)
    (root / "report.md").write_text(header + "\n" + report.markdown, encoding="utf-8")
    files = {k: str(v.relative_to(root)) for k, v in report.files.items()}
    record = {
        "reproduction": canonical,
        "paper": recipe.paper,
        "command": command,
        "settings": {"full": settings.full, "seeds": settings.seeds, "overrides": list(settings.overrides)},
        "jobs": [
            {"key": r.job.key, "meta": dict(r.job.meta), "run_dir": str(r.result.run_dir.relative_to(root))}
            for r in results
        ],
        "seconds": seconds,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": threads if threads is not None else torch.get_num_threads(),
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
    (root / "reproduction.json").write_text(dumps(record), encoding="utf-8")
    print_markdown(console, report.markdown)  # tables whole: names never cut to 'single_t…'
    console.print(f"Wall time {seconds:.0f}s. Report: {root / 'report.md'}")
    return ReproductionResult(canonical, root, results, report, seconds)


def _header(
    name: str,
    recipe: Reproduction,
    settings: Settings,
    seconds: float,
    threads: int | None,
    command: str | None,
    load: list[float] | None,
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
        + (f", load average at start {load[0]:.1f}." if load else ".")
    )
    return "\n".join(lines) + "\n"
