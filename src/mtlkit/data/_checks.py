"""Input checks of user tabular files, with messages that name the file, the column, the row and the fix.

Rows are counted as *data rows*: 1 is the first row after the header (blank lines are not
counted). Rows held out of the training file (``val_fraction`` / ``test_fraction``) are named by
their row in the training file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mtlkit.data.preprocessing import MISSING_VALUES
from mtlkit.errors import DataError

__all__ = ["MIN_TRAIN_ROWS", "Fraction", "Origin", "check_numeric", "check_split_sizes", "check_task_labels"]

MIN_TRAIN_ROWS = 2
"""The fewest labelled training rows a tabular dataset accepts."""

SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class Origin:
    """Where the rows of one split come from: a file and each row's data-row index in it (0-based)."""

    file: str
    rows: np.ndarray

    def row(self, i: int) -> str:
        """``"data row 7"`` for the split's ``i``-th row."""
        return f"data row {int(self.rows[i]) + 1}"


def check_numeric(values: np.ndarray, *, column: str, origin: Origin) -> None:
    """Refuse non-numeric or infinite values of a numeric feature column (missing markers are fine)."""
    if values.dtype.kind in "biuf":
        x = values.astype(np.float64)
    else:
        s = np.char.strip(values.astype(str))
        missing = np.isin(np.char.lower(s), list(MISSING_VALUES))
        x = np.full(s.shape[0], np.nan)
        present = np.flatnonzero(~missing)
        try:
            x[present] = s[present].astype(np.float64)
        except ValueError:
            for i in present.tolist():
                try:
                    float(s[i])
                except ValueError:
                    raise DataError(
                        f"{origin.file}: numeric column {column!r} holds the non-numeric value {str(s[i])!r} in "
                        f"{origin.row(i)}; list the column as categorical, or clean the value."
                    ) from None
    refuse_infinite(x, column, origin)


def check_split_sizes(
    n: int, *, train: str, val_fraction: float, test_fraction: float, n_val: int, n_test: int
) -> None:
    """Refuse a training file too small for the held-out fractions asked of it."""
    problems = []
    for what, frac, k in (("val", val_fraction, n_val), ("test", test_fraction, n_test)):
        if frac > 0 and k == 0:
            problems.append(f"{what}_fraction={frac:g} holds out round({frac:g} x {n}) = 0 rows")
    n_train = n - n_val - n_test
    if n_train < MIN_TRAIN_ROWS:
        problems.append(f"{n_train} row{'s' if n_train != 1 else ''} would be left to train")
    if not problems:
        return
    need = _rows_needed(val_fraction, test_fraction)
    raise DataError(
        f"{train} has {n} data row{'s' if n != 1 else ''}, too few to split: {'; '.join(problems)}. "
        f"Training needs at least {MIN_TRAIN_ROWS} rows and each held-out split at least 1"
        + (f" (with these fractions: at least {need} rows in the file)" if need else "")
        + ". Add rows, give explicit files (val: FILE, test: FILE), or change val_fraction / test_fraction "
        "(0 = no such split)."
    )


def _rows_needed(val_fraction: float, test_fraction: float, limit: int = 1_000_000) -> int | None:
    for n in range(1, limit):
        n_val, n_test = round(val_fraction * n), round(test_fraction * n)
        if (
            (val_fraction == 0 or n_val > 0)
            and (test_fraction == 0 or n_test > 0)
            and n - n_val - n_test >= MIN_TRAIN_ROWS
        ):
            return n
    return None


def check_task_labels(
    present: Mapping[str, Mapping[str, np.ndarray]],
    columns: Mapping[str, str],
    origins: Mapping[str, Origin],
    held_out: Sequence[str] = (),
) -> None:
    """Refuse a task without any label in a split (its loss or metrics would be NaN).

    Args:
        present: ``{split: {task: bool per row (label present)}}``.
        columns: ``{task: label column}``.
        origins: ``{split: Origin}``.
        held_out: splits carved from the training file (the fix differs).
    """
    for split, tasks in present.items():
        origin = origins[split]
        for task, has in tasks.items():
            if has.any():
                continue
            n = has.shape[0]
            where = (
                f"the {n} {SPLIT_NAMES[split]} row{'s' if n != 1 else ''} held out of {origin.file}"
                if split in held_out
                else f"{origin.file} ({SPLIT_NAMES[split]} data, {n} row{'s' if n != 1 else ''})"
            )
            if split == "train":
                fix = "Fill in labels, fix the column name, or remove the task."
            elif split in held_out:
                fix = (
                    f"Its {SPLIT_NAMES[split]} metrics would be NaN. Raise {split}_fraction, give a {split} file "
                    "with labels for every task, or remove the task."
                )
            else:
                fix = (
                    f"Its {SPLIT_NAMES[split]} metrics would be NaN. Add labels for it to this file, or remove "
                    "the task."
                )
            raise DataError(
                f"Task {task!r} has no label in {where}: every value of column {columns[task]!r} is blank, "
                f"NA or NaN. {fix}"
            )


if TYPE_CHECKING:
    Fraction = float
else:

    class Fraction(float):
        """A float in ``[0, 1)``, as a parameter annotation: configs are checked against the range when
        they are validated (``mtlkit validate`` refuses what ``mtlkit run`` would); Python callers
        pass plain floats."""

        @classmethod
        def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
            from pydantic_core import core_schema

            return core_schema.float_schema(ge=0.0, lt=1.0)


def refuse_infinite(x: np.ndarray, column: str, origin: Any) -> None:
    """Refuse ±inf in the float values ``x`` of numeric column ``column`` (NaN is a missing value),
    naming the file and the first row (``origin``: where the rows came from)."""
    bad = np.flatnonzero(np.isinf(x))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{origin.file}: numeric column {column!r} holds {float(x[i])!r} in {origin.row(i)}"
            + (f" ({bad.size} infinite values in all)" if bad.size > 1 else "")
            + "; numeric features must be finite numbers. Clean the value, or leave the cell blank "
            "(blank, NA and NaN mark a missing value, which becomes the training mean)."
        )
