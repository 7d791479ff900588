"""One way to load a trained run directory: :func:`load_run`.

``mtlkit evaluate``, ``mtlkit predict``, ``mtlkit export`` and the reproductions' analyses all
rebuild a trained model the same way: find the run (a folder with ``checkpoint.pt``), rebuild the
model from its ``config.yaml`` (tasks and inputs from ``signature.json`` when the run wrote one,
so the training data is not read; else from the data), read the checkpoint, check that it fits
(the same tasks, architecture and sizes) and load the best epoch's weights when the run kept
them, else the last epoch's (:func:`~mtlkit.training.checkpoint.model_weights`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from mtlkit.config.schema import ExperimentConfig
from mtlkit.data.schema import InputSpec
from mtlkit.data.splits import DataSplits
from mtlkit.errors import CheckpointError
from mtlkit.tasks import Task
from mtlkit.training.checkpoint import load_checkpoint, model_weights, state_mismatch

__all__ = ["LoadedRun", "find_run", "find_runs", "load_run", "read_config", "with_saved_preprocessor"]


@dataclass
class LoadedRun:
    """A trained run rebuilt from its directory.

    Attributes:
        run_dir: the run's folder (holding ``config.yaml`` and ``checkpoint.pt``).
        config: the run's resolved config.
        checkpoint: the checkpoint file.
        state: the checkpoint's contents.
        model: the model with the best weights (else the last), in eval mode.
        tasks: the task definitions.
        input_spec: what the model reads.
        preprocessor: the fitted tabular preprocessing, when the data has one.
        feature_names: names of flat feature columns (``signature.json`` or the data's), or None.
        splits: the run's data when it was built (``data=True``, ``splits=`` given, or an old run
            directory without ``signature.json``), else None.
    """

    run_dir: Path
    config: ExperimentConfig
    checkpoint: Path
    state: dict[str, Any]
    model: nn.Module
    tasks: tuple[Task, ...]
    input_spec: InputSpec | None
    preprocessor: Any = None
    feature_names: tuple[str, ...] | None = None
    splits: DataSplits | None = None


def find_runs(path: str | os.PathLike[str]) -> list[Path]:
    """Every run folder (one holding ``checkpoint.pt``) at or under ``path``, sorted."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"Run directory {str(root)!r} does not exist.")
    if (root / "checkpoint.pt").is_file():
        return [root]
    found = sorted(p.parent for p in root.rglob("checkpoint.pt"))
    if not found:
        raise CheckpointError(
            f"No checkpoint.pt under {str(root)!r}; is it a run directory written by `mtlkit run`?"
        )
    return found


def find_run(path: str | os.PathLike[str]) -> Path:
    """The one run (folder with ``checkpoint.pt``) in ``path``; refuses ambiguous experiment folders."""
    root = Path(path)
    found = find_runs(root)
    if len(found) > 1:
        runs = ", ".join(str(p.relative_to(root)) for p in found)
        raise CheckpointError(
            f"{str(root)!r} holds {len(found)} trained models ({runs}); pass one of them, e.g. "
            f"{str(found[-1])!r}."
        )
    return found[0]


def with_saved_preprocessor(spec: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """``spec`` with ``preprocessor=<run_dir>/preprocessor.json`` when the run saved one and the
    dataset builder can reuse it (instead of fitting it again)."""
    from mtlkit.config.components import FAMILIES, allowed_params

    spec = dict(spec)
    saved = run_dir / "preprocessor.json"
    if not saved.is_file() or spec.get("preprocessor") is not None:
        return spec
    if "preprocessor" not in allowed_params(FAMILIES["data"], spec["name"]):
        return spec
    return {**spec, "preprocessor": str(saved)}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{str(path)!r} could not be read ({exc}); the run directory is damaged."
        ) from None


def read_config(run_dir: Path) -> ExperimentConfig:
    """The resolved config of one run folder."""
    from mtlkit.config.load import resolve

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{str(run_dir)!r} has a checkpoint but no config.yaml; cannot rebuild the model."
        )
    return next(iter(resolve(yaml.safe_load(cfg_path.read_text()), source=str(cfg_path)).variants.values()))


