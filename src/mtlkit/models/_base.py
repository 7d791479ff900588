"""The contract every multi-task model meets, and the one forward entry point the trainer calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, overload

from torch import Tensor, nn

from mtlkit.data.batch import Inputs
from mtlkit.errors import ShapeError, UnknownComponentError

__all__ = ["ForwardParts", "MultiTaskModel", "TaskRows", "forward_parts"]


class ForwardParts(NamedTuple):
    """One forward pass, in parts.

    Attributes:
        outputs: ``{output name: prediction}``, what ``model(x)`` returns.
        aux: auxiliary losses (model penalties such as a soft-sharing coupling or a calibrator),
            ``{name: scalar}``; the trainer adds them to the objective unweighted.
        representation: the shared representation the outputs were computed from, for
            representation-level gradient methods; None when not asked for or when the model has none.
    """

    outputs: dict[str, Tensor]
    aux: dict[str, Tensor]
    representation: Tensor | None = None


Decoded = tuple[dict[str, Tensor], dict[str, Tensor]]
"""``(outputs, aux)`` as the hooks return them."""

TaskRows = Mapping[str, Tensor]
"""``{task: 1-D int64 row indices}``: the rows of a batch whose output a task's loss reads."""


class MultiTaskModel(nn.Module):
    """Base class: ``forward(x) -> {task name: output}``; :meth:`forward_parts` adds the auxiliary
    losses and, on request, the shared representation.

    Subclasses set ``task_names``, implement :meth:`task_parameters` (every parameter not owned by a
    task is shared) and one of:

    * :meth:`_forward` ``(x) -> (outputs, aux)``: the model has no single shared representation;
    * :meth:`_encode` ``(x) -> (rep, ctx)`` and :meth:`_decode` ``(rep, ctx) -> (outputs, aux)``:
      the outputs are a function of a shared representation ``rep`` (and of ``ctx``, whatever else
      the encoder passes on, e.g. the input layer's features that gates read). ``_decode`` computes
      each task from ``rep`` through its own graph, so that a task's backward pass touches only its
      own modules. Such a model may still override :meth:`_forward` with a faster joint path (e.g.
      every tower in one batched call) that gives the same outputs.
    """

    task_names: tuple[str, ...]

    # ------------------------------------------------------------------ entry points
    @overload
    def forward(
        self, x: Inputs, *, parts: Literal[False] = ..., rows: TaskRows | None = ...
    ) -> dict[str, Tensor]: ...
    @overload
    def forward(self, x: Inputs, *, parts: Literal[True], rows: TaskRows | None = ...) -> ForwardParts: ...
    def forward(
        self, x: Inputs, *, parts: bool = False, rows: TaskRows | None = None
    ) -> dict[str, Tensor] | ForwardParts:
        """The predictions ``{task: output}``; ``parts=True`` gives the whole :class:`ForwardParts`
        (for wrappers such as DistributedDataParallel that only call ``forward``); ``rows``: see
        :meth:`forward_parts`."""
        if parts:
            return self.forward_parts(x, rows=rows)
        return self._plain(x, rows)[0]

    def forward_parts(
        self, x: Inputs, *, representation: bool = False, rows: TaskRows | None = None
    ) -> ForwardParts:
        """Outputs, auxiliary losses and (with ``representation=True``) the shared representation.

        With ``representation=True`` and a model that has one (:attr:`has_representation`), the
        outputs are computed from the returned representation with each task's graph apart (what
        gradient-level methods need: per-task backward passes stay cheap); they equal the plain
        path's outputs. Otherwise this is the plain forward and ``representation`` is None.

        ``rows``: ``{task: row indices}``, a training hint that only these rows of ``task``'s
        output are read (its labelled rows; the trainer passes it when tasks have disjoint or
        sparse labels, as MNIST + Fashion-MNIST images in one batch). A model that implements
        :meth:`_forward_rows` then computes such a task's own layers on those rows only; its
        output keeps all ``N`` rows, with zeros at the others. Models without the hook, and the
        representation path, ignore it.
        """
        if representation and self.has_representation:
            rep, ctx = self._encode(x)
            outputs, aux = self._decode(rep, ctx)
            return ForwardParts(outputs, aux, rep)
        outputs, aux = self._plain(x, rows)
        return ForwardParts(outputs, aux, None)

    def _plain(self, x: Inputs, rows: TaskRows | None) -> Decoded:
        if rows and self.accepts_rows:
            return self._forward_rows(x, rows)
        return self._forward(x)

    @property
    def accepts_rows(self) -> bool:
        """True when the model computes a task's own layers on the rows it is given
        (:meth:`_forward_rows`; see :meth:`forward_parts`)."""
        return type(self)._forward_rows is not MultiTaskModel._forward_rows

    @property
    def has_representation(self) -> bool:
        """True when the outputs are computed from one shared representation (:meth:`_encode` is
        implemented); representation-level gradient methods need it."""
        return type(self)._encode is not MultiTaskModel._encode

    # ------------------------------------------------------------------ hooks
    def _forward(self, x: Inputs) -> Decoded:
        """``(outputs, aux)`` of the plain forward pass (default: :meth:`_encode` then :meth:`_decode`;
        a subclass that overrides ``forward(x) -> {task: output}`` itself has no auxiliary losses)."""
        if _overrides_forward(self):
            return _outputs_only(self, self.forward(x)), {}
        if not self.has_representation:
            raise NotImplementedError(f"{type(self).__name__} must implement _forward(x) or _encode/_decode.")
        return self._decode(*self._encode(x))

    def _forward_rows(self, x: Inputs, rows: TaskRows) -> Decoded:
        """``(outputs, aux)`` where task ``t`` in ``rows`` needs only its rows ``rows[t]`` (see
        :meth:`forward_parts`); the rows it is not given may hold anything finite. Optional: a
        model without it runs :meth:`_forward`."""
        raise NotImplementedError

    def _encode(self, x: Inputs) -> tuple[Tensor, Any]:
        """``(rep, ctx)``: the shared representation of ``x`` and what :meth:`_decode` needs besides it."""
        raise NotImplementedError(f"{type(self).__name__} has no single shared representation.")

    def _decode(self, rep: Tensor, ctx: Any) -> Decoded:
        """``(outputs, aux)`` from the representation ``rep`` (each task through its own graph)."""
        raise NotImplementedError(f"{type(self).__name__} has no single shared representation.")

    # ------------------------------------------------------------------ parameters
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


