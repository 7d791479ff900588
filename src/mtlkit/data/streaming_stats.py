"""Statistics accumulated batch by batch: numeric moments and category counts.

:class:`RunningMoments` keeps the count, mean and sum of squared deviations of a stream of
float64 values and merges batches with the pairwise update of Chan, Golub and LeVeque (1979)
(``M2 = M2_a + M2_b + delta**2 * n_a * n_b / n``): exact for any order of batches up to
round-off, and without the cancellation of the textbook ``E[x**2] - E[x]**2`` (a column with mean
1e6 and standard deviation 1 keeps about 10 correct digits instead of none). Values are held in
units of the largest magnitude seen so far, so values near the float64 limit cannot overflow
(as :func:`~mtlkit.data.preprocessing.standardisation`).

:class:`CategoryCounts` counts the distinct values of a column over batches with pyarrow's
``value_counts`` and folds the partial counts together (``group_by(...).sum``) whenever they
grow past the distinct values already known, so memory follows the number of distinct values,
not the number of rows.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from mtlkit.data.preprocessing import MISSING_VALUES

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["CategoryCounts", "RunningMoments"]


class RunningMoments:
    """Count, mean and spread of a stream of finite float64 values (NaN values are skipped)."""

    def __init__(self) -> None:
        self.count = 0
        self._scale = 0.0  # the largest |x| seen: mean and M2 are held in units of it
        self._mean = 0.0
        self._m2 = 0.0

    def update(self, x: np.ndarray) -> None:
        """Add the values ``x`` (NaN = missing, skipped)."""
        x = np.asarray(x, dtype=np.float64)
        x = x[~np.isnan(x)]
        if x.size == 0:
            return
        top = float(np.max(np.abs(x)))
        if top > self._scale:
            if self.count and self._scale > 0:
                ratio = self._scale / top
                self._mean *= ratio
                self._m2 *= ratio * ratio
            self._scale = top
        if self._scale == 0.0:  # only zeros so far
            self.count += x.size
            return
        y = x / self._scale
        mean_b = float(y.mean())
        m2_b = float(np.square(y - mean_b).sum())
        self._merge(x.size, mean_b, m2_b)

    def merge(self, other: RunningMoments) -> None:
        """Fold another accumulator's values into this one (as if its values had been added)."""
        if other.count == 0:
            return
        if other._scale == 0.0:
            self.count += other.count
            return
        mean_o, m2_o = other._mean, other._m2
        if other._scale > self._scale:
            if self.count and self._scale > 0:
                ratio = self._scale / other._scale
                self._mean *= ratio
                self._m2 *= ratio * ratio
            self._scale = other._scale
        else:
            ratio = other._scale / self._scale
            mean_o, m2_o = mean_o * ratio, m2_o * ratio * ratio
        self._merge(other.count, mean_o, m2_o)

    def _merge(self, n_b: int, mean_b: float, m2_b: float) -> None:
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean += delta * (n_b / n)
        self._m2 += m2_b + delta * delta * (n_a * n_b / n)
        self.count = n

    @property
    def mean(self) -> float:
        return self._mean * self._scale

    @property
    def variance(self) -> float:
        """The population variance (``ddof=0``)."""
        if self.count == 0:
            return math.nan
        return (self._m2 / self.count) * self._scale * self._scale

    def standardisation(self) -> tuple[float, float]:
        """``(mean, std)`` as :func:`~mtlkit.data.preprocessing.standardisation` gives for the same values:
        a zero or non-finite spread gives 1, an all-zero column ``(0.0, 1.0)``."""
        if self._scale == 0.0:
            return 0.0, 1.0
        std = math.sqrt(max(self._m2, 0.0) / self.count) * self._scale
        return self.mean, std if std > 0 and math.isfinite(std) else 1.0


class CategoryCounts:
    """How often each value of a categorical column occurs, over a stream of pyarrow arrays.

    :meth:`result` returns the counts per value as :class:`TabularPreprocessor` sees the values:
    text stripped of surrounding blanks, numbers as :func:`~mtlkit.data.preprocessing.number_strings` writes them (3.0 and 3 are one
    category), missing markers (``""``, ``?``, ``NA``, ``NaN``, ...) and nulls left out.
    """

    def __init__(self, *, compact_at: int = 1 << 20) -> None:
        self._pieces: list[pa.Table] = []
        self._pending = 0
        self._known = 0
        self._compact_at = compact_at
        self._numeric: bool | None = None

    def update(self, array: pa.Array | pa.ChunkedArray) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        from mtlkit.data.arrow_io import is_numeric_type

        numeric = is_numeric_type(array.type)
        if pa.types.is_integer(array.type):  # ids: exact as text (a float64 would round beyond 2**53)
            array, numeric = pc.cast(array, pa.string()), False
        elif numeric:
            array = pc.cast(array, pa.float64())
        elif not pa.types.is_string(array.type):
            array = pc.cast(array, pa.string())
        if self._numeric is None:
            self._numeric = numeric
        if self._numeric and not numeric:  # files disagree on the type: count everything as text
            self._to_text()
        if numeric and not self._numeric:
            array = pa.array(_format_numbers(array.to_numpy(zero_copy_only=False)), pa.string())
        counts = pc.value_counts(array)
        if isinstance(counts, pa.ChunkedArray):
            counts = counts.combine_chunks()
        piece = pa.table({"value": counts.field("values"), "count": counts.field("counts")})
        self._pieces.append(piece)
        self._pending += piece.num_rows
        if self._pending > max(self._compact_at, 2 * self._known):
            self._compact()

    def _to_text(self) -> None:
        import pyarrow as pa

        self._compact()
        if self._pieces and self._numeric:
            t = self._pieces[0]
            strings = _format_numbers(t["value"].to_numpy(zero_copy_only=False))
            self._pieces = [pa.table({"value": pa.array(strings, pa.string()), "count": t["count"]})]
        self._numeric = False

    def _compact(self) -> None:
        import pyarrow as pa

        if len(self._pieces) <= 1:
            return
        table = pa.concat_tables(self._pieces).group_by("value").aggregate([("count", "sum")])
        table = table.rename_columns(["value" if n == "value" else "count" for n in table.column_names])
        self._pieces = [table.select(["value", "count"])]
        self._known = table.num_rows
        self._pending = 0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(values, counts)``: distinct non-missing values (str, unordered) and their counts."""
        self._compact()
        if not self._pieces:
            return np.array([], dtype=str), np.zeros(0, dtype=np.int64)
        t = self._pieces[0].filter(self._pieces[0]["value"].is_valid())
        counts = t["count"].to_numpy().astype(np.int64)
        if self._numeric:
            raw = _format_numbers(t["value"].to_numpy(zero_copy_only=False))
        else:
            raw = np.array([v.strip() for v in t["value"].to_pylist()], dtype=object)
        # several raw values can be one category (" a" and "a"; 3.0000000000001 and 3): sum them
        keep = np.array([v.lower() not in MISSING_VALUES for v in raw], dtype=bool)
        raw, counts = raw[keep], counts[keep]
        if raw.size == 0:
            return np.array([], dtype=str), np.zeros(0, dtype=np.int64)
        values, inverse = np.unique(raw.astype(str), return_inverse=True)
        return values, np.bincount(inverse.reshape(-1), weights=counts, minlength=values.size).astype(
            np.int64
        )


def _format_numbers(x: np.ndarray) -> np.ndarray:
    """Numbers as category strings (:func:`~mtlkit.data.preprocessing.number_strings`); NaN -> ``""``."""
    from mtlkit.data.preprocessing import number_strings

    return number_strings(np.asarray(x, dtype=np.float64)).astype(object)
