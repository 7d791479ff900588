"""The experiment configuration: a YAML file, preset or override set, validated with pydantic."""

from __future__ import annotations

import copy
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    create_model,
    field_validator,
)

from mtlkit._sections import SECTIONS, Section

__all__ = ["EarlyStoppingConfig", "ExperimentConfig", "TrainerConfig"]

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EarlyStoppingConfig(_Strict):
    """Stop when the monitored metric stops improving; restore the best weights."""

    monitor: str = "mean/relative"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: NonNegativeInt = 5
    min_delta: NonNegativeFloat = 0.0
    restore_best: bool = True

    @field_validator("monitor")
    @classmethod
    def _monitor(cls, v: str) -> str:
        if "/" not in v:
            raise ValueError("must look like '<task>/<metric>' or 'mean/<metric>' (e.g. 'mean/loss')")
        return v


class TrainerConfig(_Strict):
    """How to train: epochs, batch size, device, early stopping, logging."""

    epochs: PositiveInt = 20
    batch_size: PositiveInt = 256
    device: str = "auto"
    grad_clip_norm: PositiveFloat | None = None
    gradient_target: Literal["parameters", "representation"] = "parameters"
    per_task_optimizers: bool = False
    scheduler_interval: Literal["epoch", "step"] = "epoch"
    early_stopping: EarlyStoppingConfig | None = None
    log_epochs: bool = False
    progress: bool | None = None
    tensorboard: bool = False
    checkpoint_every_steps: int | None = None  # also checkpoint every N optimizer steps inside an epoch

    @field_validator("checkpoint_every_steps", mode="before")
    @classmethod
    def _checkpoint_every_steps(cls, v: Any) -> Any:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(
                "must be a whole number of optimizer steps >= 1: the checkpoint is then also "
                "written every that many steps inside an epoch; leave it out to checkpoint at the end of "
                "every epoch only"
            )
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE.match(v):
            raise ValueError("must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return v


def _section_field(section: Section) -> tuple[Any, Any]:
    if section.required:
        return dict[str, Any], ...
    if section.default is None:
        return dict[str, Any] | None, None
    default = section.default
    return dict[str, Any], Field(default_factory=lambda: copy.deepcopy(default))


class _Experiment(_Strict):
    """Validators and methods of :class:`ExperimentConfig` (whose fields are generated)."""

    @field_validator("name", check_fields=False)
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.\-]+$", v):
            raise ValueError("must use only letters, digits, '_', '-' and '.' (it names the run directory)")
        return v

    def run_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed]  # type: ignore[attr-defined]


# the fields in the order a resolved config is printed; the component sections come from SECTIONS
ExperimentConfig: type[_Experiment] = create_model(  # type: ignore[call-overload]
    "ExperimentConfig",
    __base__=_Experiment,
    __module__=__name__,
    __doc__="""A whole experiment. Component sections name registry entries: ``model: {name: mmoe, num_experts: 8}``.

    The component sections (``data``, ``backbone``, ``model``, ``weighting``, ``aggregator``,
    ``optimizer``, ``scheduler``, ``schedule``) are generated from :data:`mtlkit._sections.SECTIONS`.
    ``compare`` maps a label to a partial config merged over this one; each label is one run (per
    seed). A component whose ``name`` a variant changes is replaced, not merged.
    ``delta_m_metrics`` selects the metrics of Δm and of the comparison table (default: each
    task's primary metric; see :func:`mtlkit.metrics.select_metrics`); ``plots: true`` writes PNG plots into the run directory.
    """,
    name=(str, "experiment"),
    description=(str, ""),
    seed=(NonNegativeInt, 0),  # numpy's seed sequences take no negative seed
    seeds=(list[NonNegativeInt] | None, Field(default=None, min_length=1)),
    **{section.key: _section_field(section) for section in SECTIONS},
    trainer=(TrainerConfig, Field(default_factory=TrainerConfig)),
    compare=(dict[str, dict[str, Any]] | None, None),
    baseline=(str | None, None),
    delta_m_metrics=(list[str] | dict[str, list[str]] | None, None),
    plots=(bool, False),
    output_dir=(str, "runs"),
)
