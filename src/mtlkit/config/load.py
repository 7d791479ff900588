"""Load configs (YAML files, bundled presets), apply ``key=value`` overrides, expand ``compare``
variants and validate everything, reporting all problems at once."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mtlkit._sections import SECTIONS
from mtlkit.config.build import schedule_problems
from mtlkit.config.components import FAMILIES, format_error, validate_component
from mtlkit.config.model_wrappers import WRAPPER_KEYS, validate_wrappers
from mtlkit.config.schema import EarlyStoppingConfig, ExperimentConfig, TrainerConfig
from mtlkit.errors import ConfigError, did_you_mean

__all__ = [
    "ResolvedExperiment",
    "apply_overrides",
    "list_presets",
    "load_config",
    "load_preset",
    "load_yaml",
    "merge_variant",
    "resolve",
]

DEFAULT_PRESET = "default"
_SECTIONS = tuple(s.key for s in SECTIONS)
# a section given without a name keeps its default component, e.g. `optimizer: {lr: 0.01}` keeps Adam
_DEFAULT_NAMES = {s.key: s.default["name"] for s in SECTIONS if s.default is not None}
_NESTED: dict[str, type[BaseModel]] = {
    "trainer": TrainerConfig,
    "trainer.early_stopping": EarlyStoppingConfig,
}


# ---------------------------------------------------------------------------------------------- reading
def _preset_files() -> dict[str, Any]:
    root = resources.files("mtlkit.config") / "presets"
    return {p.name[: -len(".yaml")]: p for p in root.iterdir() if p.name.endswith(".yaml")}


def list_presets() -> dict[str, str]:
    """``{preset name: description}`` of the bundled presets."""
    out = {}
    for name, path in sorted(_preset_files().items()):
        raw = yaml.safe_load(path.read_text()) or {}
        out[name] = str(raw.get("description", "")).strip().splitlines()[0] if raw.get("description") else ""
    return out


def load_preset(name: str) -> dict[str, Any]:
    """The raw dict of a bundled preset."""
    files = _preset_files()
    if name not in files:
        raise ConfigError(
            [
                f"preset: unknown preset {name!r}.{did_you_mean(name, files)} Available: {', '.join(sorted(files))}."
            ]
        )
    return _parse(files[name].read_text(), f"preset {name!r}")


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw dict of a YAML config file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            [f"{p}: no such config file. Pass a YAML file, or --preset NAME (see `mtlkit list`)."]
        )
    return _parse(p.read_text(), str(p))


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"invalid YAML{where}: {problem}."], source=source) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"the top level must be a mapping of keys to values; got {type(raw).__name__}."], source=source
        )
    return raw


# ---------------------------------------------------------------------------------------------- overrides
def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML scalars/lists).

    Setting a component's ``name`` (``model.name=shared_bottom``) starts that section afresh
    (the new component's defaults), then applies the other overrides given for it.
    """
    out = copy.deepcopy(dict(raw))
    parsed: list[tuple[list[str], Any]] = []
    problems: list[str] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"{item!r}: overrides look like dotted.key=value (e.g. trainer.epochs=5).")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        parsed.append((key.split("."), value))
    if problems:
        raise ConfigError(problems, source="command-line overrides")
    renamed = {tuple(path[:-1]) for path, _ in parsed if path[-1] == "name" and _is_component_path(path[:-1])}
    for prefix in renamed:
        _set(out, list(prefix), {}, problems)
    for path, value in parsed:
        _set(out, path, value, problems)
    if problems:
        raise ConfigError(problems, source="command-line overrides")
    return out


def _is_component_path(path: list[str]) -> bool:
    if len(path) == 1:
        return path[0] in _SECTIONS
    return len(path) == 3 and path[0] == "compare" and path[2] in _SECTIONS


def _set(d: dict[str, Any], path: list[str], value: Any, problems: list[str]) -> None:
    cur = d
    for i, part in enumerate(path[:-1]):
        nxt = cur.get(part)
        if nxt is None:
            nxt = cur[part] = {}
        if not isinstance(nxt, dict):
            problems.append(
                f"{'.'.join(path[: i + 1])}: is {nxt!r}, not a section, so {'.'.join(path)} cannot be set."
            )
            return
        cur = nxt
    cur[path[-1]] = value


