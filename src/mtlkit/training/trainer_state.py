"""A :class:`~mtlkit.training.Trainer`'s checkpoint dict: which keys hold what, how it is built
(:func:`trainer_state`) and restored (:func:`load_trainer_state`), and the checks that refuse a
checkpoint written for other tasks, another model or other components. The file format, atomic
writes and resume live in :mod:`mtlkit.training.checkpoint`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from mtlkit.errors import CheckpointError
from mtlkit.training.balancer import unwrap
from mtlkit.training.checkpoint import component_mismatch, state_mismatch

if TYPE_CHECKING:
    from mtlkit.training.trainer import Trainer

__all__ = ["load_trainer_state", "trainer_components", "trainer_state"]


def trainer_components(trainer: Trainer) -> dict[str, str | None]:
    """Class names of what a trainer checkpoint's state belongs to (checked when loading)."""

    def name(obj: Any) -> str | None:
        return type(obj).__name__ if obj is not None else None

    return {
        "model": name(unwrap(trainer.model)),
        **trainer.optimizers.component_names(),
        "weighting": name(trainer.weighting),
        "aggregator": name(trainer.aggregator),
    }


def trainer_state(trainer: Trainer) -> dict[str, Any]:
    """Everything needed to resume ``trainer`` exactly (:meth:`Trainer.state_dict`)."""
    return {
        "task_names": list(trainer.task_names),
        "components": trainer_components(trainer),
        "model": unwrap(trainer.model).state_dict(),  # without a DDP wrapper's "module." prefix
        **trainer.optimizers.state_dict(),
        "schedule": trainer.schedule.state_dict(),
        "weighting": trainer.weighting.state_dict(),
        "aggregator": trainer.aggregator.state_dict() if trainer.aggregator is not None else None,
        "epoch": trainer.epoch,
        "step": trainer.step,
        # inside an epoch (Trainer.fit(checkpoint_every=...)): the epoch's position; None between epochs
        "position": trainer.position(),
        "seed": trainer.seed,
        "history": trainer.history,
        "epoch_losses": [list(x) for x in trainer.epoch_losses],
        "best": trainer.stopper.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "trainer": trainer.generator.get_state(),
        },
    }


def _check_fits(trainer: Trainer, state: Mapping[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` when ``state`` was written for other tasks, components or model."""
    names = list(state.get("task_names", []))
    if names != list(trainer.task_names):
        raise CheckpointError(
            f"The {source} was written for tasks {names}, but this trainer has {list(trainer.task_names)}."
        )
    components = trainer_components(trainer)
    saved_model = (state.get("components") or {}).get("model")
    if saved_model is not None and saved_model != components["model"]:
        raise CheckpointError(
            f"The {source} does not fit this model: it holds the weights of a {saved_model}, and this "
            f"model is a {components['model']}. Build the same architecture as the run that wrote it."
        )
    diff = component_mismatch(state.get("components") or {}, components)
    if diff:
        raise CheckpointError(
            f"The {source} was written by a different setup: {diff}. Use the same model, optimizer, "
            "scheduler, loss weighting and aggregator as the run that wrote it (see its config.yaml)."
        )
    model = unwrap(trainer.model)
    mismatch = state_mismatch(state["model"], model.state_dict())
    if mismatch:
        raise CheckpointError(
            f"The {source} does not fit this model ({type(model).__name__}): {mismatch}. "
            "Build the model with the same architecture and sizes as the run that wrote it."
        )


def _position(state: Mapping[str, Any], source: str) -> dict[str, Any] | None:
    """The checked mid-epoch position of ``state`` (``None``: written between epochs, or by an
    mtlkit without mid-epoch checkpoints)."""
    position = state.get("position")
    if not position or not int(position.get("steps", 0)):
        return None
    keys = ("epoch", "steps", "stats", "schedule")
    if any(k not in position for k in keys) or int(position["epoch"]) != int(state["epoch"]):
        raise CheckpointError(
            f"The {source} records a position inside an epoch that is incomplete or inconsistent "
            f"(it needs {', '.join(keys)} and the epoch of the checkpoint). It is damaged; resume from "
            "an earlier copy or train again."
        )
    return dict(position)


def load_trainer_state(trainer: Trainer, state: Mapping[str, Any], *, source: str = "checkpoint") -> None:
    """Restore :func:`trainer_state` output into ``trainer`` (:meth:`Trainer.load_state_dict`).

    Raises:
        CheckpointError: ``state`` was written for other tasks, another model or other
            components, or its optimizer / loss-weighting state does not fit; ``source`` names it.
    """
    _check_fits(trainer, state, source)
    unwrap(trainer.model).load_state_dict(state["model"])
    try:
        trainer.weighting.load_state_dict(state["weighting"])
        if trainer.aggregator is not None and state.get("aggregator") is not None:
            trainer.aggregator.load_state_dict(state["aggregator"])
        trainer.optimizers.load_state_dict(state, source=source)
    except CheckpointError:
        raise
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"The {source}'s optimizer or loss-weighting state does not fit this trainer ({exc}). "
            "Use the same optimizer and weighting as the run that wrote it."
        ) from None
    trainer.optimizers.load_schedulers(state)
    position = _position(state, source)
    if position is not None:  # the epoch is replayed from the schedule's state at its start
        trainer.schedule.load_state_dict(position["schedule"])
    elif state.get("schedule") is not None:
        trainer.schedule.load_state_dict(state["schedule"])
    trainer._resume_position = position
    trainer.epoch, trainer.step = int(state["epoch"]), int(state["step"])
    trainer.seed = int(state.get("seed", trainer.seed))  # the data order of the resumed run
    trainer.history = list(state.get("history", []))
    trainer.epoch_losses = [tuple(x) for x in state.get("epoch_losses", [])]
    trainer.stopper.load_state_dict(state.get("best"))
    rng = state.get("rng") or {}
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if "trainer" in rng:
        trainer.generator.set_state(rng["trainer"])
