"""Predictions from a trained run directory: raw columns in, per-task predictions out.

A run directory written by ``mtlkit run`` holds what prediction needs:

- ``config.yaml``: the resolved config, to rebuild the model;
- ``checkpoint.pt``: the weights (the best epoch's when early stopping restored them);
- ``signature.json``: the tasks and the input spec (what the model reads);
- ``preprocessor.json``: the fitted preprocessing of tabular data (vocabularies, means, stds).

:func:`load_predictor` rebuilds the model without reading the training data, and
:class:`Predictor` turns raw columns into predictions::

    predictor = load_predictor("runs/census-20260101-120000")
    preds = predictor.predict({"age": [39, 50], "education": ["Bachelors", "HS-grad"], ...})
    preds["income"]        # tensor of probabilities

Input columns (``predictor.input_columns``):

- tabular data (an embedding front end): the raw columns the fitted preprocessor reads, by name
  (categorical values as strings, numeric values as numbers; missing values as in training);
- flat feature vectors: one numeric column per feature, named by the dataset's
  ``info["feature_names"]`` when it declares them, else ``x0 .. x{D-1}``;
- other tensor inputs (images...): no columns; pass a tensor to :meth:`Predictor.predict_inputs`.

Outputs: one entry per model output (auxiliary losses excluded): probabilities for binary,
multilabel and multiclass tasks, values for regression, and outputs that are not a task (such as
ESMM's pCVR) as the model gives them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtlkit.data.batch import Inputs
from mtlkit.data.preprocessing import TabularPreprocessor, UnknownCategoryWarning
from mtlkit.data.schema import FeatureSchema, InputSpec, describe_input_spec
from mtlkit.data.splits import DataSplits
from mtlkit.errors import DataError
from mtlkit.jsonio import write_json
from mtlkit.runs import find_run
from mtlkit.tasks import Task, TaskKind

__all__ = [
    "PREPROCESSOR_FILE",
    "SIGNATURE_FILE",
    "Predictor",
    "find_run",
    "load_predictor",
    "output_columns",
    "save_run_signature",
]

SIGNATURE_FILE = "signature.json"
PREPROCESSOR_FILE = "preprocessor.json"


# ---------------------------------------------------------------------------------------------- signature
_TASK_FIELDS = (
    "name",
    "kind",
    "num_classes",
    "num_outputs",
    "label_smoothing",
    "output",
    "target",
    "logits",
    "train",
    "auxiliary",
)
_TASK_OPTIONS = ("loss", "pos_weight", "class_weights", "transform")
"""Saved when set: a named loss (its link decides the predictions of poisson/tweedie) and the
target transform (inverted at prediction); custom losses and metrics cannot be stored."""


def _task_to_dict(task: Task) -> dict[str, Any]:
    out = {k: str(task.kind) if k == "kind" else getattr(task, k) for k in _TASK_FIELDS}
    for k in _TASK_OPTIONS:
        v = getattr(task, k)
        if hasattr(v, "to_dict"):
            out[k] = v.to_dict()
        elif isinstance(v, (float, tuple)):
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


def _task_from_dict(d: Mapping[str, Any]) -> Task:
    return Task(**{k: d[k] for k in (*_TASK_FIELDS, *_TASK_OPTIONS) if k in d})


def feature_columns(splits_info: Mapping[str, Any], dim: int) -> list[str]:
    """Column names of flat feature vectors: ``info["feature_names"]`` if it fits, else x0..x{D-1}."""
    names = splits_info.get("feature_names")
    if isinstance(names, Sequence) and not isinstance(names, str) and len(names) == dim:
        return [str(n) for n in names]
    return [f"x{i}" for i in range(dim)]


def _input_to_dict(spec: InputSpec | None, info: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(spec, FeatureSchema):
        return {"kind": "tabular", "schema": spec.to_dict()}
    if isinstance(spec, int):
        return {"kind": "flat", "dim": spec, "columns": feature_columns(info, spec)}
    if isinstance(spec, tuple):
        return {"kind": "tensor", "shape": list(spec)}
    return {"kind": "unknown"}


def _input_from_dict(d: Mapping[str, Any]) -> tuple[InputSpec | None, list[str] | None]:
    kind = d.get("kind")
    if kind == "tabular":
        return FeatureSchema.from_dict(d["schema"]), None
    if kind == "flat":
        return int(d["dim"]), [str(c) for c in d["columns"]]
    if kind == "tensor":
        return tuple(int(s) for s in d["shape"]), None
    return None, None


def save_run_signature(run_dir: str | os.PathLike[str], splits: DataSplits) -> None:
    """Write ``signature.json`` (tasks, input spec) and, for tabular data, ``preprocessor.json``."""
    run_dir = Path(run_dir)
    signature = {
        "tasks": [_task_to_dict(t) for t in splits.tasks],
        "input": _input_to_dict(splits.input_spec, splits.info),
    }
    write_json(signature, run_dir / SIGNATURE_FILE)
    pre = splits.preprocessor
    if pre is not None and hasattr(pre, "state_dict"):
        write_json(pre.state_dict(), run_dir / PREPROCESSOR_FILE)


# ---------------------------------------------------------------------------------------------- outputs
def output_columns(preds: Mapping[str, Tensor], tasks: Sequence[Task]) -> dict[str, np.ndarray]:
    """Predictions as named 1-D columns (the layout of ``mtlkit predict``'s CSV).

    Binary tasks and single-output regressions: one column named after the output. Multiclass:
    ``<out>_p0 .. <out>_p{K-1}`` (class probabilities) and ``<out>_class`` (the argmax).
    Multilabel, multi-output regression and other wide outputs: ``<out>_0 .. <out>_{K-1}``.
    """
    by_output = {t.output_key: t for t in tasks}
    out: dict[str, np.ndarray] = {}
    for key, value in preds.items():
        v = value.detach().cpu()
        task = by_output.get(key)
        if task is not None and task.kind is TaskKind.MULTICLASS:
            for k in range(v.shape[1]):
                out[f"{key}_p{k}"] = v[:, k].numpy()
            out[f"{key}_class"] = v.argmax(dim=1).numpy()
        elif v.ndim == 1 or v[0].numel() == 1:
            out[key] = v.reshape(-1).numpy()
        else:
            flat = v.reshape(v.shape[0], -1)
            for k in range(flat.shape[1]):
                out[f"{key}_{k}"] = flat[:, k].numpy()
    return out


# ---------------------------------------------------------------------------------------------- predictor
@dataclass
class Predictor:
    """A trained model with its preprocessing, ready for prediction (see :func:`load_predictor`).

    Attributes:
        model: the model, in eval mode.
        tasks: the tasks it was trained on.
        input_spec: what the model reads (see :mod:`mtlkit.data.schema`).
        preprocessor: the fitted :class:`~mtlkit.data.preprocessing.TabularPreprocessor` of tabular
            data, else None.
        feature_names: column names of flat feature vectors, else None.
        run_dir: the run directory it was loaded from.
        checkpoint: the checkpoint file the weights come from.
        device: where the model runs.
    """

    model: nn.Module
    tasks: tuple[Task, ...]
    input_spec: InputSpec | None
    preprocessor: TabularPreprocessor | None = None
    feature_names: tuple[str, ...] | None = None
    run_dir: Path | None = None
    checkpoint: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The raw columns :meth:`predict` reads (empty for tensor inputs such as images)."""
        if self.preprocessor is not None:
            return (*self.preprocessor.categorical, *self.preprocessor.numeric)
        return self.feature_names or ()

    def transform(self, columns: Mapping[str, Any], *, source: str = "the input") -> Inputs:
        """Raw columns -> model inputs (the saved preprocessing; flat features stacked)."""
        if not isinstance(columns, Mapping):
            raise DataError(
                f"Predictor.predict takes a mapping {{column: values}}; got {type(columns).__name__}. "
                "Pass model-ready tensors to predict_inputs instead."
            )
        wanted = self.input_columns
        if not wanted:
            raise DataError(
                f"This model reads {describe_input_spec(self.input_spec)}, not named columns; pass a tensor "
                "to Predictor.predict_inputs."
            )
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise DataError(
                f"{source} lacks column(s) {missing} that the model needs. Expected columns: "
                f"{', '.join(wanted)} (got: {', '.join(map(str, columns)) or 'none'})."
            )
        if self.preprocessor is not None:
            inputs, unseen = self._transform_tabular(columns, source)
            if unseen.rows:
                unseen.warn(source)
            return inputs
        x = np.empty((len(columns[wanted[0]]), len(wanted)), dtype=np.float32)
        for j, c in enumerate(wanted):
            try:
                x[:, j] = np.asarray(columns[c]).astype(np.float64)
            except ValueError:
                raise DataError(
                    f"{source}: column {c!r} holds non-numeric values; flat features must all be numbers."
                ) from None
        bad = ~np.isfinite(x)
        if bad.any():
            row, col = (int(i[0]) for i in np.nonzero(bad))
            raise DataError(
                f"{source}: column {wanted[col]!r} has a missing or non-finite value in row {row + 1}; "
                "flat features must all be finite numbers."
            )
        return torch.from_numpy(x)

    def _transform_tabular(self, columns: Mapping[str, Any], source: str) -> tuple[Inputs, _Unseen]:
        """The preprocessed columns and a tally of categories unseen in training."""
        assert self.preprocessor is not None
        raw = {c: columns[c] for c in self.input_columns}
        try:
            inputs = self.preprocessor.transform(raw)
        except DataError as exc:  # rows are the input's data rows: name the input
            raise DataError(f"{source}: {exc}") from None
        unseen = _Unseen()
        if self.preprocessor.categorical:
            unseen.add(self.preprocessor, raw, inputs)
        return inputs, unseen

    @torch.no_grad()
    def predict_inputs(self, inputs: Inputs, *, batch_size: int = 4096) -> dict[str, Tensor]:
        """Predictions from model-ready inputs (a tensor or ``{"categorical": ..., "numeric": ...}``)."""
        self.model.eval()
        by_output = {t.output_key: t for t in self.tasks}
        n = inputs.shape[0] if isinstance(inputs, Tensor) else len(next(iter(inputs.values())))
        parts: dict[str, list[Tensor]] = {}
        for i in range(0, n, batch_size):
            chunk: Inputs = (
                inputs[i : i + batch_size].to(self.device)
                if isinstance(inputs, Tensor)
                else {k: v[i : i + batch_size].to(self.device) for k, v in inputs.items()}
            )
            preds = self.model(chunk)
            for key, out in preds.items():
                task = by_output.get(key)
                value = task.activate(out.float()) if task is not None else out
                parts.setdefault(key, []).append(value.cpu())
        return {k: torch.cat(v) for k, v in parts.items()}

    def predict(self, columns: Mapping[str, Any], *, batch_size: int = 4096) -> dict[str, Tensor]:
        """Per-output predictions for raw ``columns`` (``{name: values}``; see the module doc).

        Returns:
            ``{output: tensor}``: probabilities for classification tasks (``(N,)`` binary,
            ``(N, K)`` multiclass/multilabel), values for regression, non-task outputs as given.

        Raises:
            DataError: a needed column is missing or holds values the model cannot read.
        """
        return self.predict_inputs(self.transform(columns), batch_size=batch_size)

    def predict_files(
        self,
        inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        out: str | os.PathLike[str],
        *,
        keep: Sequence[str] = (),
        ignore_extra: bool = False,
        batch_size: int = 4096,
    ) -> Path:
        """Predict every row of CSV / Parquet files of any size, writing the predictions chunk by chunk.

        The files are read window by window (:func:`mtlkit.data.arrow_io.iter_batches`: Parquet row
        groups, CSV blocks; only the needed columns), so memory does not grow with the input. The
        output has the rows in input order (files in the order of
        :func:`~mtlkit.data.arrow_io.expand_paths`), the ``keep`` columns first, then one column per
        prediction (see :func:`output_columns`).

        Args:
            inputs: a file, a folder, a glob pattern or a list of them (CSV with a header row, plain
                or ``.gz``/``.bz2``/``.xz``, or Parquet).
            out: the predictions file: Parquet when it ends in ``.parquet``/``.pq``, else CSV. Written
                as ``<out>.partial`` and renamed when complete (nothing is left after an error).
            keep: input columns copied into the output first (e.g. an id column).
            ignore_extra: CSV inputs: drop columns the model does not read instead of refusing them
                (Parquet files are read by column, their other columns are ignored).
            batch_size: rows per model call.

        Raises:
            DataError: a file lacks a needed or kept column, a CSV file has columns the model does not
                read (without ``ignore_extra``), a value cannot be read (naming the file and data row),
                or the files hold no data rows.
        """
        from mtlkit.data.arrow_io import expand_paths, file_columns, file_format, iter_batches
        from mtlkit.predict_io import PredictionWriter, arrow_values, shift_rows

        files = expand_paths(inputs)
        source = str(inputs) if isinstance(inputs, (str, os.PathLike)) else ", ".join(map(str, inputs))
        wanted = self.input_columns
        if not wanted:
            raise DataError(
                f"This model reads {describe_input_spec(self.input_spec)}, not named columns; pass a tensor "
                "to Predictor.predict_inputs."
            )
        for f in files:
            self._check_file_columns(f, file_columns(f), keep, ignore_extra or file_format(f) == "parquet")
        read = list(dict.fromkeys([*keep, *wanted]))
        writer = PredictionWriter(out)
        unseen = _Unseen()
        try:
            for origin, batch in iter_batches(files, read, batch_rows=max(batch_size, 65_536)):
                columns = {c: arrow_values(batch.column(c)) for c in wanted}
                where = str(origin.file)
                try:
                    if self.preprocessor is not None:
                        model_inputs, part = self._transform_tabular(columns, where)
                        unseen.merge(part)
                    else:
                        model_inputs = self.transform(columns, source=where)
                except DataError as exc:
                    raise DataError(shift_rows(str(exc), origin.first_row)) from None
                preds = output_columns(self.predict_inputs(model_inputs, batch_size=batch_size), self.tasks)
                clash = sorted(set(keep) & set(preds))
                if clash:
                    raise DataError(f"Kept column(s) {clash} have the names of prediction columns; rename them.")
                writer.write({**{c: batch.column(c) for c in keep}, **preds})
            if writer.rows == 0:
                raise DataError(f"{source} has no data rows; nothing to predict.")
            path = writer.close()
        except BaseException:
            writer.abort()
            raise
        if unseen.rows:
            unseen.warn(source)
        return path

    def predict_csv(
        self,
        path: str | os.PathLike[str],
        out: str | os.PathLike[str],
        *,
        keep: Sequence[str] = (),
        ignore_extra: bool = False,
        batch_size: int = 4096,
    ) -> Path:
        """Read a CSV of raw columns, write one column per prediction: :meth:`predict_files` (which
        also reads folders, glob patterns, lists and Parquet, and writes Parquet)."""
        return self.predict_files(path, out, keep=keep, ignore_extra=ignore_extra, batch_size=batch_size)

    def _check_file_columns(self, path: Path, names: Sequence[str], keep: Sequence[str], ignore_extra: bool) -> None:
        absent = [c for c in keep if c not in names]
        if absent:
            raise DataError(f"{path} has no column(s) {absent} to keep (columns: {', '.join(names)}).")
        wanted = self.input_columns
        missing = [c for c in wanted if c not in names]
        if missing:
            raise DataError(
                f"{path} lacks column(s) {missing} that the model needs. Expected columns: "
                f"{', '.join(wanted)} (got: {', '.join(map(str, names)) or 'none'})."
            )
        extra = [c for c in names if c not in wanted and c not in keep]
        if extra and not ignore_extra:
            raise DataError(
                f"{path} has column(s) {extra} that the model does not read. Remove them, copy them to the "
                "output with --keep COLUMN (keep=...), or pass --ignore-extra (ignore_extra=True). "
                f"The model reads: {', '.join(wanted)}."
            )


class _Unseen:
    """A tally of rows holding categories outside the training vocabulary, over chunks."""

    def __init__(self) -> None:
        self.per_column: dict[str, int] = {}
        self.rows = 0
        self.total = 0
        self.all_unknown = 0

    def add(self, pre: TabularPreprocessor, columns: Mapping[str, Any], inputs: Mapping[str, Tensor]) -> None:
        per_column, rows = pre.unseen_counts(columns)
        self.total += len(next(iter(columns.values())))
        if not rows:
            return
        for c, k in per_column.items():
            self.per_column[c] = self.per_column.get(c, 0) + k
        self.rows += rows
        if "categorical" in inputs:  # (list-only categorical features have no (N, C) tensor)
            self.all_unknown += int((inputs["categorical"] == 0).all(dim=1).sum())

    def merge(self, other: _Unseen) -> None:
        for c, k in other.per_column.items():
            self.per_column[c] = self.per_column.get(c, 0) + k
        self.rows += other.rows
        self.total += other.total
        self.all_unknown += other.all_unknown

    def warn(self, source: str) -> None:
        """Warn (:class:`UnknownCategoryWarning`) about the rows with unseen categories."""
        hit = ", ".join(f"{c!r}: {k}" for c, k in self.per_column.items() if k)
        all_zero = f"; {self.all_unknown} rows have no known category in any column" if self.all_unknown else ""
        warnings.warn(
            UnknownCategoryWarning(
                f"{source}: {self.rows} of {self.total} rows hold categories not seen in training (values per "
                f"column: {hit}){all_zero}. The model reads them through the shared unknown-category embedding "
                "(index 0), trained only by rare or missing training values and the unknown_fraction dropout; "
                "their predictions rest on less information."
            ),
            stacklevel=3,
        )


def load_predictor(run_dir: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> Predictor:
    """Rebuild the trained model of a run directory, with its preprocessing, for prediction.

    Args:
        run_dir: a run directory written by ``mtlkit run`` (of an experiment with several
            variants or seeds: the sub-directory of one of them, e.g. ``.../mmoe/seed0``).
        device: where to run the model.

    Returns:
        A :class:`Predictor` holding the best weights (those early stopping restored, when it did).

    Raises:
        CheckpointError: the directory, its config or its checkpoint is missing, damaged or does
            not fit the model the config describes.
    """
    from mtlkit.runs import load_run

    run = load_run(run_dir, device=device)
    return Predictor(
        model=run.model,
        tasks=run.tasks,
        input_spec=run.input_spec,
        preprocessor=run.preprocessor,
        feature_names=run.feature_names,
        run_dir=run.run_dir,
        checkpoint=run.checkpoint,
        device=torch.device(device),
    )
