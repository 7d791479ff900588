"""Analysis of trained models and runs: gate distributions and PNG plots.

Plotting needs matplotlib (``pip install 'mtlkit[plot]'``); it is imported when a plot is drawn,
so the rest of this package works without it.
"""

from mtlkit.analysis.gates import (
    QUANTILE_LEVELS,
    GateStats,
    collect_gates,
    gate_statistics,
    gate_statistics_from_weights,
    reduce_gate,
)
from mtlkit.analysis.plots import (
    final_values,
    plot_final_loss_histogram,
    plot_gate_distributions,
    plot_gate_means,
    plot_loss_curves,
    plot_weight_trajectories,
    require_matplotlib,
    save_figure,
    series,
    write_experiment_plots,
)

__all__ = [
    "QUANTILE_LEVELS",
    "GateStats",
    "collect_gates",
    "final_values",
    "gate_statistics",
    "gate_statistics_from_weights",
    "plot_final_loss_histogram",
    "plot_gate_distributions",
    "plot_gate_means",
    "plot_loss_curves",
    "plot_weight_trajectories",
    "reduce_gate",
    "require_matplotlib",
    "save_figure",
    "series",
    "write_experiment_plots",
]
