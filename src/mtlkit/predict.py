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

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from mtlkit.data.batch import Inputs
from mtlkit.data.preprocessing import TabularPreprocessor
from mtlkit.data.schema import FeatureSchema, InputSpec, describe_input_spec
from mtlkit.data.splits import DataSplits
from mtlkit.errors import CheckpointError, DataError
from mtlkit.jsonio import write_json
from mtlkit.losses import split_aux
from mtlkit.tasks import Task, TaskKind
from mtlkit.training.checkpoint import load_checkpoint, state_mismatch

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
_TASK_FIELDS = ("name", "kind", "num_classes", "num_outputs", "label_smoothing", "output", "target", "logits")


def _task_to_dict(task: Task) -> dict[str, Any]:
    # the loss and metrics are not needed for prediction (and custom ones cannot be stored)
    return {k: str(task.kind) if k == "kind" else getattr(task, k) for k in _TASK_FIELDS}


def _task_from_dict(d: Mapping[str, Any]) -> Task:
    return Task(**{k: d[k] for k in _TASK_FIELDS if k in d})


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


def _format(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return format(float(v), ".9g")  # float32 round-trips with 9 significant digits
    return str(v)


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
            return self.preprocessor.transform({c: columns[c] for c in wanted})
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
            preds, _ = split_aux(self.model(chunk))
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

    def predict_csv(
        self,
        path: str | os.PathLike[str],
        out: str | os.PathLike[str],
        *,
        keep: Sequence[str] = (),
        ignore_extra: bool = False,
        batch_size: int = 4096,
    ) -> Path:
        """Read a CSV of raw columns, write one column per prediction (see :func:`output_columns`).

        Args:
            path: CSV with a header row (may be ``.gz``/``.bz2``/``.xz`` compressed).
            out: where to write the predictions CSV.
            keep: input columns copied into the output first (e.g. an id column).
            ignore_extra: drop input columns the model does not read instead of refusing them.
        """
        from mtlkit.data.sources import read_csv

        path = Path(path)
        columns = read_csv(path)
        source = str(path)
        absent = [c for c in keep if c not in columns]
        if absent:
            raise DataError(f"{source} has no column(s) {absent} to keep (columns: {', '.join(columns)}).")
        extra = [c for c in columns if c not in self.input_columns and c not in keep]
        if extra and not ignore_extra and self.input_columns:
            raise DataError(
                f"{source} has column(s) {extra} that the model does not read. Remove them, copy them to the "
                "output with --keep COLUMN (keep=...), or pass --ignore-extra (ignore_extra=True). "
                f"The model reads: {', '.join(self.input_columns)}."
            )
        if not columns or len(next(iter(columns.values()))) == 0:
            raise DataError(f"{source} has no data rows; nothing to predict.")
        preds = self.predict_inputs(self.transform(columns, source=source), batch_size=batch_size)
        table = {c: columns[c] for c in keep}
        pred_cols = output_columns(preds, self.tasks)
        clash = sorted(set(table) & set(pred_cols))
        if clash:
            raise DataError(f"Kept column(s) {clash} have the names of prediction columns; rename them.")
        table.update(pred_cols)
        names = list(table)
        rows = zip(*(table[c] for c in names))
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(names)
            writer.writerows([_format(v) for v in row] for row in rows)
        return out


def find_run(run_dir: str | os.PathLike[str]) -> Path:
    """The one run (folder with ``checkpoint.pt``) in ``run_dir``; refuses ambiguous experiment folders."""
    root = Path(run_dir)
    if not root.is_dir():
        raise CheckpointError(f"Run directory {str(root)!r} does not exist.")
    if (root / "checkpoint.pt").is_file():
        return root
    found = sorted(p.parent for p in root.rglob("checkpoint.pt"))
    if not found:
        raise CheckpointError(
            f"No checkpoint.pt under {str(root)!r}; is it a run directory written by `mtlkit run`?"
        )
    if len(found) > 1:
        runs = ", ".join(str(p.relative_to(root)) for p in found)
        raise CheckpointError(
            f"{str(root)!r} holds {len(found)} trained models ({runs}); pass one of them, e.g. "
            f"{str(found[-1])!r}."
        )
    return found[0]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{str(path)!r} could not be read ({exc}); the run directory is damaged."
        ) from None


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
    from mtlkit.config.build import build_data, build_model
    from mtlkit.config.load import resolve

    rd = find_run(run_dir)
    cfg_path = rd / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{str(rd)!r} has a checkpoint but no config.yaml; cannot rebuild the model.")
    cfg = next(iter(resolve(yaml.safe_load(cfg_path.read_text()), source=str(cfg_path)).variants.values()))
    sig_path, pre_path = rd / SIGNATURE_FILE, rd / PREPROCESSOR_FILE
    preprocessor: TabularPreprocessor | None = None
    if sig_path.is_file():  # no need to read the training data
        sig = _read_json(sig_path)
        tasks = tuple(_task_from_dict(t) for t in sig["tasks"])
        input_spec, names = _input_from_dict(sig["input"])
        if pre_path.is_file():
            preprocessor = TabularPreprocessor.from_state_dict(_read_json(pre_path))
        splits = DataSplits(None, None, None, tasks, input_spec)  # type: ignore[arg-type]
    else:  # a run directory from before signature.json: rebuild the data
        splits = build_data(cfg.data)
        names = feature_columns(splits.info, splits.input_dim) if splits.input_dim is not None else None
        preprocessor = splits.preprocessor if isinstance(splits.preprocessor, TabularPreprocessor) else None
    model = build_model(cfg.model, splits, cfg.backbone)
    ckpt = rd / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    best = state.get("best") or {}
    weights = best.get("state") if best.get("state") is not None else state.get("model")
    if not isinstance(weights, Mapping):
        raise CheckpointError(
            f"Checkpoint {str(ckpt)!r} holds no model weights; it was not written by mtlkit run."
        )
    mismatch = state_mismatch(weights, model.state_dict())
    if mismatch:
        raise CheckpointError(
            f"Checkpoint {str(ckpt)!r} does not fit the model described by {str(cfg_path)!r}: {mismatch}. "
            "Was config.yaml edited after training?"
        )
    model.load_state_dict(weights)
    device = torch.device(device)
    model.to(device).eval()
    return Predictor(
        model=model,
        tasks=tuple(splits.tasks),
        input_spec=splits.input_spec,
        preprocessor=preprocessor,
        feature_names=tuple(names) if names else None,
        run_dir=rd,
        checkpoint=ckpt,
        device=device,
    )
