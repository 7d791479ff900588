"""Pure functions over per-task results."""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["delta_m"]


def delta_m(
    results: Mapping[str, float], baseline: Mapping[str, float], higher_is_better: Mapping[str, bool]
) -> float:
    """Mean relative improvement over a baseline, in percent (Maninis et al. 2019; Vandenhende et al. 2021).

    ``Δm = 100/T * Σ_t s_t (M_t - B_t) / |B_t|`` with ``s_t = +1`` when higher is better for task
    ``t``'s metric and ``-1`` otherwise, so a positive Δm is an improvement.

    Args:
        results: ``{task: metric value}`` of the model.
        baseline: ``{task: metric value}`` of the baseline (usually single-task models).
        higher_is_better: ``{task: direction of its metric}``.
    """
    terms = []
    for task, value in results.items():
        b = baseline[task]
        if b == 0 or math.isnan(b) or math.isnan(value):
            return math.nan
        sign = 1.0 if higher_is_better[task] else -1.0
        terms.append(sign * (value - b) / abs(b))
    return 100.0 * sum(terms) / len(terms) if terms else math.nan