def load_run(
    path: str | os.PathLike[str],
    *,
    splits: DataSplits | None = None,
    data: bool = False,
    device: torch.device | str = "cpu",
) -> LoadedRun:
    """Rebuild the trained model of a run directory.

    Args:
        path: a run directory written by ``mtlkit run`` (of an experiment with several variants
            or seeds: the folder of one of them, e.g. ``.../mmoe/seed0``).
        splits: the run's data, when the caller has built it already.
        data: build the run's data (with the run's saved preprocessing) into ``.splits``.
        device: where to put the model.

    Raises:
        CheckpointError: the directory, its config or its checkpoint is missing or damaged, or
            the checkpoint does not fit the model the config describes.
    """
    from mtlkit.config.build import build_data, build_model, model_data
    from mtlkit.data.preprocessing import TabularPreprocessor
    from mtlkit.predict import (
        PREPROCESSOR_FILE,
        SIGNATURE_FILE,
        _input_from_dict,
        _task_from_dict,
        feature_columns,
    )

    rd = find_run(path)
    cfg = read_config(rd)
    preprocessor: Any = None
    names: list[str] | None = None
    sig_path, pre_path = rd / SIGNATURE_FILE, rd / PREPROCESSOR_FILE
    if splits is None and (data or not sig_path.is_file()):  # (an old run without signature.json)
        splits = model_data(cfg.model, build_data(with_saved_preprocessor(cfg.data, rd)))
    if splits is not None:
        tasks, input_spec = tuple(splits.tasks), splits.input_spec
        if isinstance(splits.preprocessor, TabularPreprocessor):
            preprocessor = splits.preprocessor
        if splits.input_dim is not None:
            names = feature_columns(splits.info, splits.input_dim)
    if sig_path.is_file():  # what the run saved describes the model's inputs
        sig = _read_json(sig_path)
        if splits is None:
            tasks = tuple(_task_from_dict(t) for t in sig["tasks"])
            input_spec = _input_from_dict(sig["input"])[0]
        names = _input_from_dict(sig["input"])[1] or names
        if pre_path.is_file():
            preprocessor = TabularPreprocessor.from_state_dict(_read_json(pre_path))
    model_splits = splits if splits is not None else DataSplits(None, None, None, tasks, input_spec)  # type: ignore[arg-type]
    with torch.random.fork_rng(devices=[]):  # as in training; the caller's random state is kept
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, model_splits, cfg.backbone)
    ckpt = rd / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    _check_fits(state, model, tasks, ckpt, rd / "config.yaml")
    model.load_state_dict(model_weights(state, source=f"checkpoint {str(ckpt)!r}"))
    device = torch.device(device)
    model.to(device).eval()
    return LoadedRun(
        run_dir=rd,
        config=cfg,
        checkpoint=ckpt,
        state=state,
        model=model,
        tasks=tasks,
        input_spec=input_spec,
        preprocessor=preprocessor,
        feature_names=tuple(names) if names else None,
        splits=splits,
    )


def _check_fits(
    state: Mapping[str, Any], model: nn.Module, tasks: tuple[Task, ...], ckpt: Path, cfg_path: Path
) -> None:
    where = f"Checkpoint {str(ckpt)!r}"
    saved_tasks = state.get("task_names")
    if saved_tasks is not None and list(saved_tasks) != [t.name for t in tasks]:
        raise CheckpointError(
            f"{where} was written for tasks {list(saved_tasks)}, but {str(cfg_path)!r} describes "
            f"{[t.name for t in tasks]}. Was config.yaml edited after training?"
        )
    saved_model = (state.get("components") or {}).get("model")
    if saved_model is not None and saved_model != type(model).__name__:
        raise CheckpointError(
            f"{where} holds the weights of a {saved_model}, but {str(cfg_path)!r} describes a "
            f"{type(model).__name__}. Was config.yaml edited after training?"
        )
    weights = model_weights(state, source=f"checkpoint {str(ckpt)!r}")
    mismatch = state_mismatch(weights, model.state_dict())
    if mismatch:
        raise CheckpointError(
            f"{where} does not fit the model described by {str(cfg_path)!r}: {mismatch}. "
            "Was config.yaml edited after training?"
        )
