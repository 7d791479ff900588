"""Per-step detection of NaN or infinite task losses, without a host synchronisation per step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlkit.errors import MtlkitError

__all__ = ["DivergenceGuard", "TrainingDivergedError"]


class TrainingDivergedError(MtlkitError, FloatingPointError):
    """A task loss became NaN or infinite during training."""


class DivergenceGuard:
    """Remembers the first step at which each task's loss was not finite.

    :meth:`update` runs a few element-wise operations on the ``[T]`` loss vector where it lives
    (no ``.item()``, so no host synchronisation on accelerators); :meth:`check` reads the
    result back (one synchronisation) and raises. The trainer checks whenever it already reads
    losses back (progress refreshes and the end of each epoch), so the error names the exact step
    although it may be raised a few steps later, and always before the epoch's checkpoint is
    written: the last checkpoint on disk is the last good one.

    Args:
        task_names: the tasks, in the order of the loss vector.
        device: where the losses live.
    """

    def __init__(self, task_names: Sequence[str], device: torch.device | str) -> None:
        self.task_names = tuple(task_names)
        n = len(self.task_names)
        self._first = torch.full((n,), -1, dtype=torch.long, device=device)
        self._value = torch.zeros(n, dtype=torch.float32, device=device)

    def update(self, losses: Tensor, step: int) -> None:
        """Record ``losses [T]`` of global step ``step`` (0-based)."""
        losses = losses.detach()
        new = ~torch.isfinite(losses) & (self._first < 0)
        self._first = torch.where(new, step, self._first)
        self._value = torch.where(new, losses.to(self._value.dtype), self._value)

    def state_dict(self) -> dict[str, Tensor]:
        """The first non-finite step and value of every task (CPU copies), for mid-epoch checkpoints."""
        return {"first": self._first.detach().cpu().clone(), "value": self._value.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict` output."""
        device = self._first.device
        self._first = state["first"].to(device, torch.long).clone()
        self._value = state["value"].to(device, self._value.dtype).clone()

    def check(self, *, epoch: int, epoch_start: int) -> None:
        """Raise :class:`TrainingDivergedError` if some loss was not finite.

        Args:
            epoch: the current epoch (0-based).
            epoch_start: the global step at which the epoch started (0-based).
        """
        first = self._first.tolist()
        bad = [s for s in first if s >= 0]
        if not bad:
            return
        step = min(bad)
        values = self._value.tolist()
        which = [(n, v) for n, s, v in zip(self.task_names, first, values) if s == step]
        name, value = which[0]
        others = "".join(f" Task {n!r} became {v} at the same step." for n, v in which[1:])
        raise TrainingDivergedError(
            f"Training diverged: the loss of task {name!r} became {value} in epoch {epoch + 1} at step "
            f"{step + 1} (batch {step - epoch_start + 1} of the epoch).{others} The last checkpoint written "
            "(if any) is from before that step. Lower the learning rate, set grad_clip_norm, or check the "
            "inputs for NaN/inf values."
        )
