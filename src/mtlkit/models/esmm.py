"""ESMM: the Entire Space Multi-task Model (Ma et al., SIGIR 2018), as a wrapper around any base.

Paper: X. Ma, L. Zhao, G. Huang, Z. Wang, Z. Hu, X. Zhu, K. Gai, "Entire Space Multi-Task Model:
An Effective Approach for Estimating Post-Click Conversion Rate", SIGIR 2018
(https://arxiv.org/abs/1804.07931).

The base model (shared bottom, MMoE, PLE... anything with a logit output for CTR and one for CVR,
and any other outputs, passed through unchanged) supplies ``a_ctr(x)`` and ``a_cvr(x)``; ESMM outputs

- ``ctr``: the CTR logit ``a_ctr`` (``pCTR = sigmoid(a_ctr)``), trained on click labels over all
  impressions;
- ``ctcvr``: ``pCTCVR = sigmoid(a_ctr) * sigmoid(a_cvr)`` (a probability), trained on
  click-and-convert labels over all impressions;
- ``cvr``: ``pCVR = sigmoid(a_cvr)`` (a probability), never trained directly: the CVR tower learns
  only through ``pCTCVR``. It is available for prediction and evaluation.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from pydantic_core import core_schema
from torch import Tensor, nn

from mtlkit.data.batch import Inputs
from mtlkit.data.schema import InputSpec
from mtlkit.errors import ShapeError
from mtlkit.models._base import Decoded, MultiTaskModel
from mtlkit.models._inputs import InputLayerLike
from mtlkit.registries import MODELS
from mtlkit.tasks import Task, TaskKind, task_names

__all__ = ["ESMM", "ModelSpec", "esmm"]


def _check_model_spec(spec: Any) -> dict[str, Any]:
    """Validate a nested ``{name: model, **params}`` spec against the MODELS registry, defaults filled in."""
    from mtlkit.config.components import FAMILIES, validate_component  # local: config imports models

    resolved, problems = validate_component(_as_spec(spec), FAMILIES["model"], "base")
    if problems:
        raise ValueError("; ".join(p.rstrip(".") for p in problems))
    assert resolved is not None
    if resolved["name"] == "esmm":
        raise ValueError("the base of esmm must be a model with a CTR and a CVR output, not esmm itself")
    return resolved


class ModelSpec(dict):  # type: ignore[type-arg]
    """A nested model spec ``{"name": "mmoe", "num_experts": 4}``, validated by configs like a ``model:`` section."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        checked = core_schema.no_info_after_validator_function(_check_model_spec, handler(dict[str, Any]))
        return core_schema.no_info_before_validator_function(_as_spec, checked)


def _as_spec(spec: Any) -> Any:
    return {"name": spec} if isinstance(spec, str) else spec


