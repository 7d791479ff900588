"""The contract every multi-task model meets."""

from __future__ import annotations

from torch import Tensor, nn

from mtlkit.data.batch import Inputs
from mtlkit.errors import UnknownComponentError

__all__ = ["MultiTaskModel"]


class MultiTaskModel(nn.Module):
    """Base class: ``forward(x) -> {task name: output}``.

    Subclasses set ``task_names`` and implement :meth:`task_parameters`; every parameter
    not owned by a task is shared. Models that have a shared representation implement
    :meth:`encode` / :meth:`decode` (``forward(x) == decode(encode(x), x)``), which the
    representation-level gradient methods use.
    """

    task_names: tuple[str, ...]

    def forward(self, x: Inputs) -> dict[str, Tensor]:
        return self.decode(self.encode(x), x)

    def encode(self, x: Inputs) -> Tensor:
        """The shared representation of ``x`` (shared-bottom output, expert outputs...)."""
        raise NotImplementedError(f"{type(self).__name__} has no single shared representation.")

    def decode(self, rep: Tensor, x: Inputs) -> dict[str, Tensor]:
        """Task outputs from the shared representation ``rep`` (and the inputs, for gates)."""
        raise NotImplementedError(f"{type(self).__name__} has no single shared representation.")

    def encode_decode(self, x: Inputs) -> tuple[Tensor, dict[str, Tensor]]:
        """``(rep, outputs)`` with ``rep = encode(x)`` and ``outputs = decode(rep, x)``.

        What representation-level gradient methods run (the Trainer takes the per-task gradients
        with respect to ``rep``). Models whose :meth:`decode` reads the inputs again (e.g. gates on
        the input layer's features) override it to evaluate the input layer once.
        """
        rep = self.encode(x)
        return rep, self.decode(rep, x)

    @property
    def has_representation(self) -> bool:
        """True when :meth:`encode` / :meth:`decode` are implemented (a wrapper such as ESMM
        answers for the model it wraps); representation-level gradient methods need them."""
        return type(self).encode is not MultiTaskModel.encode

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters used only by ``task``."""
        raise NotImplementedError(f"{type(self).__name__} must implement task_parameters(task).")

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters not owned by any single task, in registration order."""
        owned = {id(p) for t in self.task_names for p in self.task_parameters(t)}
        return [p for p in self.parameters() if id(p) not in owned]

    def gates(self, x: Inputs) -> dict[str, Tensor]:
        """Gate weights (or attention maps) for analysis, ``{name: (N, num_experts)}``; ``{}`` if none."""
        return {}

    def _check_task(self, task: str) -> None:
        if task not in self.task_names:
            raise UnknownComponentError("task", task, self.task_names)

    def num_parameters(self) -> int:
        """Total number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def params_of(*modules: nn.Module | None) -> list[nn.Parameter]:
    """Parameters of several modules, without duplicates, in order."""
    seen: set[int] = set()
    out: list[nn.Parameter] = []
    for m in modules:
        if m is None:
            continue
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out
