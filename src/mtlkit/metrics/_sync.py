"""Concatenated metric states that synchronise when a process saw no data.

torchmetrics replaces an empty list state by an empty tensor of the metric's default dtype
before gathering it across processes; when the other processes hold int64 or float64 tensors of
that state, the gather's sizes disagree and gloo aborts. A metric with this mixin names each list
state's dtype (``CAT_DTYPES``), and an empty one is gathered as an empty tensor of that dtype."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torchmetrics import Metric


class TypedCatStates(Metric):
    """Mixin: ``CAT_DTYPES = {state: dtype}`` of the metric's ``dist_reduce_fx="cat"`` states."""

    CAT_DTYPES: ClassVar[dict[str, torch.dtype]] = {}

    def _sync_dist(self, *args: Any, **kwargs: Any) -> None:
        for name, dtype in self.CAT_DTYPES.items():
            state = getattr(self, name)
            if isinstance(state, list) and not state:
                state.append(torch.zeros(0, dtype=dtype, device=self.device))
        super()._sync_dist(*args, **kwargs)