# ---------------------------------------------------------------------------------------------- variants
def merge_variant(base: Mapping[str, Any], variant: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``variant`` over ``base``; a component whose ``name`` changes is replaced whole."""
    out = copy.deepcopy({k: v for k, v in base.items() if k != "compare"})
    for key, value in variant.items():
        cur = out.get(key)
        if (
            (key in _SECTIONS or (isinstance(cur, Mapping) and "name" in cur))  # a (nested) component
            and isinstance(value, Mapping)
            and isinstance(cur, Mapping)
            and "name" in value
            and value.get("name") != cur.get("name")
        ):
            out[key] = copy.deepcopy(dict(value))
        elif isinstance(value, Mapping) and isinstance(cur, Mapping):
            out[key] = merge_variant(cur, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------------------------- validation
@dataclass(frozen=True)
class ResolvedExperiment:
    """A validated experiment: the config (components resolved) and its runs, one per variant."""

    config: ExperimentConfig
    variants: dict[str, ExperimentConfig]  # label -> config without `compare`
    source: str

    def to_dict(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")


def _allowed_at(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = ExperimentConfig
    key = ".".join(str(x) for x in loc)
    if key in _NESTED:
        model = _NESTED[key]
    return list(model.model_fields)


def _validate_one(raw: Mapping[str, Any]) -> tuple[ExperimentConfig | None, list[str]]:
    problems: list[str] = []
    resolved = dict(raw)
    for section in _SECTIONS:
        spec = raw.get(section)
        if spec is None or not isinstance(spec, Mapping):
            continue  # missing or not a mapping: reported by the schema below
        if "name" not in spec and section in _DEFAULT_NAMES:
            spec = {"name": _DEFAULT_NAMES[section], **spec}  # e.g. `optimizer: {lr: 0.01}` keeps Adam
        wrappers: dict[str, Any] = {}
        if section == "model":  # bias_tower / fusion: checked apart from the builder's parameters
            wrappers, errs = validate_wrappers(spec)
            problems += errs
            spec = {k: v for k, v in spec.items() if k not in WRAPPER_KEYS}
        comp, errs = validate_component(spec, FAMILIES[section], section)
        problems += errs
        if comp is not None:
            resolved[section] = {**comp, **wrappers}
    try:
        cfg = ExperimentConfig.model_validate(resolved)
    except ValidationError as exc:
        for e in exc.errors():
            loc = tuple(e["loc"])
            if e["type"] == "extra_forbidden":
                allowed = _allowed_at(loc[:-1])
                where = ".".join(str(x) for x in loc)
                problems.append(
                    f"{where}: unknown key.{did_you_mean(str(loc[-1]), allowed)} Allowed: {', '.join(allowed)}."
                )
            elif e["type"] == "missing":
                problems.append(f"{'.'.join(str(x) for x in loc)}: required key is missing.")
            else:
                problems.append(format_error(e, "", [], "the config").lstrip("."))
        return None, problems
    if not problems:
        problems += schedule_problems(cfg)
    return (cfg if not problems else None), problems


def resolve(raw: Mapping[str, Any], *, source: str = "config") -> ResolvedExperiment:
    """Validate ``raw`` and expand its variants; raises :class:`ConfigError` listing every problem."""
    base_cfg, problems = _validate_one(raw)
    variants: dict[str, ExperimentConfig] = {}
    compare = raw.get("compare")
    if isinstance(compare, Mapping) and compare:
        seen = set(problems)
        for label, variant in compare.items():
            if not isinstance(variant, Mapping):
                problems.append(
                    f"compare.{label}: must be a mapping of overrides (or {{}}); got {variant!r}."
                )
                continue
            cfg, errs = _validate_one(merge_variant(raw, variant))
            problems += [f"compare.{label}: {e}" for e in errs if e not in seen]
            if cfg is not None:
                variants[str(label)] = cfg
        baseline = raw.get("baseline")
        if baseline is not None and baseline not in compare:
            problems.append(
                f"baseline: {baseline!r} is not a compare label.{did_you_mean(str(baseline), compare)} "
                f"Labels: {', '.join(map(str, compare))}."
            )
    elif base_cfg is not None:
        variants[base_cfg.name] = base_cfg
    if problems or base_cfg is None:
        raise ConfigError(problems, source=source)
    return ResolvedExperiment(base_cfg, variants, source)


def load_config(
    path: str | os.PathLike[str] | None = None, *, preset: str | None = None, overrides: Iterable[str] = ()
) -> ResolvedExperiment:
    """Load a YAML file or a preset (default: the ``default`` preset), apply overrides, validate."""
    if path is not None and preset is not None:
        raise ConfigError(["give a config file or --preset, not both."])
    if path is not None:
        raw, source = load_yaml(path), str(path)
    else:
        name = preset or DEFAULT_PRESET
        raw, source = load_preset(name), f"preset {name!r}"
    overrides = list(overrides)
    if overrides:
        raw = apply_overrides(raw, overrides)
        source += " with overrides"
    return resolve(raw, source=source)
