"""The model section's wrappers: ``bias_tower`` (a shallow selection-bias tower) and ``fusion``
(a fused ranking score), declared next to the model's own parameters::

    model:
      name: mmoe
      num_experts: 4
      bias_tower: {features: [position, device], tasks: [click], dims: [16], feature_dropout: 0.1}
      fusion: {kind: product, terms: {click: 1, watch_time: {weight: 0.5, transform: plus_one}}}

Either key set to ``null`` (e.g. in a ``compare`` variant) removes that wrapper. Both are checked
when the config is loaded (their fields) and when the model is built (against the data's columns
and tasks), on the same path for ``mtlkit validate`` and ``mtlkit run``. See docs/recsys.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError
from torch import nn

from mtlkit.data.schema import FeatureSchema, describe_input_spec
from mtlkit.data.splits import DataSplits
from mtlkit.errors import ConfigError
from mtlkit.tasks import TaskKind

__all__ = [
    "WRAPPER_KEYS",
    "BiasTowerConfig",
    "FusionConfig",
    "split_wrappers",
    "validate_wrappers",
    "wrap_model",
]

WRAPPER_KEYS = ("bias_tower", "fusion")


class BiasTowerConfig(BaseModel):
    """``model.bias_tower``: see :class:`mtlkit.models.BiasTower`."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(min_length=1)
    features: list[str] = Field(default_factory=list)
    input_key: str | None = None
    dims: list[PositiveInt] = Field(default_factory=lambda: [16])
    embedding_dim: PositiveInt = 4
    activation: str = "relu"
    feature_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    serving: Literal["omit", "missing", "reference"] = "omit"
    reference: dict[str, float] | None = None


class FusionConfig(BaseModel):
    """``model.fusion``: see :class:`mtlkit.models.ScoreFusion`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["product", "sum"] = "product"
    terms: dict[str, Any] = Field(min_length=1)
    output: str = "score"


_MODELS: dict[str, type[BaseModel]] = {"bias_tower": BiasTowerConfig, "fusion": FusionConfig}


def split_wrappers(spec: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(base model spec, {wrapper key: its spec})``; wrappers set to None are dropped."""
    base = {k: v for k, v in spec.items() if k not in WRAPPER_KEYS}
    wrappers = {k: spec[k] for k in WRAPPER_KEYS if spec.get(k) is not None}
    return base, wrappers


def validate_wrappers(spec: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The wrappers' specs with defaults filled in, and their problems (``model.<key>.<field>: ...``)."""
    out: dict[str, Any] = {}
    problems: list[str] = []
    for key in WRAPPER_KEYS:
        raw = spec.get(key)
        if raw is None:
            continue
        if not isinstance(raw, Mapping):
            problems.append(f"model.{key}: must be a mapping; got {raw!r}.")
            continue
        try:
            out[key] = _MODELS[key].model_validate(dict(raw)).model_dump()
        except ValidationError as exc:
            allowed = ", ".join(_MODELS[key].model_fields)
            for e in exc.errors():
                where = ".".join(str(x) for x in e["loc"])
                msg = e["msg"].removeprefix("Value error, ")
                if e["type"] == "extra_forbidden":
                    msg = f"unknown parameter. Allowed: {allowed}"
                elif "input" in e and not isinstance(e["input"], Mapping):
                    msg += f"; got {e['input']!r}"
                problems.append(f"model.{key}.{where}: {msg}.")
    return out, problems


def base_splits(splits: DataSplits, wrappers: Mapping[str, Any]) -> DataSplits:
    """The data as the base model sees it: without the bias columns (when a bias tower reads some)."""
    bias = wrappers.get("bias_tower")
    if not bias or not bias.get("features"):
        return splits
    from mtlkit.models.bias_tower import split_schema

    if not isinstance(splits.input_spec, FeatureSchema):
        raise ConfigError(
            [
                f"model.bias_tower.features: bias features are columns of tabular data; the data has "
                f"{describe_input_spec(splits.input_spec)}. Use input_key for a separate bias-feature input."
            ]
        )
    try:
        main, _ = split_schema(splits.input_spec, bias["features"])
    except ValueError as exc:
        raise ConfigError([f"model.{exc}"]) from None
    return dataclasses.replace(splits, input_spec=main)


def wrap_model(model: nn.Module, splits: DataSplits, wrappers: Mapping[str, Any]) -> nn.Module:
    """``model`` inside the configured bias tower, then the fusion (outermost)."""
    from mtlkit.models._base import MultiTaskModel
    from mtlkit.models.bias_tower import with_bias_tower
    from mtlkit.models.fusion import ScoreFusion

    if wrappers and not isinstance(model, MultiTaskModel):
        raise ConfigError(
            [f"model: {', '.join(wrappers)} wrap an mtlkit MultiTaskModel; got {type(model).__name__}."]
        )
    by_name = {t.name: t for t in splits.tasks}
    bias = wrappers.get("bias_tower")
    if bias:
        problems = []
        widths: dict[str, int] = {}
        outputs: list[str] = []
        for name in bias["tasks"]:
            task = by_name.get(name)
            if task is None:
                problems.append(
                    f"model.bias_tower.tasks: {name!r} is not a task of the data ({', '.join(by_name)})."
                )
            elif not (task.kind is TaskKind.REGRESSION or (task.kind is TaskKind.BINARY and task.logits)):
                problems.append(
                    f"model.bias_tower.tasks: {name!r} is a {task.kind.value} task"
                    + ("" if task.logits else " predicting a probability")
                    + "; the bias term is added to a binary task's logit or a regression's value."
                )
            else:
                outputs.append(task.output_key)
                widths[task.output_key] = task.output_dim
        if problems:
            raise ConfigError(problems)
        try:
            if bias.get("input_key") is not None:
                if not bias["features"]:
                    raise ValueError(
                        "bias_tower: with input_key, features must name the columns of that input."
                    )
                model = with_bias_tower(
                    model,  # type: ignore[arg-type]
                    tasks=outputs,
                    input_key=bias["input_key"],
                    num_bias_features=len(bias["features"]),
                    features=bias["features"],
                    out_features=widths,
                    **_tower_args(bias),
                )
            else:
                if not isinstance(splits.input_spec, FeatureSchema) or not bias["features"]:
                    raise ValueError(
                        "bias_tower: name the bias features (columns of tabular data) or an input_key."
                    )
                model = with_bias_tower(
                    model,  # type: ignore[arg-type]
                    tasks=outputs,
                    schema=splits.input_spec,
                    features=bias["features"],
                    out_features=widths,
                    **_tower_args(bias),
                )
        except ValueError as exc:
            msg = str(exc)
            raise ConfigError([msg if msg.startswith("model.") else f"model.{msg}"]) from None
    fusion = wrappers.get("fusion")
    if fusion:
        terms = {}
        for name, term in fusion["terms"].items():  # task names -> their output keys
            task = by_name.get(name)
            terms[task.output_key if task is not None else name] = term
        try:
            model = ScoreFusion(model, terms, splits.tasks, kind=fusion["kind"], output=fusion["output"])  # type: ignore[arg-type]
        except ValueError as exc:
            msg = str(exc)
            raise ConfigError(
                [f"model.{msg}" if msg.startswith("fusion") else f"model.fusion: {msg}"]
            ) from None
    return model


def _tower_args(bias: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "dims": bias["dims"],
        "embedding_dim": bias["embedding_dim"],
        "activation": bias["activation"],
        "feature_dropout": bias["feature_dropout"],
        "serving": bias["serving"],
        "reference": bias["reference"],
    }
