"""The reproduction contract: settings, jobs, results and the registry of named recipes.

A reproduction is a named recipe. :meth:`Reproduction.plan` turns :class:`Settings` into
:class:`Job` s, each one ordinary experiment config that :func:`mtlkit.experiment.run_experiment`
trains (there is no second training loop); :meth:`Reproduction.report` reads the finished
runs and writes the reproduction's tables and plots. :func:`mtlkit.reproduce.run_reproduction`
connects the two.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from mtlkit._registry import Registry
from mtlkit.config.load import ResolvedExperiment
from mtlkit.experiment import ExperimentResult, RunResult

__all__ = [
    "REPRODUCTIONS",
    "Job",
    "JobResult",
    "Report",
    "Reproduction",
    "Settings",
    "registered_without_required",
]

REPRODUCTIONS: Registry = Registry("reproduction")
"""Reproduction classes (``mtlkit reproduce NAME``); each instance follows :class:`Reproduction`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """What the user asked for.

    Attributes:
        full: the paper's scale instead of the quick default.
        seeds: the seeds to run (``None``: the recipe's default for ``full``).
        overrides: ``dotted.key=value`` overrides applied to every experiment config of the
            reproduction (e.g. ``trainer.epochs=2``), validated like ``mtlkit run``'s.
    """

    full: bool = False
    seeds: tuple[int, ...] | None = None
    overrides: tuple[str, ...] = ()

    def seed_list(self, *, default: int, full: int) -> list[int]:
        """The seeds: the user's, else ``0 .. n-1`` with the recipe's default count."""
        if self.seeds is not None:
            return list(self.seeds)
        return list(range(full if self.full else default))


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One experiment of a reproduction.

    Attributes:
        key: unique name of the job (letters, digits, ``_ - .``); names its run directory.
        config: the raw experiment config (a mapping as in a YAML file; ``compare`` and
            ``seeds`` allowed). The runner sets ``name`` to ``key`` and applies the overrides.
        meta: what the report needs to place the job's runs (e.g. ``{"correlation": 0.5}``).
        overridable: whether the user's ``key=value`` overrides apply to this job (``False`` for
            a side job whose config has another shape, e.g. a smoke run on a real-data sample).
    """

    key: str
    config: Mapping[str, Any]
    meta: Mapping[str, Any] = field(default_factory=dict)
    overridable: bool = True


@dataclass(slots=True)
class JobResult:
    """A finished job: the job, its validated experiment (overrides applied) and what
    :func:`~mtlkit.experiment.run_experiment` returned."""

    job: Job
    experiment: ResolvedExperiment
    result: ExperimentResult

    @property
    def runs(self) -> list[RunResult]:
        return self.result.runs


@dataclass(slots=True)
class Report:
    """What a reproduction wrote.

    Attributes:
        markdown: the summary (tables and notes) that is printed and written to ``report.md``.
        files: every file written, ``{short name: path}`` (tables in ``.md``, ``.csv``,
            ``.json``; plots in ``.png``).
    """

    markdown: str
    files: dict[str, Path] = field(default_factory=dict)


@runtime_checkable
class Reproduction(Protocol):
    """A named recipe reproducing a published experiment.

    Class attributes: ``paper`` (the citation), ``minutes`` (the measured wall time of the
    default run on 2 CPU cores; shown by ``mtlkit reproduce --list``) and ``threads`` (torch
    intra-op threads the CLI uses by default; ``None``: torch's default). The class docstring's
    first line is the one-line description.
    """

    paper: ClassVar[str]
    minutes: ClassVar[float]
    threads: ClassVar[int | None]

    def plan(self, settings: Settings) -> list[Job]:
        """The experiments to run for ``settings`` (configs only; nothing is built or trained)."""
        ...

    def report(self, results: Sequence[JobResult], out_dir: Path, settings: Settings) -> Report:
        """Write tables (markdown, CSV, JSON) and PNG plots into ``out_dir``; return the summary."""
        ...


def registered_without_required(
    registry: Registry, *, injected: Sequence[str] = ("tasks",)
) -> tuple[list[str], dict[str, str]]:
    """Names of a registry whose builders need no argument beyond the injected ones.

    Returns:
        ``(usable names, {skipped name: reason})``: a builder with a required parameter (e.g.
        ``static`` needs ``weights``) cannot be run without a hand-chosen value, so it is skipped.
    """
    usable, skipped = [], {}
    for name in registry.names():
        params = inspect.signature(registry.get(name)).parameters.values()
        required = [
            p.name
            for p in params
            if p.name not in injected
            and p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if required:
            skipped[name] = f"needs {', '.join(repr(r) for r in required)}, which has no default"
        else:
            usable.append(name)
    return usable, skipped