def forward_parts(
    model: nn.Module, x: Inputs, *, representation: bool = False, rows: TaskRows | None = None
) -> ForwardParts:
    """:meth:`MultiTaskModel.forward_parts` of any model the trainer accepts.

    A :class:`MultiTaskModel` answers itself. Behind a wrapper that only calls ``forward``
    (DistributedDataParallel) the parts come through ``forward(x, parts=True)``, so the wrapper's
    hooks see the pass; ``representation=True`` goes to the wrapped model directly (gradient-level
    methods reduce their gradients themselves). Any other module returning ``{output: tensor}``
    (or a MultiTaskModel that overrides ``forward`` itself) has no auxiliary losses and no
    representation.
    """
    if isinstance(model, MultiTaskModel):
        if rows:
            return model.forward_parts(x, representation=representation, rows=rows)
        return model.forward_parts(x, representation=representation)
    core = getattr(model, "module", None)
    if isinstance(core, MultiTaskModel):
        if representation:
            return core.forward_parts(x, representation=True)
        if not _overrides_forward(core):
            return model(x, parts=True, rows=rows) if rows else model(x, parts=True)
    return ForwardParts(_outputs_only(model, model(x)), {}, None)


def _overrides_forward(model: MultiTaskModel) -> bool:
    return type(model).forward is not MultiTaskModel.forward


def _outputs_only(model: nn.Module, out: object) -> dict[str, Tensor]:
    """A model's output dict, checked: a dict, and no auxiliary losses mixed into it."""
    if not isinstance(out, Mapping):
        raise ShapeError(f"The model must return a dict {{task: output}}; got {type(out).__name__}.")
    stale = [k for k in out if isinstance(k, str) and k.startswith("aux/")]
    if stale:
        raise ShapeError(
            f"{type(model).__name__} returns {stale[0]!r} among its outputs, but auxiliary losses are not read "
            "from the output dict: subclass mtlkit.models.MultiTaskModel and return them from _forward "
            "(or _decode) as the second element."
        )
    return dict(out)


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
