"""Named per-task losses (``Task(loss="huber")`` or ``loss: {name: huber, delta: 1.0}`` in YAML).

Every loss is per element (``reduction='none'``); :meth:`mtlkit.Task.compute_loss` masks the
missing labels and takes the (sample-weighted) mean.

=============  ===========================  =========================================================
name           kinds                        per-element value (``x`` the model output, ``y`` the label)
=============  ===========================  =========================================================
bce            binary, multilabel           ``-(pw·y·log σ(x) + (1-y)·log(1-σ(x)))``; ``pw`` = ``pos_weight``
focal          binary, multilabel           ``-α_t (1-p_t)^γ log p_t`` (Lin et al. 2017), ``p_t`` the
                                            probability of the true label, ``α_t = α`` for ``y=1``,
                                            ``1-α`` for ``y=0`` (no ``α`` weighting when ``alpha`` is unset)
cross_entropy  multiclass                   torch's cross-entropy with ``label_smoothing`` and
                                            ``class_weights`` (the mean is over the class weights of the
                                            labelled rows, as ``torch.nn.CrossEntropyLoss(weight=...)``)
mse            regression                   ``(x - y)²``
huber          regression                   ``½(x-y)²`` if ``|x-y| ≤ δ`` else ``δ(|x-y| - ½δ)``
poisson        regression (counts, ≥ 0)     ``exp(x) - y·x``: log link, the model outputs ``log μ``
tweedie        regression (≥ 0)             ``-y·exp(x(1-p))/(1-p) + exp(x(2-p))/(2-p)``, ``1 < p < 2``:
                                            log link, the model outputs ``log μ``
=============  ===========================  =========================================================

``poisson`` and ``tweedie`` use a log link: the head outputs the log of the mean, and predictions
(``predict``, ``export``, the metrics) are ``exp`` of it, on the label's scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSS_NAMES", "NamedLoss", "named_loss"]

_EPS = 1e-7

# name -> (kinds it applies to, {parameter: default})
_SPECS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "bce": (("binary", "multilabel"), {}),
    "focal": (("binary", "multilabel"), {"gamma": 2.0, "alpha": None}),
    "cross_entropy": (("multiclass",), {"label_smoothing": 0.0}),
    "mse": (("regression",), {}),
    "huber": (("regression",), {"delta": 1.0}),
    "poisson": (("regression",), {}),
    "tweedie": (("regression",), {"power": 1.5}),
}
LOSS_NAMES: tuple[str, ...] = tuple(_SPECS)
_ALIASES = {
    "ce": "cross_entropy",
    "crossentropy": "cross_entropy",
    "binary_cross_entropy": "bce",
    "l2": "mse",
}


@dataclass(frozen=True, slots=True)
class NamedLoss:
    """A built-in loss chosen by name, with its parameters (see the module's table).

    Call it as ``loss(pred, target, logits=True, pos_weight=None, class_weights=None)``; the task
    passes its own settings. ``link`` is ``"log"`` for poisson/tweedie (predictions are
    ``exp(output)``), else ``"identity"``.
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:  # params is a dict: hash its items, so a Task holding this stays hashable
        return hash((self.name, tuple(sorted(self.params.items()))))

    @property
    def link(self) -> str:
        return "log" if self.name in ("poisson", "tweedie") else "identity"

    @property
    def kinds(self) -> tuple[str, ...]:
        return _SPECS[self.name][0]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.params)}

    def __call__(
        self,
        pred: Tensor,
        target: Tensor,
        *,
        logits: bool = True,
        pos_weight: float | None = None,
        class_weights: Tensor | None = None,
    ) -> Tensor:
        p = self.params
        if self.name == "bce":
            if logits:
                pw = (
                    None
                    if pos_weight is None
                    else torch.tensor(pos_weight, dtype=pred.dtype, device=pred.device)
                )
                return F.binary_cross_entropy_with_logits(pred, target, pos_weight=pw, reduction="none")
            q = pred.clamp(_EPS, 1 - _EPS)
            pw = 1.0 if pos_weight is None else pos_weight
            return -(pw * target * torch.log(q) + (1 - target) * torch.log1p(-q))
        if self.name == "focal":
            if logits:
                log_p, log_not_p = F.logsigmoid(pred), F.logsigmoid(-pred)
            else:
                q = pred.clamp(_EPS, 1 - _EPS)
                log_p, log_not_p = torch.log(q), torch.log1p(-q)
            ce = -(target * log_p + (1 - target) * log_not_p)
            p_t = target * log_p.exp() + (1 - target) * log_not_p.exp()
            out = ce * (1 - p_t) ** float(p["gamma"])
            if p.get("alpha") is not None:
                a = float(p["alpha"])
                out = (a * target + (1 - a) * (1 - target)) * out
            return out
        if self.name == "cross_entropy":
            return F.cross_entropy(
                pred,
                target,
                weight=class_weights,
                reduction="none",
                label_smoothing=float(p.get("label_smoothing", 0.0)),
            )
        if self.name == "mse":
            return F.mse_loss(pred, target, reduction="none")
        if self.name == "huber":
            return F.huber_loss(pred, target, reduction="none", delta=float(p["delta"]))
        if self.name == "poisson":
            return torch.exp(pred) - target * pred
        if self.name == "tweedie":
            rho = float(p["power"])
            return -target * torch.exp(pred * (1 - rho)) / (1 - rho) + torch.exp(pred * (2 - rho)) / (2 - rho)
        raise AssertionError(self.name)  # pragma: no cover - names are checked by named_loss