class ESMM(MultiTaskModel):
    """Entire Space Multi-task Model (Ma et al., SIGIR 2018) over any two-output base model.

    ``pCTCVR = pCTR * pCVR`` with ``pCTR = sigmoid(a_ctr)`` and ``pCVR = sigmoid(a_cvr)``, where
    ``a_ctr``, ``a_cvr`` are the base model's two logits. Outputs: ``ctr`` (logit), ``cvr`` and
    ``ctcvr`` (probabilities); the auxiliary losses are the base's.

    Ownership (which parameters belong to which task) follows from the outputs each part of
    the base feeds and from which outputs are trained: the base's CTR-specific parameters (its
    CTR tower, gate...) feed ``ctr`` and ``ctcvr``; its CVR-specific parameters feed ``cvr`` and
    ``ctcvr``. A part is owned by a task when that task is the only trained output it feeds, and
    is shared otherwise. With ESMM's training (``ctr`` and ``ctcvr`` trained, ``cvr`` evaluated
    only) the CTR tower is shared by the two losses and the CVR tower belongs to ``ctcvr``;
    training ``ctr`` and ``cvr`` instead (the paper's BASE: CVR on clicked impressions,
    ``pCTCVR = pCTR * pCVR`` for evaluation) makes the CTR tower ``ctr``'s and the CVR tower ``cvr``'s.

    Other outputs of the base (extra tasks, e.g. a watch-time regression beside the funnel) are
    passed through unchanged; the base's parts specific to an extra task feed that output only, so
    they are owned by it when it is trained.

    The shared representation (for representation-level gradient methods) is the base's
    representation with the logits of the shared parts appended, so every shared parameter lies
    before it: ``[flatten(base representation), a_ctr]`` under ESMM's training.

    Args:
        base: a :class:`MultiTaskModel` whose ``task_names`` include ``ctr`` and ``cvr`` (one logit
            each, shape ``(N,)`` or ``(N, 1)``); its other outputs are passed through.
        ctr: name of the CTR output (and of the base's CTR output).
        cvr: name of the CVR output (and of the base's CVR output).
        ctcvr: name of the CTCVR output.
        trained: the outputs whose losses train the model (default: ``ctr``, ``ctcvr`` and the
            extra outputs).

    Example:
        >>> import torch
        >>> from mtlkit import Task
        >>> from mtlkit.models import ESMM, shared_bottom
        >>> base = shared_bottom(6, [Task(name="ctr", kind="binary"), Task(name="cvr", kind="binary")])
        >>> out = ESMM(base)(torch.randn(4, 6))
        >>> torch.equal(out["ctcvr"], torch.sigmoid(out["ctr"]) * out["cvr"])
        True
    """

    def __init__(
        self,
        base: MultiTaskModel,
        *,
        ctr: str = "ctr",
        cvr: str = "cvr",
        ctcvr: str = "ctcvr",
        trained: Collection[str] | None = None,
    ) -> None:
        super().__init__()
        names = (ctr, cvr, ctcvr)
        if len(set(names)) != 3:
            raise ValueError(f"ESMM output names must be distinct; got ctr={ctr!r}, cvr={cvr!r}, ctcvr={ctcvr!r}.")
        base_tasks = tuple(getattr(base, "task_names", ()))
        if not isinstance(base, nn.Module) or ctr not in base_tasks or cvr not in base_tasks or ctcvr in base_tasks:
            raise ValueError(
                f"ESMM needs a base model with the outputs {ctr!r} (CTR logit) and {cvr!r} (CVR logit), and "
                f"none named {ctcvr!r}; got a {type(base).__name__} with outputs {list(base_tasks)}."
            )
        extra = tuple(t for t in base_tasks if t not in names)  # other tasks: passed through unchanged
        trained = set((ctr, ctcvr, *extra) if trained is None else trained)
        unknown = sorted(trained - set(names) - set(extra))
        if unknown:
            raise ValueError(f"ESMM trained outputs must be among {[*names, *extra]}; got {unknown}.")
        self.base = base
        self.ctr, self.cvr, self.ctcvr = ctr, cvr, ctcvr
        self.extra = extra
        self.task_names = (*names, *extra)
        self.trained = tuple(n for n in self.task_names if n in trained)
        # base part -> outputs computed from it
        feeds = {ctr: (ctr, ctcvr), cvr: (cvr, ctcvr), **{e: (e,) for e in extra}}
        users = {part: [o for o in outs if o in trained] for part, outs in feeds.items()}
        self._owner = {part: u[0] for part, u in users.items() if len(u) == 1}
        # parts used by several trained outputs: their logits go into the shared representation
        self._rep_parts = tuple(part for part, u in users.items() if len(u) > 1)

    # ------------------------------------------------------------------ outputs
    def _outputs(self, preds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        a_ctr, a_cvr = self._logits(preds)
        p_cvr = torch.sigmoid(a_cvr)
        out = {self.ctr: a_ctr, self.cvr: p_cvr, self.ctcvr: torch.sigmoid(a_ctr) * p_cvr}
        return {**out, **{e: preds[e] for e in self.extra}}

    def _logits(self, preds: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        a_ctr, a_cvr = preds[self.ctr], preds[self.cvr]
        for name, a in ((self.ctr, a_ctr), (self.cvr, a_cvr)):
            if a.ndim == 0 or a.numel() != a.shape[0]:
                raise ShapeError(
                    f"ESMM expects one {name} logit per sample from its base, shape (N,) or (N, 1); "
                    f"got {tuple(a.shape)}. Build the base with binary tasks."
                )
        return a_ctr, a_cvr

    def _forward(self, x: Inputs) -> Decoded:
        parts = self.base.forward_parts(x)
        return self._outputs(parts.outputs), parts.aux

    @property
    def has_representation(self) -> bool:
        return self.base.has_representation

    def _encode(self, x: Inputs) -> tuple[Tensor, tuple[Any, tuple[int, ...]]]:
        # ctx: the base's own context and the shape of its representation (to cut it out again)
        rep, ctx = self.base._encode(x)
        shape = tuple(rep.shape[1:])
        if not self._rep_parts:
            return rep, (ctx, shape)
        preds, _ = self.base._decode(rep, ctx)  # the shared parts' logits join the representation
        n = rep.shape[0]
        rep = torch.cat([rep.reshape(n, -1), *(preds[p].reshape(n, 1) for p in self._rep_parts)], dim=1)
        return rep, (ctx, shape)

    def _decode(self, rep: Tensor, ctx: tuple[Any, tuple[int, ...]]) -> Decoded:
        base_ctx, shape = ctx
        from_rep: dict[str, Tensor] = {}
        if self._rep_parts:
            n, width = rep.shape[0], math.prod(shape)
            base_rep = rep[:, :width].reshape(n, *shape)
            from_rep = {p: rep[:, width + i : width + i + 1] for i, p in enumerate(self._rep_parts)}
        else:
            base_rep = rep
        preds, aux = self.base._decode(base_rep, base_ctx)
        preds = {**preds, **from_rep}  # shared parts come from the representation, not recomputed
        return self._outputs(preds), aux

    def gates(self, x: Inputs) -> dict[str, Tensor]:
        return self.base.gates(x)

    # ------------------------------------------------------------------ ownership
    def task_parameters(self, task: str) -> list[nn.Parameter]:
        self._check_task(task)
        out: list[nn.Parameter] = []
        for part, owner in self._owner.items():
            if owner == task:
                out += list(self.base.task_parameters(part))
        return out

    def extra_repr(self) -> str:
        extra = f", extra={list(self.extra)}" if self.extra else ""
        return f"ctr={self.ctr!r}, cvr={self.cvr!r}, ctcvr={self.ctcvr!r}{extra}, trained={list(self.trained)}"


_DEFAULT_BASE = ModelSpec(name="shared_bottom")


FunnelSpec = dict[str, str]
"""``{ctr: <click task>, cvr: <purchase task>, ctcvr: <derived task>}`` (see :mod:`mtlkit.data.funnel`)."""


def _check_tasks(tasks: Sequence[Task], ctr: str, cvr: str, ctcvr: str) -> list[Task]:
    """The funnel tasks checked; returns the other tasks (passed through the base)."""
    task_names(tasks)
    roles = {ctr: "the CTR logit", cvr: "pCVR, a probability", ctcvr: "pCTCVR, a probability"}
    names = [t.name for t in tasks]
    if ctr not in names:
        raise ValueError(
            f"esmm predicts {ctr!r} (CTR logit), {cvr!r} (pCVR) and {ctcvr!r} (pCTCVR); none of the tasks "
            f"{names} is its CTR task {ctr!r}. For tasks that are raw label columns (click; purchase labelled "
            "on clicks), declare the funnel: model.funnel: {ctr: <click task>, cvr: <purchase task>} derives "
            "the ESMM tasks; or set esmm's ctr=/cvr=/ctcvr= to your task names (Python: Task(name=..., "
            "kind='binary', logits=False) for cvr and ctcvr)."
        )
    extra = []
    for t in tasks:
        if t.name not in roles:
            extra.append(t)
            continue
        if t.output_key != t.name:
            raise ValueError(f"esmm: task {t.name!r} must read the output of the same name; got output={t.output!r}.")
        want_logits = t.name == ctr
        if t.kind is not TaskKind.BINARY or t.logits is not want_logits:
            raise ValueError(
                f"esmm outputs {roles[t.name]} for task {t.name!r}: declare it as "
                f"Task(name={t.name!r}, kind='binary'{'' if want_logits else ', logits=False'})."
            )
    return extra


@MODELS.register("esmm")
def esmm(
    input_dim: int | None,
    tasks: Sequence[Task],
    *,
    base: ModelSpec = _DEFAULT_BASE,
    ctr: str = "ctr",
    cvr: str = "cvr",
    ctcvr: str = "ctcvr",
    funnel: FunnelSpec | None = None,
    input_layer: InputLayerLike | None = None,
    input_spec: InputSpec | None = None,
) -> ESMM:
    """ESMM (Ma et al. 2018): pCTCVR = pCTR x pCVR trained over all impressions, on any base model.

    Args:
        input_dim: width of flat features (or None with an input layer).
        tasks: the tasks, named ``ctr`` (binary, logits), ``ctcvr`` and ``cvr`` (binary,
            ``logits=False``); which of them are trained (``Task.train``) decides the ownership
            (see :class:`ESMM`). Tasks may be left out (e.g. no ``cvr`` task), but not ``ctr``.
            Other tasks (e.g. a watch-time regression) become extra outputs of the base, passed
            through unchanged.
        base: the base model, ``{"name": ..., **params}`` as in a config's ``model`` section;
            it is built for two binary tasks named ``ctr`` and ``cvr`` plus the other tasks.
        ctr: name of the CTR task.
        cvr: name of the CVR task.
        ctcvr: name of the CTCVR task.
        funnel: ``{ctr: <click task>, cvr: <purchase task>, ctcvr: <name>}``: in a config, the data's
            raw label columns become the ESMM tasks (:func:`mtlkit.data.funnel.funnel_splits` derives
            them and their labels before the model is built); here it sets ``ctr``/``cvr``/``ctcvr``.
        input_layer: backbone passed on to the base (e.g. the shared embedding front end).
        input_spec: the data's input spec, passed on to bases that take one.
    """
    if funnel is not None:
        ctr, cvr, ctcvr = funnel["ctr"], funnel["cvr"], funnel.get("ctcvr", "ctcvr")
    extra = _check_tasks(tasks, ctr, cvr, ctcvr)
    spec = _check_model_spec(base)
    builder = MODELS.get(spec["name"])
    accepts = set(inspect.signature(builder).parameters)
    inner = (Task(name=ctr, kind="binary"), Task(name=cvr, kind="binary"), *extra)
    offered: dict[str, Any] = {
        "tasks": inner,
        "input_dim": input_dim,
        "input_layer": input_layer,
        "input_spec": input_spec,
    }
    if input_layer is not None and "input_layer" not in accepts:
        raise ValueError(f"esmm base {spec['name']!r} takes no input_layer (backbone); remove it.")
    injected = {k: v for k, v in offered.items() if k in accepts and (v is not None or k == "input_dim")}
    params = {k: v for k, v in spec.items() if k != "name"}
    model = MODELS.build(spec["name"], **injected, **params)
    if not isinstance(model, MultiTaskModel):
        raise ValueError(f"esmm base {spec['name']!r} must build a MultiTaskModel; got {type(model).__name__}.")
    trained = [t.name for t in tasks if t.train]
    return ESMM(model, ctr=ctr, cvr=cvr, ctcvr=ctcvr, trained=trained)
