"""Fitting a :class:`~mtlkit.data.preprocessing.TabularPreprocessor` in one streaming pass over files.

``fit_streaming(["data/train/*.parquet"], categorical=[...], numeric=[...])`` reads the feature
columns batch by batch (:func:`mtlkit.data.arrow_io.iter_batches`: Parquet row groups or CSV
blocks, only the named columns), counts the categories (:class:`CategoryCounts`) and accumulates
the numeric moments (:class:`RunningMoments`, Chan et al.'s parallel update), and returns a
fitted preprocessor whose state equals ``TabularPreprocessor.fit`` on the same rows held in
memory: the same vocabularies in the same order (most frequent first, ties by value,
``min_frequency`` and ``max_categories`` applied alike) and the same means and standard
deviations up to float64 round-off. Memory follows the number of distinct categories, not the
number of rows.

``label_columns`` leaves out rows without any label (as the ``tabular`` dataset fits on labelled
training rows only); ``max_rows`` fits on the first rows of the files (in file order) only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtlkit.data.arrow_io import BatchOrigin, column_floats, expand_paths, iter_batches
from mtlkit.data.preprocessing import MISSING_VALUES, TabularPreprocessor, vocabulary
from mtlkit.data.streaming_stats import CategoryCounts, RunningMoments
from mtlkit.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["fit_streaming"]


def fit_streaming(
    files: str | Path | Sequence[str | Path],
    *,
    categorical: Sequence[Any] = (),
    numeric: Sequence[Any] = (),
    min_frequency: int = 1,
    max_categories: int | None = None,
    label_columns: Sequence[str] = (),
    max_rows: int | None = None,
    delimiter: str = ",",
    batch_rows: int = 65_536,
) -> TabularPreprocessor:
    """A :class:`TabularPreprocessor` fitted in one pass over ``files``, without loading them whole.

    Args:
        files: a file, a folder, a glob pattern, or a list of them (CSV, optionally compressed, or
            Parquet; see :func:`~mtlkit.data.arrow_io.expand_paths`).
        categorical: categorical feature columns.
        numeric: numeric feature columns.
        min_frequency: categories seen fewer times map to the unknown bucket.
        max_categories: keep at most this many categories per column (the most frequent).
        label_columns: when given, rows where every one of these columns is missing (blank, a
            missing marker, NaN or null) are left out, as in the ``tabular`` dataset.
        max_rows: fit on the first ``max_rows`` rows only (in file order, after leaving out
            unlabelled rows).
        delimiter: CSV field separator.
        batch_rows: rows per Parquet batch.

    Raises:
        DataError: as the in-memory fit (non-numeric or infinite numeric values, a numeric column
            without any value), naming the file and data row; and the file errors of
            :func:`~mtlkit.data.arrow_io.iter_batches`.
    """
    pre = TabularPreprocessor(
        categorical=categorical, numeric=numeric, min_frequency=min_frequency, max_categories=max_categories
    )
    if max_rows is not None and (not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1):
        raise DataError(f"fit_streaming: max_rows must be None or an integer >= 1; got {max_rows!r}.")
    paths = expand_paths(files)
    features = [*pre.categorical, *pre.numeric]
    labels_all = list(dict.fromkeys(label_columns))
    labels = [c for c in labels_all if c not in features]
    if not pre.plain:  # feature specs: hashed, shared, list, log1p, bucketized columns
        return _fit_features(
            pre, paths, features, labels, labels_all, label_columns, max_rows, delimiter, batch_rows
        )
    counts = {c: CategoryCounts() for c in pre.categorical}
    moments = {c: RunningMoments() for c in pre.numeric}
    seen = 0
    for origin, batch in iter_batches(
        paths, [*features, *labels], delimiter=delimiter, batch_rows=batch_rows
    ):
        # numeric values are checked on every row, labelled or not (as the tabular dataset does)
        floats = {c: column_floats(batch.column(c), column=c, origin=origin) for c in pre.numeric}
        rows = _labelled_rows(batch, labels_all, origin) if label_columns else np.arange(batch.num_rows)
        if max_rows is not None:
            rows = rows[: max_rows - seen]
        if rows.size == 0:
            continue
        part = batch.take(rows) if rows.size < batch.num_rows else batch
        for c in pre.categorical:
            counts[c].update(part.column(c))
        for c in pre.numeric:
            moments[c].update(floats[c][rows])
        seen += int(rows.size)
        if max_rows is not None and seen >= max_rows:
            break
    vocabularies = {}
    for c in pre.categorical:
        values, n = counts[c].result()
        vocabularies[c] = vocabulary(values, n, min_frequency=min_frequency, max_categories=max_categories)
    stats = {}
    for c in pre.numeric:
        if moments[c].count == 0:
            raise DataError(
                f"{', '.join(map(str, paths[:3]))}{', ...' if len(paths) > 3 else ''}: numeric column {c!r} has no "
                "values in the training data; drop it or list it as categorical."
            )
        stats[c] = moments[c].standardisation()
    pre.vocabularies, pre.stats = vocabularies, stats
    return pre


def _fit_features(
    pre: TabularPreprocessor,
    paths: Sequence[Path],
    features: Sequence[str],
    labels: Sequence[str],
    labels_all: Sequence[str],
    label_columns: Sequence[str],
    max_rows: int | None,
    delimiter: str,
    batch_rows: int,
) -> TabularPreprocessor:
    """:func:`fit_streaming` under feature specs: the in-memory fitter fed batch by batch."""
    from mtlkit.data.feature_encode import FeatureFitter, arrow_columns

    fitter = FeatureFitter(pre)
    seen = 0
    for origin, batch in iter_batches(
        paths, [*features, *labels], delimiter=delimiter, batch_rows=batch_rows
    ):
        for c in pre.numeric:  # numeric values are checked on every row, labelled or not
            column_floats(batch.column(c), column=c, origin=origin)
        rows = _labelled_rows(batch, labels_all, origin) if label_columns else np.arange(batch.num_rows)
        if max_rows is not None:
            rows = rows[: max_rows - seen]
        if rows.size == 0:
            continue
        part = batch.take(rows) if rows.size < batch.num_rows else batch
        fitter.update(arrow_columns(pre, part, origin), source=f"{origin.file} (from {origin.row(0)})")
        seen += int(rows.size)
        if max_rows is not None and seen >= max_rows:
            break
    fitter.finish(source=", ".join(map(str, paths[:3])) + (", ..." if len(paths) > 3 else ""))
    return pre


def _labelled_rows(batch: pa.RecordBatch, label_columns: Sequence[str], origin: BatchOrigin) -> np.ndarray:
    """Indices of the rows with at least one label present."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from mtlkit.data.arrow_io import is_numeric_type

    present = np.zeros(batch.num_rows, dtype=bool)
    for c in label_columns:
        col = batch.column(c)
        if is_numeric_type(col.type):
            x = pc.cast(col, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
            present |= ~np.isnan(x)
        else:
            text = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(col, pa.string()).fill_null("")))
            present |= ~pc.is_in(text, value_set=pa.array(sorted(MISSING_VALUES))).to_numpy(
                zero_copy_only=False
            )
    return np.flatnonzero(present)
