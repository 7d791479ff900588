"""Tabular data larger than memory: Parquet and CSV files streamed window by window.

``tabular_stream(train="data/train/*.parquet", tasks=..., categorical=..., numeric=...)`` is the
streaming twin of :func:`mtlkit.data.tabular.tabular`: the preprocessor is fitted in one pass
over the training files (:func:`~mtlkit.data.streaming_fit.fit_streaming`), and each split is a
:class:`TabularStream` that the Trainer, ``evaluate`` and ``predict`` read batch by batch.

Order (see :mod:`mtlkit.data.stream_plan`): fragments (Parquet row groups, whole CSV files)
permuted by ``(seed, epoch)``; contiguous per-rank ranges with the same number of steps on every
rank and every row read exactly once; windows of ``shuffle_buffer`` rows permuted by
``(seed, epoch, rank, window)``; batches independent of ``num_workers``. Memory per process: one
window plus one Parquet row group (or CSV block). Rows without any label are kept (each loss
masks them out); the in-memory ``tabular`` drops them.

Multiclass classes not given in the task spec are found by one pass over the training files'
label columns (the same rule as ``tabular``: non-negative integers -> ``0..max``; otherwise the
sorted label strings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from mtlkit.data.arrow_io import expand_paths, file_columns, iter_batches
from mtlkit.data.metric_columns import header_columns, metric_options
from mtlkit.data.preprocessing import TabularPreprocessor, UnknownCategoryDropout
from mtlkit.data.sources import require_columns
from mtlkit.data.splits import DataSplits
from mtlkit.data.stream_encode import LabelSpec, StreamEncoder, _distinct, canonical_label
from mtlkit.data.stream_loader import StreamLoader, default_workers
from mtlkit.data.stream_read import FragmentReader, fragment_table
from mtlkit.data.streaming_fit import LabelCounts, fit_streaming, label_present
from mtlkit.data.tabular import TaskColumn, _feature_specs, load_preprocessor, task_specs
from mtlkit.data.task_options import apply_task_options, refuse_stream_options, weight_columns
from mtlkit.errors import DataError
from mtlkit.tasks import Task
from mtlkit.training.source import TrainSource

__all__ = ["StreamLoader", "TabularStream", "tabular_stream"]


class TabularStream(TrainSource):
    """One split's files (Parquet and/or CSV), read window by window and encoded with a fitted
    :class:`TabularPreprocessor`; never loads a file whole.

    Args:
        files: the data files (see :func:`~mtlkit.data.arrow_io.expand_paths`).
        tasks: the task definitions.
        labels: how each task's label column is encoded (:class:`LabelSpec`; empty for prediction).
        preprocessor: the fitted preprocessor.
        shuffle_buffer: rows per shuffle window.
        num_workers: DataLoader worker processes (None: ``min(4, cores - 1)``; capped at the
            number of windows of an epoch).
        unknown_fraction: :class:`UnknownCategoryDropout` of training batches (0 for val / test).
        delimiter: CSV field separator.
        weights: ``{task: sample-weight column}`` carried in the batches' ``weights``.
        groups: the group columns of grouped metrics, carried as int64 ids in the batches'
            ``columns`` (:func:`mtlkit.data.metric_columns.group_ids`).
    """

    def __init__(
        self,
        files: str | Path | Sequence[str | Path],
        *,
        tasks: Sequence[Task],
        labels: Sequence[LabelSpec],
        preprocessor: TabularPreprocessor,
        shuffle_buffer: int = 65_536,
        num_workers: int | None = None,
        unknown_fraction: float = 0.0,
        delimiter: str = ",",
        weights: Mapping[str, str] | None = None,
        groups: Sequence[str] = (),
    ) -> None:
        if not isinstance(shuffle_buffer, int) or isinstance(shuffle_buffer, bool) or shuffle_buffer < 1:
            raise DataError(f"shuffle_buffer must be an integer >= 1 (rows); got {shuffle_buffer!r}.")
        if num_workers is not None and (
            not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0
        ):
            raise DataError(f"num_workers must be None or an integer >= 0; got {num_workers!r}.")
        UnknownCategoryDropout(unknown_fraction)  # checks the value
        self.files = tuple(expand_paths(files))
        self.tasks = tuple(tasks)
        self.preprocessor = preprocessor
        self.encoder = StreamEncoder(preprocessor, labels, weights, groups)
        self.delimiter = delimiter
        check_columns(self.files, [*self.encoder.feature_columns, *self.encoder.label_columns], delimiter)
        self.fragments = fragment_table(
            self.files, count_column=self.encoder.feature_columns[0], delimiter=delimiter
        )
        self.num_rows = self.fragments.num_rows
        if self.num_rows == 0:
            raise DataError(f"{', '.join(map(str, self.files[:3]))}: the files hold no data rows.")
        self.shuffle_buffer = shuffle_buffer
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.unknown_fraction = float(unknown_fraction) if preprocessor.categorical else 0.0

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        return f"TabularStream(files={len(self.files)}, rows={self.num_rows}, tasks={[t.name for t in self.tasks]})"

    # ------------------------------------------------------------------ TrainSource
    def loader(
        self, tasks: Sequence[Task], batch_size: int, *, seed: int, num_replicas: int = 1, rank: int = 0
    ) -> StreamLoader:
        """Training batches, shuffled per epoch (``set_epoch``), this rank's share."""
        self._need_labels("training")
        return StreamLoader(
            self, tasks, batch_size, shuffle=True, seed=seed, num_replicas=num_replicas, rank=rank
        )

    def task_datasets(self, tasks: Sequence[Task], *, schedule: str) -> dict[str, Any]:
        raise DataError(
            f"Schedule {schedule!r} draws each task's batches from that task's own labelled rows, which one stream "
            "cannot give without reading the data for every task. With one stream use schedule 'joint' or "
            "'mixed' (every batch carries every task's labels); for 'alternating' or 'sampling' give each task "
            "its own stream, {task: TabularStream} (Python), or use the in-memory tabular dataset."
        )

    # ------------------------------------------------------------------ evaluation and prediction
    def eval_loader(
        self, tasks: Sequence[Task], batch_size: int, *, num_replicas: int = 1, rank: int = 0
    ) -> StreamLoader:
        """Evaluation batches: file order, no shuffle, this rank's contiguous share, nothing padded."""
        self._need_labels("evaluation")
        return StreamLoader(self, tasks, batch_size, shuffle=False, num_replicas=num_replicas, rank=rank)

    def chunks(
        self, batch_size: int, *, keep: Sequence[str] = ()
    ) -> Iterator[tuple[dict[str, Tensor], dict[str, np.ndarray]]]:
        """``(inputs, {kept column: values})`` of at most ``batch_size`` rows, in file order."""
        import torch

        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}.")
        keep = list(dict.fromkeys(keep))
        features = self.encoder.feature_columns
        check_columns(self.files, [*features, *keep], self.delimiter)
        columns = list(dict.fromkeys([*features, *keep]))
        reader = FragmentReader(self.fragments, columns, delimiter=self.delimiter)
        try:
            for f, size in enumerate(self.fragments.sizes.tolist()):
                for lo in range(0, size, batch_size):
                    origin, table = reader.read(f, lo, min(lo + batch_size, size))
                    inputs = {k: torch.from_numpy(v) for k, v in self.encoder.features(table, origin).items()}
                    kept = {c: table.column(c).to_numpy() for c in keep}
                    yield inputs, kept
        finally:
            reader.close()

    def _need_labels(self, what: str) -> None:
        if not self.encoder.labels:
            raise DataError(f"This stream has no label columns, so it cannot give {what} batches.")