def named_loss(spec: str | Mapping[str, Any], *, task: str, kind: str) -> NamedLoss:
    """A :class:`NamedLoss` from ``"huber"`` or ``{"name": "huber", "delta": 1.0}``, checked.

    Raises:
        ValueError: an unknown name or parameter, a parameter out of range, or a loss that does not
            apply to the task's ``kind``; the message names the task and the choices.
    """
    from mtlkit.errors import did_you_mean

    where = f"Task {task!r}: loss"
    if isinstance(spec, str):
        name, given = spec, {}
    elif isinstance(spec, Mapping):
        if "name" not in spec:
            raise ValueError(
                f"{where} needs a name: {{name: <one of {', '.join(LOSS_NAMES)}>, ...}}; got {dict(spec)!r}."
            )
        name, given = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    else:
        raise ValueError(f"{where} must be a name or {{name: ..., <parameters>}}; got {spec!r}.")
    name = _ALIASES.get(str(name).lower(), str(name).lower())
    if name not in _SPECS:
        raise ValueError(
            f"{where}: unknown loss {spec if isinstance(spec, str) else spec['name']!r}."
            f"{did_you_mean(str(name), LOSS_NAMES)} Choices: {', '.join(LOSS_NAMES)}."
        )
    kinds, defaults = _SPECS[name]
    if kind not in kinds:
        fitting = [n for n, (ks, _) in _SPECS.items() if kind in ks]
        raise ValueError(
            f"{where}: {name!r} applies to {'/'.join(kinds)} tasks, not to a {kind} task; "
            f"choose one of {', '.join(fitting)}."
        )
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        allowed = ", ".join(defaults) or "none"
        raise ValueError(f"{where} {name!r} takes no parameter {unknown[0]!r}; its parameters: {allowed}.")
    params = {**defaults, **given}
    for k, v in params.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ValueError(f"{where} {name!r}: {k} must be a finite number; got {v!r}.")
        params[k] = float(v)
    _check_range(where, name, params)
    return NamedLoss(name, params)


def _check_range(where: str, name: str, p: Mapping[str, Any]) -> None:
    checks = {
        ("focal", "gamma"): (lambda v: v >= 0, ">= 0"),
        ("focal", "alpha"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("cross_entropy", "label_smoothing"): (lambda v: 0 <= v < 1, "in [0, 1)"),
        ("huber", "delta"): (lambda v: v > 0, "> 0"),
        ("tweedie", "power"): (lambda v: 1 < v < 2, "in (1, 2) (1 is poisson, 2 is gamma)"),
    }
    for (n, k), (ok, text) in checks.items():
        if n == name and p.get(k) is not None and not ok(p[k]):
            raise ValueError(f"{where} {name!r}: {k} must be {text}; got {p[k]!r}.")
