"""Component families (models, weightings, datasets, optimizers, schedulers, training schedules) and validation of
their parameters, derived from each builder's signature so the code is the single source of truth."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from mtlkit._registry import Registry
from mtlkit._sections import SECTIONS
from mtlkit.errors import did_you_mean
from mtlkit.registries import AGGREGATORS, BACKBONES, DATASETS, MODELS, SCHEDULES, WEIGHTINGS

__all__ = ["FAMILIES", "OPTIMIZERS", "SCHEDULERS", "ComponentFamily", "validate_component"]

OPTIMIZERS: Registry = Registry("optimizer")
for _name, _cls in {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}.items():
    OPTIMIZERS.register(_name)(_cls)

SCHEDULERS: Registry = Registry("scheduler")
_lr = torch.optim.lr_scheduler
for _name, _cls in {
    "step": _lr.StepLR,
    "multistep": _lr.MultiStepLR,
    "exponential": _lr.ExponentialLR,
    "cosine": _lr.CosineAnnealingLR,
    "plateau": _lr.ReduceLROnPlateau,
}.items():
    SCHEDULERS.register(_name)(_cls)


@dataclass(frozen=True)
class ComponentFamily:
    """A registry plus the builder arguments that mtlkit supplies itself (not from the config).

    ``section`` is the config key, ``family`` the name in ``mtlkit list`` (from
    :data:`mtlkit._sections.SECTIONS`)."""

    section: str
    registry: Registry
    injected: frozenset[str]
    family: str = ""


_REGISTRIES: dict[str, tuple[Registry, frozenset[str]]] = {
    "data": (DATASETS, frozenset()),
    "backbone": (BACKBONES, frozenset({"input_spec"})),
    "model": (MODELS, frozenset({"input_dim", "input_spec", "input_layer", "tasks"})),
    "weighting": (WEIGHTINGS, frozenset({"tasks"})),
    "aggregator": (AGGREGATORS, frozenset({"tasks"})),
    "optimizer": (OPTIMIZERS, frozenset({"params"})),
    "scheduler": (SCHEDULERS, frozenset({"optimizer", "verbose"})),
    "schedule": (SCHEDULES, frozenset()),
}
FAMILIES: dict[str, ComponentFamily] = {
    s.key: ComponentFamily(s.key, *_REGISTRIES[s.key], family=s.family) for s in SECTIONS
}
"""One family per config section, in the order of :data:`~mtlkit._sections.SECTIONS`."""


def _strip_tensor(tp: Any) -> Any:
    """Drop ``torch.Tensor`` from annotations such as ``float | Tensor`` (configs hold plain values)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not torch.Tensor]
        args = [_strip_tensor(a) for a in args]
        return functools.reduce(lambda a, b: a | b, args) if args else Any
    if origin is tuple:
        return tuple[tuple(_strip_tensor(a) for a in typing.get_args(tp))]  # type: ignore[misc]
    return tp


@functools.cache
def _param_model(fn: Callable[..., Any], injected: frozenset[str]) -> type[BaseModel]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: fall back to Any
        hints = {}
    fields: dict[str, Any] = {}
    for name, p in inspect.signature(target).parameters.items():
        if name in ("self", *injected) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        tp = _strip_tensor(hints.get(name, Any))
        fields[name] = (tp, ... if p.default is inspect.Parameter.empty else p.default)
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"Params_{getattr(fn, '__name__', 'component')}",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )


def allowed_params(family: ComponentFamily, name: str) -> list[str]:
    """Parameter names a config may set for component ``name``."""
    return list(_param_model(family.registry.get(name), family.injected).model_fields)


def validate_component(
    spec: Any, family: ComponentFamily, path: str
) -> tuple[dict[str, Any] | None, list[str]]:
    """Check ``{name: ..., **params}``; returns the resolved spec (defaults filled in) and problems."""
    reg = family.registry
    names = reg.names()
    if not isinstance(spec, Mapping) or "name" not in spec:
        return None, [
            f"{path}: must be a mapping with a 'name' key, one of: {', '.join(names)}; got {spec!r}."
        ]
    name = spec["name"]
    if not isinstance(name, str) or name not in reg:
        return None, [
            f"{path}.name: unknown {reg.kind} {name!r}.{did_you_mean(str(name), names)} Available: {', '.join(names)}."
        ]
    canonical = reg.canonical(name)
    params = {k: v for k, v in spec.items() if k != "name"}
    model = _param_model(reg.get(canonical), family.injected)
    try:
        validated = model.model_validate(params)
    except ValidationError as exc:
        allowed = list(model.model_fields)
        return None, [format_error(e, path, allowed, f"{reg.kind} {canonical!r}") for e in exc.errors()]
    return {"name": canonical, **validated.model_dump(warnings=False)}, []  # e.g. min_lr: float | list


def format_error(err: Mapping[str, Any], path: str, allowed: list[str], what: str) -> str:
    """One line for one pydantic error: dotted path, what is wrong, and the fix."""
    loc = ".".join(str(x) for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    where = f"{path}.{loc}" if loc else path
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        return (
            f"{where}: unknown parameter for {what}.{did_you_mean(key, allowed)} "
            f"Allowed: {', '.join(allowed) or '(none)'}."
        )
    if kind == "missing":
        return f"{where}: required parameter for {what} is missing."
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and not isinstance(err["input"], Mapping):
        msg += f"; got {err['input']!r}"
    return f"{where}: {msg}."