def check_columns(files: Sequence[Path], wanted: Sequence[str], delimiter: str) -> None:
    """Every file has the ``wanted`` columns (else a DataError naming the file and the closest column)."""
    for path in files:
        require_columns(path, file_columns(path, delimiter=delimiter), list(dict.fromkeys(wanted)), delimiter)


def discover_classes(
    files: Sequence[Path], specs: Mapping[str, TaskColumn], *, delimiter: str
) -> dict[str, list[str]]:
    """The classes of each binary / multiclass task: given, 0/1, or found in one pass over ``files``
    (multiclass without ``classes``; the rule of ``tabular``)."""
    out: dict[str, list[str]] = {}
    todo: dict[str, set[str]] = {}
    for name, s in specs.items():
        if s.classes is not None:
            out[name] = [canonical_label(str(c))[1] for c in s.classes]
        elif s.kind == "binary":
            out[name] = ["0", "1"]
        elif s.kind == "multiclass":
            todo[name] = set()
    if todo:
        columns = list(dict.fromkeys(specs[t].column for t in todo))
        for _, batch in iter_batches(files, columns, delimiter=delimiter):
            for name, seen in todo.items():
                values, _, numeric = _distinct(batch.column(specs[name].column))
                for v in values:
                    missing, label = (bool(np.isnan(v)), f"{v:.12g}") if numeric else canonical_label(v)
                    if not missing:
                        seen.add(label)
        for name, seen in todo.items():
            spec = specs[name]
            numbers = [_number(v) for v in seen]
            if numbers and all(n is not None and n.is_integer() and n >= 0 for n in numbers):
                k = spec.num_classes or int(max(n for n in numbers if n is not None)) + 1
                out[name] = [f"{i:.12g}" for i in range(k)]
            else:
                out[name] = sorted(seen)
    for name, classes in out.items():
        spec = specs[name]
        if spec.kind == "binary" and len(classes) != 2:
            raise DataError(f"task {name!r} is binary, so classes must list 2 values; got {spec.classes}.")
        if spec.kind == "multiclass" and spec.num_classes is not None and spec.num_classes != len(classes):
            raise DataError(
                f"task {name!r} has num_classes={spec.num_classes} but {len(classes)} classes {classes[:10]}."
            )
        if spec.kind == "multiclass" and len(classes) < 2:
            raise DataError(
                f"{files[0]}: task {name!r} (column {spec.column!r}) has fewer than 2 classes in the training "
                f"rows ({classes}); a multiclass task needs at least 2. List them with classes: [...], or make the "
                "task binary."
            )
    return out


