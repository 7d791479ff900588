"""Experiment configs: YAML validated with pydantic, bundled presets, ``key=value`` overrides."""

from mtlkit.config.components import OPTIMIZERS, SCHEDULERS
from mtlkit.config.load import (
    ResolvedExperiment,
    apply_overrides,
    list_presets,
    load_config,
    load_preset,
    resolve,
)
from mtlkit.config.schema import EarlyStoppingConfig, ExperimentConfig, TrainerConfig

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "EarlyStoppingConfig",
    "ExperimentConfig",
    "ResolvedExperiment",
    "TrainerConfig",
    "apply_overrides",
    "list_presets",
    "load_config",
    "load_preset",
    "resolve",
]
