"""Named reproductions of published experiments: ``mtlkit reproduce NAME``.

Each reproduction builds ordinary experiment configs, trains them with
:func:`mtlkit.experiment.run_experiment` and writes its own report: tables (markdown, CSV, JSON)
with mean ± std over seeds, the paper's numbers beside ours where published, and PNG plots.

Example:
    >>> from mtlkit.reproduce import list_reproductions
    >>> "mmoe-synthetic" in list_reproductions()
    True
"""

from mtlkit.reproduce import (  # noqa: F401
    balancers,
    esmm,
    mmoe_census,
    mmoe_synthetic,
    mnist_fashion,
    youtube_ranking,
)
from mtlkit.reproduce._base import REPRODUCTIONS, Job, JobResult, Report, Reproduction, Settings
from mtlkit.reproduce.runner import (
    ReproductionResult,
    list_reproductions,
    main_metrics,
    plan_reproduction,
    report_reproduction,
    resume_reproduction,
    run_reproduction,
)
from mtlkit.reproduce.tables import Column, markdown_table, mean_std, write_table

__all__ = [
    "REPRODUCTIONS",
    "Column",
    "Job",
    "JobResult",
    "Report",
    "Reproduction",
    "ReproductionResult",
    "Settings",
    "list_reproductions",
    "main_metrics",
    "markdown_table",
    "mean_std",
    "plan_reproduction",
    "report_reproduction",
    "resume_reproduction",
    "run_reproduction",
    "write_table",
]
