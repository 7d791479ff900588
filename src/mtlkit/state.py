"""What a balancing method may know about training progress, passed in at each step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TrainState"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainState:
    """Read-only training progress handed to loss weightings and aggregators.

    Attributes:
        step: optimizer steps taken so far (0 at the first step).
        epoch: current epoch (0-based).
        epoch_losses: mean training loss per task of each finished epoch, oldest first
            (``epoch_losses[-1][t]``: last epoch, task ``t``), for methods such as DWA.
        generator: a seeded generator for stochastic methods (RLW, PCGrad's shuffle);
            owned by the trainer and saved in checkpoints.
    """

    step: int = 0
    epoch: int = 0
    epoch_losses: tuple[tuple[float, ...], ...] = ()
    generator: torch.Generator | None = None