def check_labels(
    files: Sequence[Path],
    specs: Mapping[str, TaskColumn],
    counts: LabelCounts,
    *,
    complete: bool,
    delimiter: str,
) -> None:
    """Every task has at least one label in the training files (the check of ``tabular``).

    ``counts`` come from the preprocessor's fit pass; where that pass did not read every row
    (``fit_rows``, or a given preprocessor) and found no label for a task, the task's label column
    alone is read until a label turns up.

    Raises:
        DataError: a task without any label, naming the files and the column.
    """
    missing = {n: s.column for n, s in specs.items() if counts.labelled.get(s.column, 0) == 0}
    rows = counts.rows
    if missing and not complete:
        rows = 0
        columns = list(dict.fromkeys(missing.values()))
        for _, batch in iter_batches(files, columns, delimiter=delimiter):
            rows += batch.num_rows
            found = {c for c in columns if label_present(batch.column(c)).any()}
            missing = {n: c for n, c in missing.items() if c not in found}
            columns = [c for c in columns if c not in found]
            if not missing:
                return
    for name, column in missing.items():
        shown = ", ".join(map(str, files[:3])) + (", ..." if len(files) > 3 else "")
        raise DataError(
            f"Task {name!r} has no label in {shown} (training data, {rows} row{'s' if rows != 1 else ''}): every "
            f"value of column {column!r} is blank, NA or NaN. Fill in labels, fix the column name, or remove the task."
        )


def _number(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


def fit_on_rank_zero(
    fit: Callable[[LabelCounts], TabularPreprocessor],
) -> tuple[TabularPreprocessor, LabelCounts]:
    """``fit(counts)`` run once: under torch.distributed with more than one process, rank 0 fits
    and broadcasts the fitted state (and the label counts) to the other ranks, which would
    otherwise each repeat the pass over every training row and hold its category counts; a
    :class:`~mtlkit.errors.DataError` on rank 0 is raised on every rank (none waits forever)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        counts = LabelCounts()
        return fit(counts), counts
    payload: list[Any] = [None]
    failure: Exception | None = None
    if dist.get_rank() == 0:
        counts = LabelCounts()
        try:
            payload = [("ok", fit(counts).state_dict(), counts)]
        except Exception as exc:  # every rank must leave the broadcast, also on an error
            failure = exc
            message = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
            payload = [("error", f"rank 0 could not fit the preprocessor: {message}", None)]
    dist.broadcast_object_list(payload, src=0)
    if failure is not None:
        raise failure
    kind, state, counts = payload[0]
    if kind == "error":
        raise DataError(state)
    return TabularPreprocessor.from_state_dict(state), counts


def tabular_stream(
    *,
    train: str | Path | Sequence[str | Path],
    tasks: Mapping[str, TaskColumn | Mapping[str, Any]],
    numeric: Sequence[Any] = (),
    categorical: Sequence[Any] = (),
    val: str | Path | Sequence[str | Path] | None = None,
    test: str | Path | Sequence[str | Path] | None = None,
    delimiter: str = ",",
    min_frequency: int = 1,
    max_categories: int | None = None,
    unknown_fraction: float = 0.01,
    preprocessor: str | Path | None = None,
    shuffle_buffer: int = 65_536,
    num_workers: int | None = None,
    fit_rows: int | None = None,
    weights: Any = None,
) -> DataSplits:
    """The streaming twin of :func:`mtlkit.data.tabular.tabular`: the same keys and task specs;
    ``train`` / ``val`` / ``test`` each a file, a folder, a glob or a list. Returns
    :class:`DataSplits` whose splits are :class:`TabularStream` s.

    Args:
        fit_rows: fit the preprocessor on the first ``fit_rows`` labelled training rows only.
        shuffle_buffer: rows per shuffle window (memory: about one window per process).
        num_workers: DataLoader worker processes (None: ``min(4, cores - 1)``).
        (the others as :func:`~mtlkit.data.tabular.tabular`)
    """
    specs = task_specs(tasks)
    refuse_stream_options(specs, weights)
    task_weights = weight_columns(specs, weights)  # {task: sample-weight column}
    if not numeric and not categorical:
        raise DataError("tabular: name the feature columns: numeric: [...] and/or categorical: [...].")
    feature_specs, categorical_names, numeric_names = _feature_specs(categorical, numeric)
    features = [*categorical_names, *numeric_names]
    overlap = sorted({s.column for s in specs.values()} & set(features))
    if overlap:
        raise DataError(
            f"tabular: label column(s) {overlap} are also listed as features; a model must not see its labels."
        )
    UnknownCategoryDropout(unknown_fraction)
    label_columns = list(dict.fromkeys(s.column for s in specs.values()))
    files = {"train": expand_paths(train)}
    for what, spec in (("val", val), ("test", test)):
        if spec is not None:
            files[what] = expand_paths(spec)
    first = files["train"][0] if files["train"] else None
    groups = metric_options(specs, None if first is None else header_columns(first, delimiter), file=str(first))
    for paths in files.values():
        check_columns(paths, [*features, *label_columns, *task_weights.values(), *groups], delimiter)
    counts = LabelCounts()
    if preprocessor is not None:
        pre = load_preprocessor(preprocessor, categorical=categorical_names, numeric=numeric_names)
    else:
        pre, counts = fit_on_rank_zero(
            lambda counts: fit_streaming(
                files["train"],
                categorical=feature_specs.categorical,
                numeric=feature_specs.numeric,
                min_frequency=min_frequency,
                max_categories=max_categories,
                label_columns=label_columns,
                max_rows=fit_rows,
                delimiter=delimiter,
                label_counts=counts,
            )
        )
    # the fit pass read every training row (no preprocessor given, no fit_rows): its counts are complete
    check_labels(
        files["train"], specs, counts, complete=preprocessor is None and fit_rows is None, delimiter=delimiter
    )
    classes = discover_classes(files["train"], specs, delimiter=delimiter)
    task_list = tuple(
        apply_task_options(
            Task(name=n, kind="multiclass", num_classes=len(classes[n]), auxiliary=s.auxiliary)
            if s.kind == "multiclass"
            else Task(name=n, kind=s.kind, auxiliary=s.auxiliary),
            s,
            None,
        )
        for n, s in specs.items()
    )
    labels = tuple(LabelSpec(n, s.column, s.kind, tuple(classes.get(n, ()))) for n, s in specs.items())
    streams: dict[str, TabularStream | None] = {"train": None, "val": None, "test": None}
    for what, paths in files.items():
        streams[what] = TabularStream(
            paths,
            tasks=task_list,
            labels=labels,
            preprocessor=pre,
            shuffle_buffer=shuffle_buffer,
            num_workers=num_workers,
            unknown_fraction=unknown_fraction if what == "train" else 0.0,
            delimiter=delimiter,
            weights=task_weights,
            groups=groups,
        )
    info = {
        "dataset": "tabular",
        "streaming": True,
        **({"weights": task_weights} if task_weights else {}),
        "files": {s: [str(p) for p in f] for s, f in files.items()},
        "rows": {
            s: (st.num_rows if st is not None else 0) for s in ("train", "val", "test") for st in [streams[s]]
        },
        "tasks": {
            n: {"column": s.column, "kind": s.kind, **({"classes": classes[n]} if n in classes else {})}
            for n, s in specs.items()
        },
        "categorical": categorical_names,
        "numeric": numeric_names,
    }
    train_stream = streams["train"]
    assert train_stream is not None
    return DataSplits(
        train=train_stream,  # type: ignore[arg-type]
        val=streams["val"],  # type: ignore[arg-type]
        test=streams["test"],  # type: ignore[arg-type]
        tasks=task_list,
        input_spec=pre.schema,
        info=info,
        preprocessor=pre,
    )
